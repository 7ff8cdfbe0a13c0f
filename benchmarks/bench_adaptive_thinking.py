"""Thinking that pays for itself: quality against model calls per generated token for always-think, never-think,
adaptive thinking at several thresholds, and a distilled model that generates without thinking.

Pipeline (every step uses the package's own code):

1. A trained Quiet-STaR checkpoint: `--checkpoint DIR`, or a short Quiet-STaR run of `train.py` started here
   (preset `tiny`: a random-initialised Mistral-shaped model, hidden 64; preset `smollm2`: SmolLM2-135M-Instruct
   from its GGUF file) on the package's generated arithmetic corpus, with a thought-length curriculum.
2. The thought gate is fitted on held-in text (`quietstar.fit_thought_gate`); the thresholds are quantiles of the
   gate's predicted KL on that text, so the adaptive settings skip about 25 %, 50 %, 75 % and 90 % of positions.
3. A distilled copy: `train.py` continues from the checkpoint with `distill_loss_weight` on (and no REINFORCE term),
   then generates with `thinking=False`. As a control, the same continuation without the distillation term
   (`never-continued`, also without thinking) separates what distillation adds from the extra training steps (both
   runs keep training the base NLL, `base_loss_weight` of the loss).
4. Every setting is scored on held-out documents of the same corpus (a separate seed): the teacher-forced NLL per
   token and the probability of the final answer token(s) of held-out worked problems; and generates greedily from
   held-out prompts, counting model calls (`calls_per_token` = calls to the decoder, prefill included, divided by the
   generated tokens) and timing tokens/s.

Target: an adaptive setting with at most half the calls of always-think that keeps at least 90 % of always-think's
NLL gain over never-think; the report says whether it was met, or that the checkpoint has no gain to keep.

Outputs: `adaptive_thinking_<preset>_<device>.json` (`<checkpoint directory name>` instead of the preset with
`--checkpoint`) (one record per setting: `always`, `adaptive-<threshold>`,
`never`, `distilled`, `never-continued`), `.md` (table and verdict) and `.png` (NLL against calls per token) in `--out-dir`
(default benchmark_runs/, untracked); the trained checkpoints stay in a fresh directory under
benchmark_runs/adaptive_thinking/.

    python benchmarks/bench_adaptive_thinking.py                                  # tiny preset, a few minutes on CPU
    python benchmarks/bench_adaptive_thinking.py --preset smollm2 --checkpoint DIR
    python benchmarks/bench_adaptive_thinking.py --out-dir benchmarks/results     # the committed run
    python benchmarks/bench_adaptive_thinking.py --preset smollm2 --device cuda   # on a GPU
"""

import argparse
import datetime
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import quietstar
from common import (
    REPO_ROOT,
    RUNS_DIR,
    add_output_arguments,
    device_slug,
    host_record,
    load_smollm2,
    pyplot,
    report_stem,
    save_figure,
    write_report,
)
from quietstar.training.synthetic import PROBLEMS, synthetic_document

logger = logging.getLogger("bench_adaptive_thinking")
HELD_OUT_SEED = 1_000_003  # held-out documents and problems; the training corpus uses seed 0
HELD_IN_SEED = 2_000_003  # text the gate is fitted on
GATE_QUANTILES = (0.25, 0.5, 0.75, 0.9)
TARGET_CALLS_FRACTION, TARGET_GAIN_KEPT = 0.5, 0.9
ANSWER = re.compile(r"(?:=|is) (-?[0-9]+)\.$")

