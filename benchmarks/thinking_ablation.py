"""Does the REINFORCE signal teach useful thoughts? A small controlled ablation on CPU.

Task: sums of `--operands` (3) digits below `--modulus` (5), modulo it, over a 16-token vocabulary (digits, `=`,
`?`, `;`, `.` and the two meta tokens). The corpus mixes two ways of writing a problem:

    worked   3 4 2 = 2 4 ;     the running partial sums after `=` (the last one is the answer)
    direct   3 4 2 ? 4 ;       the answer straight after `?`

Each step of the worked form is one addition, which the 2-layer base model learns first (it then predicts the last
sum of a worked problem, given the previous partial sum in context, almost perfectly); the direct answer needs both
additions in one forward pass, which it learns much later, so when pretraining stops it is still near chance on it. Evaluation uses direct problems only: the
scored tokens are the answers after `?` (each followed by `;` and more text, so the whole look-ahead window of a
thought at `?` exists). The gap between the two accuracies is what a thought could win.

1. A base model (Mistral-shaped, thinking off) is pretrained from scratch until it has learned one addition (its
   accuracy on the last sum of worked validation problems reaches `--base-stop-accuracy`; trained further it would
   also learn the direct answer); then its two meta-token embeddings are set to the embedding of `=` (the marker
   before written-out work, as the paper starts them from "---").
2. Three arms continue from it for the same steps, the same batches and the same seeds:
   `plain` (thinking off), `quiet-star` (the full loss: NLL + REINFORCE) and `no-policy` (the same thinking model
   with policy_loss_weight = 0: thoughts are sampled but never reinforced; the LM and mixing head still learn).
3. Every `--eval-every` steps each run is scored on held-out sequences generated from a separate seed range:
   answer NLL and accuracy with greedy thoughts and without thinking, the reward of the greedy thought on the answer
   (NLL without minus NLL with it), the mixing weight, and the NLL by difficulty tercile (terciles of the base
   model's answer NLL). The training loss parts, mean reward and mixing weight are averaged between evaluations.
4. Results: `thinking_ablation.json` (every figure), `thinking_ablation.md` (mean +- std over seeds),
   `thinking_ablation.png` (answer NLL and accuracy against step) and a verdict computed from the numbers.

Data seeds: training batches come from the seed range [0, 1e6), validation from [1e6, 2e6), held-out test from
[2e6, 3e6). Tune on `--eval-split validation`; the committed results use the default `test`.

    python benchmarks/thinking_ablation.py                                # the full study (about 30 min, 2 cores)
    python benchmarks/thinking_ablation.py --quick                        # a one-minute smoke run
    python benchmarks/thinking_ablation.py --out-dir benchmarks/results   # the committed run
"""

import argparse
import datetime
import json
import logging
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

import quietstar
from quietstar import QuietStarConfig, QuietStarForCausalLM
from quietstar.training.metrics import device_description

logger = logging.getLogger("thinking_ablation")
REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO_ROOT / "benchmark_runs" / "thinking_ablation"
STEM = "thinking_ablation"

VOCAB = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "=", "?", ";", ".", "<|startofthought|>", "<|endofthought|>")
TOKEN_ID = {token: index for index, token in enumerate(VOCAB)}
WORKED, DIRECT, SEPARATOR, FILLER = TOKEN_ID["="], TOKEN_ID["?"], TOKEN_ID[";"], TOKEN_ID["."]
START_OF_THOUGHT, END_OF_THOUGHT = TOKEN_ID["<|startofthought|>"], TOKEN_ID["<|endofthought|>"]
TEXT_TOKENS = START_OF_THOUGHT  # the meta tokens come last; scores renormalise over the text tokens, as thinking does
SPLIT_SEED_OFFSET = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
ARMS = ("plain", "quiet-star", "no-policy")


