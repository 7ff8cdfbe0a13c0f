"""Seconds per training step and peak memory of Quiet-STaR on a real model, at the real-model study's shape.

The model is SmolLM2-135M-Instruct (30 layers, hidden 576, vocabulary 49152 + 2 meta tokens), set up exactly as an
arm of `experiments/real_model_study.py` (top layers and mixing head trainable, the rest frozen). For every thought
length T of the study it times full optimizer steps (`quietstar.training.step.train_step`: forward, backward,
clipping, AdamW) of

- the Quiet-STaR arm on B sequences, each thought about N times (B * N rows, P = T + A passes), and
- a plain causal step (thinking off) on the same B * N rows (each sequence repeated N times),

in interleaved rounds (one Quiet-STaR step, then `--plain-per-round` plain steps; medians over rounds), and gives
the ratio step / (P x plain step): the cost of the parallel-thought step over running its P passes as plain steps.

Peak memory is the process's peak resident set size (VmHWM) during a few steps of each kind, after resetting the
peak (`/proc/self/clear_refs`) with the model loaded, so loading the GGUF does not count; the RSS before the steps is
given too. Linux only. Results go to `--out-dir` as `real_model_step_cpu.{json,md}`.

    python benchmarks/bench_real_model_step.py --out-dir benchmarks/results   # the committed result (~5 min, 2 cores)
    python benchmarks/bench_real_model_step.py --quick                         # a smoke run
"""

import argparse
import datetime
import gc
import importlib.util
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from common import REPO_ROOT, add_output_arguments, device_description, load_smollm2, report_stem, write_report
from quietstar.training.optim import build_optimizer, build_scheduler
from quietstar.training.config import TrainConfig
from quietstar.training.parallel import init_world
from quietstar.training.step import train_step

STEM = "real_model_step_cpu"
logger = logging.getLogger("bench_real_model_step")


def load_study():
    """The study script as a module (it lives outside any package)."""
    path = REPO_ROOT / "experiments" / "real_model_study.py"
    spec = importlib.util.spec_from_file_location("real_model_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_model_study"] = module
    spec.loader.exec_module(module)
    return module


def proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


class Stepper:
    """Optimizer steps of one objective (thinking model, or `PlainObjective`) on fixed rows."""

    def __init__(self, objective, model, rows: torch.LongTensor, steps: int):
        self.objective, self.rows = objective, rows
        self.config = TrainConfig(max_steps=steps, lr=1e-4, warmup_steps=0, weight_decay=0.0, param_dtype="float32")
        self.world = init_world("cpu")
        self.optimizer = build_optimizer(model, self.config, self.world.device)
        self.scheduler = build_scheduler(self.optimizer, self.config)
        self.step_index = 0

    def step(self) -> float:
        """Seconds of one optimizer step."""
        self.objective.train()
        start = time.perf_counter()
        train_step(
            self.objective, self.optimizer, self.scheduler, [self.rows], self.world, step=self.step_index, seed=0,
            grad_clip=1.0, param_dtype="float32",
        )
        self.step_index += 1
        return time.perf_counter() - start


def peak_rss_of(stepper: Stepper, steps: int) -> dict:
    gc.collect()
    before = proc_status_kib("VmRSS")
    reset_peak_rss()
    for _ in range(steps):
        stepper.step()
    return {"rss_before_mib": before / 1024, "peak_rss_mib": proc_status_kib("VmHWM") / 1024}