# Training runs of train.py: the shared part, then per preset.
TRAIN_COMMON = {
    "data": {"sources": [{"path": "synthetic"}], "shuffle_buffer": 0, "synthetic": {"n_documents": 2000, "n_shards": 2}},
    "checkpoint": {"interval": 0, "keep_last": 1, "export_dtype": "float32"},
    "logging": {"interval": 5, "wandb_mode": "disabled"},
}
PRESETS = {
    "tiny": {
        "model": {
            "name_or_path": None,
            "tokenizer": "builtin-mistral",
            "architecture": dict(
                hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512,
            ),
            "quietstar": dict(n_thought_tokens=4, n_ahead_talk=2, n_thoughts=2, policy_loss_weight=1.0,
                              meta_embedding_scale=1.0, attention_impl="torch"),
        },
        "data": {"seq_len": 48},
        "train": dict(global_batch_size=4, micro_batch_size=None, lr=5e-3, warmup_steps=5, lr_schedule="cosine",
                      param_dtype="float32", activation_checkpointing=False, seed=0),
        "train_steps": 60,
        "curriculum": [(0, 6, 3), (30, 4, 2)],
        "distill_steps": 20,
        "distill_lr": 1e-3,
        "evaluation": dict(held_out_rows=32, held_out_length=48, gate_rows=32, problems=40, prompts=4, new_tokens=16),
    },
    "smollm2": {
        "model": {
            "quietstar": dict(n_thought_tokens=4, n_ahead_talk=2, n_thoughts=2, policy_loss_weight=1.0,
                              meta_embedding_scale=1.0, attention_impl="torch"),
        },
        "data": {"seq_len": 32},
        "train": dict(global_batch_size=2, micro_batch_size=None, lr=1e-4, warmup_steps=2, lr_schedule="constant",
                      param_dtype="float32", activation_checkpointing=False, seed=0),
        "train_steps": 8,
        "curriculum": [(0, 5, 2), (4, 4, 2)],
        "distill_steps": 3,
        "distill_lr": 1e-4,
        "evaluation": dict(held_out_rows=16, held_out_length=48, gate_rows=16, problems=20, prompts=2, new_tokens=8),
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny", help="model to train when no --checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="a trained Quiet-STaR checkpoint (HF directory); else trained here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-steps", type=int, help="steps of the Quiet-STaR run (default: the preset's)")
    parser.add_argument("--distill-steps", type=int, help="steps of the distillation run (default: the preset's)")
    parser.add_argument("--distill-lr", type=float, help="learning rate of the distillation run (default: the preset's)")
    parser.add_argument("--held-out-rows", type=int, help="held-out rows scored for the NLL (default: the preset's)")
    parser.add_argument("--held-out-length", type=int, help="tokens per held-out row (default: the preset's)")
    parser.add_argument("--gate-rows", type=int, help="held-in rows the gate is fitted on (default: the preset's)")
    parser.add_argument("--problems", type=int, help="held-out worked problems for the answer probability (default: the preset's)")
    parser.add_argument("--prompts", type=int, help="held-out prompts generated from (batch 1 each) (default: the preset's)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per prompt (default: the preset's)")
    add_output_arguments(parser, "adaptive_thinking_<preset>_<device>.{json,md,png}", label=False)
    parser.add_argument(
        "--work-dir", type=Path, default=RUNS_DIR / "adaptive_thinking",
        help="a new <preset>-<time> directory here receives the training runs (default: benchmark_runs/adaptive_thinking)",
    )
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.train_steps = preset["train_steps"] if args.train_steps is None else args.train_steps
    args.distill_steps = preset["distill_steps"] if args.distill_steps is None else args.distill_steps
    args.distill_lr = preset["distill_lr"] if args.distill_lr is None else args.distill_lr
    if not args.distill_lr > 0:
        parser.error(f"--distill-lr must be > 0, got {args.distill_lr}")
    for name, value in preset["evaluation"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("train_steps", "distill_steps", "held_out_rows", "held_out_length", "gate_rows", "problems", "prompts",
                 "new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.prompts > args.problems:
        parser.error(f"--prompts ({args.prompts}) must not exceed --problems ({args.problems}): prompts are problems' starts")
    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no config.json there (not a Hugging Face model directory)")
    return args


# ------------------------------------------------------------------------------------------------ training runs


def run_train(config: dict, work: Path, name: str) -> Path:
    """Run train.py on `config` (written to `work/<name>.yaml`) into `work/<name>`; return its final model."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(path), "--output-dir", str(work / name)]
    logger.info("training %s: %s", name, " ".join(command))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"train.py for {name} failed:\n{result.stderr[-3000:]}")
    logger.info("trained %s in %.0f s", name, time.perf_counter() - started)
    return work / name / "final"


def smollm2_start(work: Path) -> Path:
    """SmolLM2-135M-Instruct from its GGUF file, saved as a Quiet-STaR checkpoint with meta tokens (train.py's start)."""
    model, tokenizer = load_smollm2()
    start = work / "smollm2_start"
    model.save_pretrained(start)
    tokenizer.save_pretrained(start)
    return start


def train_checkpoint(args, work: Path) -> tuple[Path, dict]:
    """A short Quiet-STaR run with a thought-length curriculum; returns its final model and the run's config."""
    preset = PRESETS[args.preset]
    model = dict(preset["model"])
    if args.preset == "smollm2":
        model["name_or_path"] = str(smollm2_start(work))
    curriculum = [
        {"step": step, "n_thought_tokens": t, "n_ahead_talk": a} for step, t, a in preset["curriculum"]
        if step < args.train_steps
    ]
    config = {
        **TRAIN_COMMON,
        "model": model,
        "data": {**TRAIN_COMMON["data"], **preset["data"]},
        "train": {**preset["train"], "max_steps": args.train_steps, "device": args.device, "thought_curriculum": curriculum},
    }
    return run_train(config, work, "quietstar"), config


def continue_checkpoint(
    args, checkpoint: Path, train_config: dict | None, work: Path, name: str, distill_loss_weight: float
) -> Path:
    """Continue from `checkpoint` for `--distill-steps` with the given distillation weight and no REINFORCE term;
    returns the final model."""
    preset = PRESETS[args.preset]
    base = train_config or {**TRAIN_COMMON, "data": {**TRAIN_COMMON["data"], **preset["data"]}, "train": preset["train"]}
    config = {
        **base,
        "model": {"name_or_path": str(checkpoint),
                  "quietstar": {"distill_loss_weight": distill_loss_weight, "policy_loss_weight": 0.0}},
        "train": {**base["train"], "max_steps": args.distill_steps, "lr": args.distill_lr, "warmup_steps": 0,
                  "lr_schedule": "constant", "device": args.device, "thought_curriculum": []},
    }
    return run_train(config, work, name)


# --------------------------------------------------------------------------------------------------- held-out data


def token_rows(tokenizer, seed: int, rows: int, length: int) -> torch.LongTensor:
    """(rows, length) tokens of generated documents from `seed`, concatenated (BOS doc EOS ...) and cut into rows."""
    rng = random.Random(seed)
    stream: list[int] = []
    while len(stream) < rows * length:
        stream += tokenizer.encode(synthetic_document(rng)) + [tokenizer.eos_token_id]
    return torch.tensor(stream[: rows * length]).view(rows, length)


def answer_problems(tokenizer, seed: int, count: int) -> list[tuple[list[int], int]]:
    """Held-out worked problems ending in a number: (token ids up to and including the answer, answer start)."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < count:
        text = rng.choice(PROBLEMS)(rng)
        match = ANSWER.search(text)
        if match is None:
            continue
        prompt_ids = tokenizer.encode(text[: match.start(1) - 1])
        ids = tokenizer.encode(text[: match.end(1)])
        if ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids):
            problems.append((ids, len(prompt_ids)))
    return problems


# --------------------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score(model, held_out: torch.LongTensor, problems, thinking: bool, device) -> tuple[dict, torch.Tensor]:
    """Teacher-forced NLL per token of `held_out`, the fraction of its positions that thought, and the mean
    probability of the answer tokens of `problems`; and the NLL of every scored position (flat, in a fixed order)."""
    nlls, thought = [], 0
    for start in range(0, held_out.shape[0], 8):
        ids = held_out[start : start + 8].to(device)
        output = model(ids, thinking=thinking, use_cache=False)
        logits = output.logits[:, :-1].float()
        nlls.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").flatten())
        if thinking:
            thought += int(output.thought_used[:, :-1].sum())
    nll = torch.cat(nlls).cpu()
    answer_probs = []
    for ids, answer_start in problems:
        ids = torch.tensor([ids], device=device)
        logits = model(ids, thinking=thinking, use_cache=False).logits[0].float()
        probs = logits[answer_start - 1 : -1].softmax(-1).gather(-1, ids[0, answer_start:, None]).squeeze(-1)
        answer_probs += probs.tolist()
    metrics = {
        "nll": float(nll.mean()),
        "thought_fraction_scored": thought / nll.numel(),
        "answer_token_prob": sum(answer_probs) / len(answer_probs),
    }
    return metrics, nll


def oracle_gain_kept(gains: torch.Tensor, fraction: float) -> float:
    """Share of the total NLL gain kept by thinking at the `fraction` of positions with the largest gain: what a gate
    that knew every position's gain (the label included) would keep at that thinking rate; an upper bound."""
    count = round(fraction * gains.numel())
    return float(gains.sort(descending=True).values[:count].sum() / gains.sum())


@torch.no_grad()
def generate_cost(model, prompts: list[torch.LongTensor], new_tokens: int, thinking: bool, device) -> dict:
    """Greedy generation of `new_tokens` from each prompt (batch 1): model calls per generated token (prefill
    included), tokens/s, and the fraction of generated tokens that thought."""
    calls = []
    handle = model.model.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    used, seconds = [], 0.0
    try:
        warm_up = {**kwargs, "max_new_tokens": 2, "min_new_tokens": 2}  # a short warm-up, not counted
        model.generate(prompts[0].to(device), thinking=thinking, **warm_up)
        calls.clear()
        for prompt in prompts:
            started = time.perf_counter()
            if thinking:
                out = model.generate_with_thoughts(prompt.to(device), **kwargs)
                used.append(out.thought_used.float().mean().item())
            else:
                model.generate(prompt.to(device), thinking=False, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - started
    finally:
        handle.remove()
    generated = new_tokens * len(prompts)
    return {
        "calls_per_token": len(calls) / generated,
        "tokens_per_s": generated / seconds,
        "thought_fraction_generated": sum(used) / len(used) if used else 0.0,
    }


@torch.no_grad()
def gate_thresholds(model, rows: torch.LongTensor, device) -> list[float]:
    """Quantiles `GATE_QUANTILES` of the fitted gate's predicted KL (nats) over the positions of `rows`."""
    predicted = []
    for start in range(0, rows.shape[0], 8):
        hidden = model(rows[start : start + 8].to(device), thinking=False, output_hidden_states=True).hidden_states[-1]
        predicted.append(model.thought_gate.predicted_log_kl(hidden).flatten().float().cpu())
    log_kl = torch.cat(predicted)
    # distinct values only: a gate that predicts the same KL everywhere (an untrained mixing head) gives one setting
    return sorted({float(value.exp()) for value in torch.quantile(log_kl, torch.tensor(GATE_QUANTILES))})


def load(path: Path, device) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    model.generation_config.suppress_tokens = [model.config.start_thought_token_id, model.config.end_thought_token_id]
    return model


def evaluate_settings(args, checkpoint: Path, distilled: Path, continued: Path, device) -> tuple[list[dict], dict]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load(checkpoint, device)
    held_out = token_rows(tokenizer, HELD_OUT_SEED, args.held_out_rows, args.held_out_length)
    held_in = token_rows(tokenizer, HELD_IN_SEED, args.gate_rows, args.held_out_length)
    problems = answer_problems(tokenizer, HELD_OUT_SEED, args.problems)
    prompts = [torch.tensor([ids[: max(answer_start - 12, 4)]]) for ids, answer_start in problems[: args.prompts]]
    started = time.perf_counter()
    fit = quietstar.fit_thought_gate(model, held_in)
    gate = {"n_positions": fit.n_positions, "r2": fit.r2, "kl_quantiles": fit.kl_quantiles,
            "seconds": time.perf_counter() - started}
    thresholds = gate_thresholds(model, held_in, device)
    gate["thresholds"] = thresholds
    logger.info("gate fitted on %d positions, R^2 %.3f, thresholds %s", fit.n_positions, fit.r2, thresholds)

    records, position_nll = [], {}

    def measure(setting: str, net, thinking: bool, threshold: float | None):
        if threshold is not None:
            net.config.think_threshold = threshold
        metrics, position_nll[setting] = score(net, held_out, problems, thinking, device)
        record = {"setting": setting, "think_threshold": threshold, "thinking": thinking, **metrics,
                  **generate_cost(net, prompts, args.new_tokens, thinking, device)}
        logger.info("%s: %s", setting, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
        records.append(record)

    measure("always", model, True, 0.0)
    for threshold in thresholds:
        measure(f"adaptive-{threshold:.3g}", model, True, threshold)
    measure("never", model, False, None)
    measure("distilled", load(distilled, device), False, None)
    measure("never-continued", load(continued, device), False, None)
    gains = position_nll["never"] - position_nll["always"]
    if gains.sum() > 0:
        for record in records:
            if record["setting"].startswith("adaptive-"):
                record["oracle_gain_kept"] = oracle_gain_kept(gains, record["thought_fraction_scored"])
        thought_length = model.config.n_thought_tokens  # half of always-think's calls: 1 + T * f = (T + 1) / 2
        gate["oracle_gain_kept_at_half_calls"] = oracle_gain_kept(gains, (thought_length - 1) / (2 * thought_length))
    gate["positions_with_gain"] = float((gains > 0).float().mean())
    return records, gate


def judge(records: list[dict], oracle: float | None = None) -> dict:
    """Each record's share of always-think's NLL gain over never-think, and whether the target was met; `oracle` is
    the share an all-knowing gate would keep at half the calls (`oracle_gain_kept`), quoted in the verdict."""
    by_setting = {r["setting"]: r for r in records}
    always, never = by_setting["always"], by_setting["never"]
    gain = never["nll"] - always["nll"]
    for record in records:
        record["nll_gain_kept"] = (never["nll"] - record["nll"]) / gain if gain > 0 else None
        record["calls_fraction_of_always"] = record["calls_per_token"] / always["calls_per_token"]
    met = [
        r["setting"] for r in records
        if r["setting"].startswith("adaptive-") and gain > 0
        and r["calls_fraction_of_always"] <= TARGET_CALLS_FRACTION and r["nll_gain_kept"] >= TARGET_GAIN_KEPT
    ]
    if gain <= 0:
        verdict = (f"The checkpoint has no NLL gain from thinking to keep (never-think {never['nll']:.4f} vs always-think "
                   f"{always['nll']:.4f} nats/token), so the target cannot be met; the curve is reported anyway.")
    elif met:
        verdict = (f"Target met by {', '.join(met)}: at most {TARGET_CALLS_FRACTION:.0%} of always-think's calls per "
                   f"token while keeping at least {TARGET_GAIN_KEPT:.0%} of its NLL gain ({gain:.4f} nats/token).")
    else:
        verdict = (f"Target not met: no adaptive setting keeps {TARGET_GAIN_KEPT:.0%} of always-think's NLL gain "
                   f"({gain:.4f} nats/token) at {TARGET_CALLS_FRACTION:.0%} of its calls per token.")
    if oracle is not None and gain > 0:
        verdict += (f" A gate that knew every position's gain (the label included) would keep {oracle:.0%} of it "
                    f"thinking at the positions that half of always-think's calls pay for.")
    return {"nll_gain_always": gain, "met_by": met, "verdict": verdict}


# ------------------------------------------------------------------------------------------------------ reporting


def to_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# Adaptive thinking: NLL against model calls per token ({report['device']})",
        "",
        f"Checkpoint: {report['checkpoint']['description']}. Inference thoughts of {report['checkpoint']['n_thought_tokens']} "
        f"tokens; greedy thoughts and decoding. Held-out: {s['held_out_rows']} rows x {s['held_out_length']} tokens "
        f"(NLL), {s['problems']} worked problems (answer-token probability), {s['prompts']} prompts x "
        f"{s['new_tokens']} generated tokens (calls, tokens/s). Gate fitted on {report['gate']['n_positions']} held-in "
        f"positions (R^2 {report['gate']['r2']:.3f}); torch {report['versions']['torch']}, transformers "
        f"{report['versions']['transformers']}; {report['date']}; host load average {report['load_average_1min']:.1f}; "
        f"{report['wall_seconds'] / 60:.1f} min in all.",
        "",
        "| setting | calls/token | tokens/s | NLL (nats/token) | NLL gain kept | oracle gate at the same rate "
        "| positions thinking (scored / generated) | answer-token prob |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["records"]:
        kept = "-" if r["nll_gain_kept"] is None else f"{100 * r['nll_gain_kept']:.0f} %"
        oracle = f"{100 * r['oracle_gain_kept']:.0f} %" if "oracle_gain_kept" in r else "-"
        lines.append(
            f"| {r['setting']} | {r['calls_per_token']:.2f} | {r['tokens_per_s']:.1f} | {r['nll']:.4f} | {kept} | "
            f"{oracle} | {r['thought_fraction_scored']:.2f} / {r['thought_fraction_generated']:.2f} | "
            f"{r['answer_token_prob']:.4f} |"
        )
    lines += [
        "",
        "NLL gain kept: (never - setting) / (never - always) in held-out NLL. Oracle gate: the share an all-knowing "
        "gate keeps when the same fraction of scored positions thinks, choosing the positions with the largest gain "
        f"(labels included); {100 * report['gate']['positions_with_gain']:.0f} % of positions gain from their thought. "
        "`never-continued` is the distillation run's control: the same steps without the distillation term.",
        "",
        f"**{report['target']['verdict']}**",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    records = report["records"]
    figure, axes = plt.subplots(figsize=(6, 4))
    curve = [r for r in records if r["setting"] in ("never", "always") or r["setting"].startswith("adaptive-")]
    curve.sort(key=lambda r: r["calls_per_token"])
    axes.plot([r["calls_per_token"] for r in curve], [r["nll"] for r in curve], "o-", label="gate thresholds")
    for r in records:
        axes.annotate(r["setting"], (r["calls_per_token"], r["nll"]), fontsize=7, textcoords="offset points",
                      xytext=(4, 4))
    for setting, marker in (("distilled", "s"), ("never-continued", "^")):
        points = [r for r in records if r["setting"] == setting]
        axes.plot([r["calls_per_token"] for r in points], [r["nll"] for r in points], marker, label=setting)
    axes.set(xlabel="model calls per generated token", ylabel="held-out NLL (nats/token)",
             title=f"adaptive thinking, {report['preset']}\n{report['device']}")
    axes.legend()
    save_figure(figure, path)
    return True


def shown_path(path: Path) -> str:
    """`path` as the report shows it: relative to the repository when inside it, else its directory name only (the
    report must not depend on, or reveal, the machine's layout)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    device = torch.device(args.device)
    wall = time.perf_counter()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    work = args.work_dir / f"{args.preset}-{stamp}"
    work.mkdir(parents=True)  # a fresh directory: a second run never reuses or mixes with the first
    train_config = None
    if args.checkpoint is None:
        checkpoint, train_config = train_checkpoint(args, work)
        description = (f"trained here ({args.preset}, {args.train_steps} Quiet-STaR steps, curriculum "
                       f"{PRESETS[args.preset]['curriculum']})")
    else:
        checkpoint = args.checkpoint.resolve()
        description = f"given checkpoint `{shown_path(checkpoint)}`"
    distilled = continue_checkpoint(args, checkpoint, train_config, work, "distilled", 1.0)
    continued = continue_checkpoint(args, checkpoint, train_config, work, "continued", 0.0)
    records, gate = evaluate_settings(args, checkpoint, distilled, continued, device)
    target = judge(records, gate.get("oracle_gain_kept_at_half_calls"))
    checkpoint_config = json.loads((checkpoint / "config.json").read_text())
    report = {
        "benchmark": "adaptive_thinking",
        **host_record(device),
        "preset": args.preset,
        "checkpoint": {"path": shown_path(checkpoint), "description": description,
                       "n_thought_tokens": checkpoint_config["n_thought_tokens"],
                       "distilled_path": shown_path(distilled), "distill_steps": args.distill_steps,
                       "distill_lr": args.distill_lr},
        "settings": {k: getattr(args, k) for k in ("held_out_rows", "held_out_length", "gate_rows", "problems",
                                                   "prompts", "new_tokens", "train_steps")},
        "gate": gate,
        "records": records,
        "target": target,
        "wall_seconds": time.perf_counter() - wall,
    }
    markdown = to_markdown(report)
    print(markdown)
    # a given checkpoint is named by its directory, so its results never replace those of a run trained here
    name = args.preset if args.checkpoint is None else re.sub(r"[^A-Za-z0-9]+", "_", args.checkpoint.resolve().name)
    stem = report_stem(args.out_dir, "adaptive_thinking", name, device_slug(device))
    write_report(stem, report, markdown)
    written = [".json", ".md"] + ([".png"] if plot(report, stem.with_suffix(".png")) else [])
    logger.info("wrote %s.{%s}", stem, ",".join(suffix[1:] for suffix in written))
    return report


if __name__ == "__main__":
    main()