@dataclass
class StudySettings:
    """Every knob of the study. Defaults are the full study; `QUICK` overrides a few for the smoke run."""

    operands: int = 3  # digits summed per problem
    modulus: int = 5  # operands are digits below it and sums are taken modulo it (at most 10)
    worked_fraction: float = 0.5  # share of training problems written with their partial sums
    seq_len: int = 64  # tokens per sequence (problems packed, the rest filled with ".")
    batch_size: int = 32  # sequences per optimizer step
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    n_thought_tokens: int = 4  # start + operands - 1 sampled tokens + end: room for every partial sum
    n_ahead_talk: int = 2  # the answer and the ";" after it
    n_thoughts: int = 2
    policy_loss_weight: float = 1.0  # quiet-star arm; the no-policy arm uses 0
    reinforce_temperature: float = 3.0
    meta_embedding_scale: float = 1.0  # the paper's 100 compensates its lr of 1e-6; ours is 1000x larger
    base_steps: int = 3000  # most pretraining steps of the base model (thinking off); sets its lr schedule
    base_check_every: int = 200  # steps between the base model's stopping checks
    base_stop_accuracy: float = 0.95  # stop pretraining once the last worked sum is this accurate (validation)
    base_lr: float = 3e-3
    arm_steps: int = 400  # steps of every arm
    arm_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_every: int = 50
    eval_sequences: int = 64
    eval_split: str = "test"
    shown_thoughts: int = 6  # decoded thoughts of the quiet-star arm (first seed) at the start and the end
    threads: int = 2


QUICK = dict(
    seq_len=32, batch_size=8, base_steps=60, base_check_every=20, arm_steps=4, eval_every=2, eval_sequences=8, seeds=[0, 1], warmup_steps=2
)
HELP = {
    "operands": "digits summed per problem",
    "modulus": "operands are digits below it, sums are taken modulo it (2 to 10)",
    "worked_fraction": "share of training problems written with their partial sums",
    "seq_len": "tokens per sequence",
    "batch_size": "sequences per optimizer step",
    "n_thought_tokens": "tokens per thought, start and end included",
    "n_ahead_talk": "look-ahead tokens scored after each thought",
    "n_thoughts": "thoughts sampled per position in training",
    "policy_loss_weight": "REINFORCE weight of the quiet-star arm",
    "reinforce_temperature": "temperature of the thought log-probabilities in the REINFORCE term",
    "meta_embedding_scale": "learning-rate multiplier of the meta-token embeddings",
    "base_steps": "most pretraining steps of the base model (also the length of its lr schedule)",
    "base_check_every": "steps between checks of the base model's last-worked-sum accuracy (validation split)",
    "base_stop_accuracy": "pretraining stops once that accuracy reaches this",
    "base_lr": "peak learning rate of pretraining",
    "arm_steps": "training steps of every arm",
    "arm_lr": "peak learning rate of the arms",
    "eval_every": "steps between evaluations",
    "eval_sequences": "held-out sequences per evaluation",
    "eval_split": "data the evaluations use: validation (for tuning) or test (the reported numbers)",
    "shown_thoughts": "decoded quiet-star thoughts shown at the start and the end",
    "threads": "torch CPU threads",
}


# ------------------------------------------------------------------------------------------------------------ data


def make_problem(rng: random.Random, operands: int, modulus: int, worked: bool) -> tuple[list[int], int | None]:
    """Token ids of one problem and, for a direct problem, the index of its answer token within them."""
    digits = [rng.randrange(modulus) for _ in range(operands)]
    partial_sums = [sum(digits[: k + 1]) % modulus for k in range(operands)]
    if worked:
        return [*digits, WORKED, *partial_sums[1:], SEPARATOR], None
    return [*digits, DIRECT, partial_sums[-1], SEPARATOR], operands + 1