def measure(study, base, settings, thought_length: int, args) -> dict:
    """Time and memory of the quiet-star arm at `thought_length` and of plain steps on the same B * N rows."""
    torch.manual_seed(0)
    rows = torch.randint(0, base.config.vocab_size - 2, (settings.batch_size, settings.seq_len))
    plain_rows = rows.repeat_interleave(settings.n_thoughts, dim=0)
    steps = args.rounds * (1 + args.plain_per_round) + 4
    plain_model = study.arm_model(base, settings, "plain", thought_length, 0)
    plain = Stepper(study.PlainObjective(plain_model), plain_model, plain_rows, steps)
    thinking_model = study.arm_model(base, settings, "quiet-star", thought_length, 0)
    thinking = Stepper(thinking_model, thinking_model, rows, steps)
    memory = {"plain": peak_rss_of(plain, 2), "quiet-star": peak_rss_of(thinking, 2)}
    thinking_seconds, plain_seconds = [], []
    for _ in range(args.rounds):
        thinking_seconds.append(thinking.step())
        plain_seconds.extend(plain.step() for _ in range(args.plain_per_round))
    passes = thought_length + settings.n_ahead_talk
    step, plain_step = statistics.median(thinking_seconds), statistics.median(plain_seconds)
    return {
        "thought_length": thought_length,
        "passes": passes,
        "rows": settings.batch_size * settings.n_thoughts,
        "seconds_per_step": step,
        "plain_seconds_per_step": plain_step,
        "ratio_to_passes_x_plain": step / (passes * plain_step),
        "step_seconds_all": thinking_seconds,
        "plain_seconds_all": plain_seconds,
        "memory": memory,
    }


def to_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"SmolLM2-135M-Instruct, B={s['batch_size']}, N={s['n_thoughts']}, L={s['seq_len']}, A={s['n_ahead_talk']}, "
        f"top {s['trained_layers']} layers + mixing head trained, fp32; {report['device']} "
        f"({report['note']}; 1-minute load average {report['load_average_1min']['before']:.1f} before, "
        f"{report['load_average_1min']['after']:.1f} after). Medians over {report['rounds']} rounds.",
        "",
        "| T | passes P | s/step Quiet-STaR | s/step plain (B*N rows) | step / (P x plain) | peak RSS Quiet-STaR (MiB) "
        "| its rise over RSS before | peak RSS plain (MiB) | its rise over RSS before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        memory = row["memory"]
        lines.append(
            f"| {row['thought_length']} | {row['passes']} | {row['seconds_per_step']:.2f} | "
            f"{row['plain_seconds_per_step']:.3f} | {row['ratio_to_passes_x_plain']:.2f} | "
            f"{memory['quiet-star']['peak_rss_mib']:.0f} | "
            f"{memory['quiet-star']['peak_rss_mib'] - memory['quiet-star']['rss_before_mib']:.0f} | "
            f"{memory['plain']['peak_rss_mib']:.0f} | {memory['plain']['peak_rss_mib'] - memory['plain']['rss_before_mib']:.0f} |"
        )
    lines += [
        "",
        "Peak RSS is the whole process: it holds the base model and both arm models (about 0.55 GB each in fp32) "
        "besides the step. The rise over the RSS before the steps is a lower bound of what a step adds, since the "
        "allocator reuses memory freed earlier.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per thought length")
    parser.add_argument("--plain-per-round", type=int, default=3, help="plain steps per round")
    parser.add_argument("--quick", action="store_true", help="the study's quick settings and one round")
    parser.add_argument("--note", default="shared machine", help="what else ran on the machine, for the report")
    add_output_arguments(parser, f"{STEM}.{{json,md}}", label=False)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    study = load_study()
    settings = study.QUICK if args.quick else study.StudySettings()
    if args.quick:
        args = argparse.Namespace(**{**vars(args), "rounds": 1, "plain_per_round": 1})
    base, _ = load_smollm2()
    load_before = os.getloadavg()
    rows = [measure(study, base, settings, t, args) for t in settings.thought_lengths]
    report = {
        "settings": asdict(settings),
        "device": device_description(torch.device("cpu")),
        "note": args.note,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "rounds": args.rounds,
        "plain_per_round": args.plain_per_round,
        "created": datetime.datetime.now().isoformat(),
        "rows": rows,
    }
    write_report(report_stem(args.out_dir, STEM), report, to_markdown(report), indent=1)
    return report


if __name__ == "__main__":
    print(to_markdown(main()))