def make_sequence(rng: random.Random, settings: StudySettings, worked_fraction: float) -> tuple[list[int], list[int]]:
    """One sequence of `seq_len` tokens (whole problems, then "." filler) and the indices of its direct answers."""
    tokens, answers = [], []
    room = settings.seq_len - max(settings.n_ahead_talk - 2, 0)  # every answer keeps its whole look-ahead window
    while True:
        problem, answer = make_problem(rng, settings.operands, settings.modulus, rng.random() < worked_fraction)
        if len(tokens) + len(problem) > room:
            break
        if answer is not None:
            answers.append(len(tokens) + answer)
        tokens += problem
    return tokens + [FILLER] * (settings.seq_len - len(tokens)), answers


def make_batch(rng: random.Random, settings: StudySettings, n: int, worked_fraction: float):
    """(n, seq_len) token ids and a (n, seq_len) bool mask of the direct answer tokens."""
    ids = torch.empty(n, settings.seq_len, dtype=torch.long)
    answer_mask = torch.zeros(n, settings.seq_len, dtype=torch.bool)
    for row in range(n):
        tokens, answers = make_sequence(rng, settings, worked_fraction)
        ids[row] = torch.tensor(tokens)
        answer_mask[row, answers] = True
    return ids, answer_mask


def worked_final_sums(rng: random.Random, settings: StudySettings, n: int):
    """Worked-only sequences (n, L) and a (n, L) mask of the positions that predict a problem's last partial sum (the
    answer, with the previous partial sum in context)."""
    ids, _ = make_batch(rng, settings, n, worked_fraction=1.0)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, :-2] = ids[:, 2:] == SEPARATOR
    return ids, mask


# ----------------------------------------------------------------------------------------------------------- model


def build_model(settings: StudySettings, policy_loss_weight: float) -> QuietStarForCausalLM:
    config = QuietStarConfig(
        vocab_size=len(VOCAB),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_key_value_heads,
        max_position_embeddings=settings.seq_len + settings.n_thought_tokens + settings.n_ahead_talk,
        start_thought_token_id=START_OF_THOUGHT,
        end_thought_token_id=END_OF_THOUGHT,
        n_thought_tokens=settings.n_thought_tokens,
        n_ahead_talk=settings.n_ahead_talk,
        n_thoughts=settings.n_thoughts,
        policy_loss_weight=policy_loss_weight,
        reinforce_temperature=settings.reinforce_temperature,
        meta_embedding_scale=settings.meta_embedding_scale,
        attention_impl="torch",
        pad_token_id=FILLER,
        bos_token_id=None,
        eos_token_id=None,
    )
    return QuietStarForCausalLM(config)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def passes_per_step(settings: StudySettings, thinking: bool) -> int:
    """Forward passes over the batch's text tokens per step: 1 plain, N * (T + A) with thinking."""
    return settings.n_thoughts * (settings.n_thought_tokens + settings.n_ahead_talk) if thinking else 1


# ------------------------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalSet:
    """Held-out direct problems: `ids` (E, L), `answers` (E, L) mask of the answer tokens, `tercile` (n_answers,)
    difficulty class 0/1/2 of each answer (by the base model's NLL), `worked_ids` / `worked_mask` the worked sums."""

    ids: torch.Tensor
    answers: torch.Tensor
    worked_ids: torch.Tensor
    worked_mask: torch.Tensor
    tercile: torch.Tensor | None = None


@torch.no_grad()
def score(model: QuietStarForCausalLM, eval_set: EvalSet, settings: StudySettings) -> tuple[dict, torch.Tensor]:
    """Answer-token figures of one model on the eval set, with greedy thoughts and without thinking, and the
    (n_answers,) NLLs without thinking.

    Both predictions are scored over the 14 text tokens (a thinking model never predicts the meta tokens, so the
    plain logits drop them too). The answer x[i + 1] is predicted at position i (the "?"). `answer_reward` is the first term of the training
    reward there: the answer's NLL without the thought minus its NLL with it.
    """
    model.eval()
    thinking = model(eval_set.ids)
    plain_logits = model(eval_set.ids, thinking=False).logits[..., :TEXT_TOKENS]
    predicts_answer = torch.zeros_like(eval_set.answers)
    predicts_answer[:, :-1] = eval_set.answers[:, 1:]
    targets = eval_set.ids[eval_set.answers]
    mixed_logits, plain_logits = thinking.logits[..., :TEXT_TOKENS][predicts_answer], plain_logits[predicts_answer]
    mixed_nll = F.cross_entropy(mixed_logits, targets, reduction="none")
    plain_nll = F.cross_entropy(plain_logits, targets, reduction="none")
    worked_logits = model(eval_set.worked_ids, thinking=False).logits
    worked_targets = eval_set.worked_ids[:, 1:][eval_set.worked_mask[:, :-1]]
    worked_correct = worked_logits[eval_set.worked_mask].argmax(-1) == worked_targets
    figures = {
        "answer_nll_thinking": mixed_nll.mean().item(),
        "answer_nll_plain": plain_nll.mean().item(),
        "answer_acc_thinking": (mixed_logits.argmax(-1) == targets).float().mean().item(),
        "answer_acc_plain": (plain_logits.argmax(-1) == targets).float().mean().item(),
        "answer_reward": (plain_nll - mixed_nll).mean().item(),
        "answer_mixing_weight": thinking.mixing_weights[predicts_answer].mean().item(),
        "worked_last_sum_acc_plain": worked_correct.float().mean().item(),
    }
    if eval_set.tercile is not None:
        for name, nll in (("thinking", mixed_nll), ("plain", plain_nll)):
            figures[f"answer_nll_{name}_by_tercile"] = [nll[eval_set.tercile == k].mean().item() for k in range(3)]
    model.train()
    return figures, plain_nll


@torch.no_grad()
def decoded_thoughts(model: QuietStarForCausalLM, eval_set: EvalSet, settings: StudySettings) -> list[dict]:
    """The greedy thought at the first `shown_thoughts` answer positions: the problem, the thought, the answer."""
    model.eval()
    ids = eval_set.ids
    batch, length = ids.shape
    thinking = model(ids)
    thoughts = thinking.thought_ids.reshape(batch, -1, length, settings.n_thought_tokens - 2)[:, 0]
    mixed = thinking.logits[..., :TEXT_TOKENS].log_softmax(-1)
    plain = model(ids, thinking=False).logits[..., :TEXT_TOKENS].log_softmax(-1)
    shown = []
    for row, col in eval_set.answers.nonzero().tolist()[: settings.shown_thoughts]:
        question = col - 1
        answer = ids[row, col].item()
        shown.append({
            "problem": " ".join(VOCAB[t] for t in ids[row, question - settings.operands : question + 1].tolist()),
            "thought": " ".join(VOCAB[t] for t in thoughts[row, question].tolist()),
            "answer": VOCAB[answer],
            "p_answer_thinking": mixed[row, question, answer].exp().item(),
            "p_answer_plain": plain[row, question, answer].exp().item(),
            "mixing_weight": thinking.mixing_weights[row, question].item(),
        })
    model.train()
    return shown


# -------------------------------------------------------------------------------------------------------- training


def pretrain_base(settings: StudySettings, eval_set: EvalSet) -> tuple[dict, dict]:
    """Train the base model with thinking off until it has learned one addition: every `base_check_every` steps its
    accuracy on the last sum of worked validation problems (previous partial sum in context) is measured, and
    training stops at the first check reaching `base_stop_accuracy` (or after `base_steps`). Continuing would let it
    learn the direct answer too, leaving nothing for a thought to win. Returns the weights (meta embeddings set from
    "=") and a record of the run: eval curve, stopping step, validation accuracies, seconds per step."""
    torch.manual_seed(12345)
    model = build_model(settings, policy_loss_weight=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.base_lr, weight_decay=settings.weight_decay)
    data_rng = random.Random(SPLIT_SEED_OFFSET["train"])
    check_ids, check_mask = worked_final_sums(
        random.Random(SPLIT_SEED_OFFSET["validation"] + 999), settings, settings.eval_sequences
    )
    check_targets = check_ids[:, 1:][check_mask[:, :-1]]
    curve, checks = [], []
    start = time.perf_counter()
    step = 0
    while step < settings.base_steps:
        if step % settings.base_check_every == 0:
            curve.append({"step": step, **score(model, eval_set, settings)[0]})
            with torch.no_grad():
                predicted = model(check_ids, thinking=False).logits[check_mask].argmax(-1)
            checks.append({"step": step, "validation_worked_last_sum_acc": (predicted == check_targets).float().mean().item()})
            logger.info("base step %d: %s; validation last worked sum acc %.3f", step, _brief(curve[-1]),
                        checks[-1]["validation_worked_last_sum_acc"])
            if checks[-1]["validation_worked_last_sum_acc"] >= settings.base_stop_accuracy:
                break
        ids, _ = make_batch(data_rng, settings, settings.batch_size, settings.worked_fraction)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings.base_steps, settings.base_lr, settings.warmup_steps)
        loss = model(ids, labels=ids, thinking=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        step += 1
    seconds_per_step = (time.perf_counter() - start) / max(step, 1)
    with torch.no_grad():
        marker = model.model.embed_tokens.weight[WORKED].clone()
        model.thought_embeddings.weight.copy_(marker.expand(2, -1) / settings.meta_embedding_scale)
        model.model.embed_tokens.weight[[START_OF_THOUGHT, END_OF_THOUGHT]] = marker
    final, _ = score(model, eval_set, settings)
    curve.append({"step": step, **final})
    logger.info("base model after %d steps: %s", step, _brief(final))
    record = {
        "curve": curve,
        "final": final,
        "steps": step,
        "stopped_early": step < settings.base_steps,
        "validation_checks": checks,
        "seconds_per_step": seconds_per_step,
        "compute": {"passes_per_step": 1, "token_passes_total": settings.batch_size * settings.seq_len * step},
    }
    return {k: v.clone() for k, v in model.state_dict().items()}, record


def train_arm(arm: str, seed: int, base_state: dict, settings: StudySettings, eval_set: EvalSet) -> dict:
    """Continue the base model as one arm for `arm_steps`; the batches and the sampling seed depend on `seed` only."""
    thinking = arm != "plain"
    model = build_model(settings, settings.policy_loss_weight if arm == "quiet-star" else 0.0)
    model.load_state_dict(base_state)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.arm_lr, weight_decay=settings.weight_decay)
    data_rng = random.Random(SPLIT_SEED_OFFSET["train"] + 1 + seed)
    torch.manual_seed(seed)
    curve, thoughts = [], {}
    window = []
    train_seconds = 0.0
    for step in range(settings.arm_steps + 1):
        if step % settings.eval_every == 0 or step == settings.arm_steps:
            record = {"step": step, **score(model, eval_set, settings)[0]}
            if window:
                record.update({f"train_{k}": statistics.fmean(r[k] for r in window) for k in window[0]})
                window = []
            curve.append(record)
            logger.info("%s seed %d step %d: %s", arm, seed, step, _brief(record))
        if arm == "quiet-star" and seed == settings.seeds[0] and step in (0, settings.arm_steps):
            thoughts["start" if step == 0 else "end"] = decoded_thoughts(model, eval_set, settings)
        if step == settings.arm_steps:
            break
        ids, _ = make_batch(data_rng, settings, settings.batch_size, settings.worked_fraction)
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings.arm_steps, settings.arm_lr, settings.warmup_steps)
        output = model(ids, labels=ids, thinking=thinking)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        train_seconds += time.perf_counter() - start
        parts = {"loss": output.loss.item()}
        if thinking:
            parts.update({
                name: getattr(output, name).item()
                for name in ("base_loss", "thought_loss", "policy_loss", "mean_reward", "mean_mixing_weight")
            })
        window.append(parts)
    return {
        "arm": arm,
        "seed": seed,
        "curve": curve,
        "thoughts": thoughts,
        "seconds_per_step": train_seconds / max(settings.arm_steps, 1),
    }


def _brief(record: dict) -> str:
    return (
        f"answer nll {record['answer_nll_thinking']:.3f} (plain {record['answer_nll_plain']:.3f}), "
        f"acc {record['answer_acc_thinking']:.3f} (plain {record['answer_acc_plain']:.3f}), "
        f"w {record['answer_mixing_weight']:.3f}, reward {record['answer_reward']:.3f}, "
        f"last worked sum acc {record['worked_last_sum_acc_plain']:.3f}"
    )


# --------------------------------------------------------------------------------------------------------- summary


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict], settings: StudySettings) -> dict:
    """Mean and std over seeds of every eval figure, per arm and step."""
    summary = {}
    for arm in ARMS:
        arm_runs = [r for r in runs if r["arm"] == arm]
        steps = [record["step"] for record in arm_runs[0]["curve"]]
        per_step = []
        for index, step in enumerate(steps):
            records = [r["curve"][index] for r in arm_runs]
            entry = {"step": step}
            for key, value in records[0].items():
                if key == "step":
                    continue
                if isinstance(value, list):
                    columns = list(zip(*(r[key] for r in records)))
                    entry[key] = [dict(zip(("mean", "std"), mean_std(list(c)))) for c in columns]
                else:
                    entry[key] = dict(zip(("mean", "std"), mean_std([r[key] for r in records])))
            per_step.append(entry)
        thinking = arm != "plain"
        passes = passes_per_step(settings, thinking)
        summary[arm] = {
            "curve": per_step,
            "seconds_per_step": mean_std([r["seconds_per_step"] for r in arm_runs]),
            "compute": {
                "passes_per_step": passes,
                "text_tokens_per_step": settings.batch_size * settings.seq_len,
                "token_passes_per_step": passes * settings.batch_size * settings.seq_len,
                "token_passes_total": passes * settings.batch_size * settings.seq_len * settings.arm_steps,
            },
        }
    return summary


def verdict(summary: dict) -> list[str]:
    """Sentences computed from the final evaluation: an arm beats another when its mean answer NLL is lower by more
    than the sum of the two seed standard deviations (the +-1 std intervals do not overlap)."""

    def final(arm: str, key: str) -> dict:
        return summary[arm]["curve"][-1][key]

    def compare(a: str, b: str, key: str, lower_is_better: bool, label: str) -> str:
        fa, fb = final(a, key), final(b, key)
        gain = (fb["mean"] - fa["mean"]) if lower_is_better else (fa["mean"] - fb["mean"])
        spread = fa["std"] + fb["std"]
        if gain > spread:
            outcome = "beats"
        elif -gain > spread:
            outcome = "is worse than"
        else:
            outcome = "is within the seed spread of"
        return (
            f"{a} {outcome} {b} on {label}: {fa['mean']:.4f} vs {fb['mean']:.4f} "
            f"(difference {gain:+.4f} in {a}'s favour, seed spread {spread:.4f})"
        )

    lines = [
        compare("quiet-star", "no-policy", "answer_nll_thinking", True, "answer NLL with thoughts"),
        compare("quiet-star", "no-policy", "answer_acc_thinking", False, "answer accuracy with thoughts"),
        compare("quiet-star", "plain", "answer_nll_thinking", True, "answer NLL"),
        compare("no-policy", "plain", "answer_nll_thinking", True, "answer NLL"),
    ]
    qs, npol = final("quiet-star", "answer_nll_thinking_by_tercile"), final("no-policy", "answer_nll_thinking_by_tercile")
    gains = [n["mean"] - q["mean"] for q, n in zip(qs, npol)]
    lines.append(
        "quiet-star minus no-policy answer NLL gain by base-model difficulty tercile (easy, medium, hard): "
        + ", ".join(f"{g:+.4f}" for g in gains)
    )
    return lines


def fmt(entry: dict, digits: int = 3) -> str:
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def markdown(result: dict) -> str:
    settings, summary = result["settings"], result["summary"]
    lines = [
        "# Thinking ablation: quiet-star vs no-policy vs plain",
        "",
        f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}, {result['date']}. "
        f"Task: sums of {settings['operands']} digits mod {settings['modulus']}; {len(settings['seeds'])} seeds per arm; "
        f"{settings['arm_steps']} steps per arm after {result['base']['steps']} base steps; eval split "
        f"`{settings['eval_split']}` ({result['eval_answers']} answer tokens).",
        "",
        f"Base model: direct-answer accuracy {result['base']['final']['answer_acc_plain']:.3f}, last-sum accuracy with "
        f"the intermediate sum in context {result['base']['final']['worked_last_sum_acc_plain']:.3f}.",
        "",
        "Final evaluation (mean ± std over seeds; NLL in nats; thinking = greedy thoughts):",
        "",
        "| arm | answer NLL (thinking) | answer NLL (no thinking) | accuracy (thinking) | accuracy (no thinking) "
        "| reward | mixing weight | NLL easy / medium / hard tercile | passes x tokens per step | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        last, info = summary[arm]["curve"][-1], summary[arm]
        terciles = " / ".join(f"{t['mean']:.3f}" for t in last["answer_nll_thinking_by_tercile"])
        lines.append(
            f"| {arm} | {fmt(last['answer_nll_thinking'])} | {fmt(last['answer_nll_plain'])} "
            f"| {fmt(last['answer_acc_thinking'])} | {fmt(last['answer_acc_plain'])} | {fmt(last['answer_reward'])} "
            f"| {fmt(last['answer_mixing_weight'])} | {terciles} "
            f"| {info['compute']['passes_per_step']} x {info['compute']['text_tokens_per_step']} "
            f"| {info['seconds_per_step'][0]:.3f} |"
        )
    lines += ["", "Answer NLL with thinking against step (mean ± std):", ""]
    steps = [entry["step"] for entry in summary["plain"]["curve"]]
    lines.append("| step | " + " | ".join(ARMS) + " |")
    lines.append("|---" * (len(ARMS) + 1) + "|")
    for index, step in enumerate(steps):
        cells = [fmt(summary[arm]["curve"][index]["answer_nll_thinking"]) for arm in ARMS]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "Verdict:", ""] + [f"- {line}" for line in result["verdict"]]
    for moment in ("start", "end"):
        lines += ["", f"Greedy quiet-star thoughts at the {moment} (seed {settings['seeds'][0]}):", ""]
        lines += ["| problem | thought | answer | p(answer) thinking | p(answer) plain | w |", "|---|---|---|---|---|---|"]
        for t in result["thoughts"].get(moment, []):
            lines.append(
                f"| {t['problem']} | {t['thought']} | {t['answer']} | {t['p_answer_thinking']:.3f} "
                f"| {t['p_answer_plain']:.3f} | {t['mixing_weight']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in (
        (axes[0], "answer_nll_thinking", "answer NLL (nats)"),
        (axes[1], "answer_acc_thinking", "answer accuracy"),
    ):
        for arm in ARMS:
            curve = summary[arm]["curve"]
            steps = [entry["step"] for entry in curve]
            mean = [entry[key]["mean"] for entry in curve]
            std = [entry[key]["std"] for entry in curve]
            axis.plot(steps, mean, marker="o", markersize=3, label=arm)
            axis.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        axis.set_xlabel("step after the base model")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"Thinking ablation ({len(result['settings']['seeds'])} seeds, mean ± std; greedy thoughts)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> tuple[StudySettings, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a one-minute smoke run: {QUICK}")
    parser.add_argument(
        "--out-dir", type=Path, default=RUNS_DIR,
        help=f"where {STEM}.{{json,md,png}} go (default: benchmark_runs/thinking_ablation/, untracked)",
    )
    defaults = StudySettings()
    for spec in fields(StudySettings):
        if spec.name in ("seeds",):
            continue
        default = getattr(defaults, spec.name)
        kwargs = {"choices": ["validation", "test"]} if spec.name == "eval_split" else {}
        parser.add_argument(
            "--" + spec.name.replace("_", "-"), type=type(default), default=None,
            help=f"{HELP.get(spec.name, spec.name.replace('_', ' '))} (default {default}; --quick: "
            f"{QUICK.get(spec.name, default)})", **kwargs,
        )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"seeds per arm (default {defaults.seeds})")
    args = parser.parse_args(argv)
    settings = replace(defaults, **QUICK) if args.quick else defaults
    overrides = {spec.name: getattr(args, spec.name) for spec in fields(StudySettings)}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    problem_length = 2 * settings.operands + 1  # a worked problem, the longer form
    if settings.operands < 2:
        parser.error("--operands must be >= 2")
    if not 2 <= settings.modulus <= 10:
        parser.error("--modulus must be in [2, 10]: operands and sums are single digit tokens")
    if not 0 <= settings.worked_fraction < 1:
        parser.error("--worked-fraction must be in [0, 1): the evaluation needs direct problems")
    if settings.seq_len < problem_length + max(settings.n_ahead_talk - 2, 0):
        parser.error(
            f"--seq-len must be >= {problem_length + max(settings.n_ahead_talk - 2, 0)} to hold a problem and the "
            "look-ahead window of its answer"
        )
    if len(settings.seeds) < 2 or len(set(settings.seeds)) != len(settings.seeds):
        parser.error("--seeds needs at least 2 distinct seeds (the spread over seeds is reported)")
    for name in ("batch_size", "base_steps", "base_check_every", "arm_steps", "eval_every", "eval_sequences", "threads"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        build_model(settings, settings.policy_loss_weight)
    except ValueError as error:
        parser.error(str(error))
    return settings, args.out_dir


def run_study(settings: StudySettings) -> dict:
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    eval_rng = random.Random(SPLIT_SEED_OFFSET[settings.eval_split])
    ids, answers = make_batch(eval_rng, settings, settings.eval_sequences, worked_fraction=0.0)
    worked_ids, worked_mask = worked_final_sums(eval_rng, settings, settings.eval_sequences)
    eval_set = EvalSet(ids, answers, worked_ids, worked_mask)

    base_state, base_record = pretrain_base(settings, eval_set)
    base_model = build_model(settings, 0.0)
    base_model.load_state_dict(base_state)
    _, base_nll = score(base_model, eval_set, settings)
    cuts = torch.quantile(base_nll, torch.tensor([1 / 3, 2 / 3]))
    eval_set.tercile = torch.bucketize(base_nll, cuts)

    runs = []
    for seed in settings.seeds:
        for arm in ARMS:
            runs.append(train_arm(arm, seed, base_state, settings, eval_set))
    summary = summarise(runs, settings)
    quiet_star_first = next(r for r in runs if r["arm"] == "quiet-star" and r["seed"] == settings.seeds[0])
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(torch.device("cpu")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "quietstar": quietstar.__version__,
        "settings": asdict(settings),
        "vocab": list(VOCAB),
        "eval_answers": int(answers.sum()),
        "tercile_cuts_base_nll": cuts.tolist(),
        "base": base_record,
        "runs": runs,
        "summary": summary,
        "thoughts": quiet_star_first["thoughts"],
    }
    result["verdict"] = verdict(summary)
    result["wall_seconds"] = time.perf_counter() - started
    return result


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings, out_dir = parse_args(argv)
    result = run_study(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{STEM}.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (out_dir / f"{STEM}.md").write_text(table)
    plot(result, out_dir / f"{STEM}.png")
    print(table)
    print(f"wall time {result['wall_seconds']:.0f} s; wrote {out_dir / STEM}.{{json,md,png}}")
    return result


if __name__ == "__main__":
    main()
