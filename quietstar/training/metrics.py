"""Run metrics: a console progress line (logging), `<output_dir>/metrics.jsonl`, and wandb when enabled.

Only rank 0 logs; the values it receives are already averaged over ranks. A resumed run first drops the records
past the step it resumes from (`truncate_metrics`), so `metrics.jsonl` holds every step once.
"""

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

import torch

from .config import LoggingConfig

logger = logging.getLogger("quietstar.train")


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated device memory (CUDA) or peak resident set size of the process (CPU), in GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Drop the records of `path` (a `metrics.jsonl`) whose step is past `last_step`; return how many were dropped.

    The file is rewritten atomically (a temporary file renamed over it), so a crash leaves the old or the new file.
    A line that is not a JSON record (the last one, cut short by a kill while it was written) is dropped as well.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line + "\n")
        else:
            dropped += 1
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as file:
        file.writelines(kept)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    return dropped


class MetricsLogger:
    """Writes one record per logged step. `log(step, metrics)` on every rank; only rank 0 writes."""

    def __init__(self, output_dir: str | Path, config: LoggingConfig, run_config: dict, max_steps: int, is_main: bool):
        self.config, self.max_steps, self.is_main = config, max_steps, is_main
        self._file = None
        self._wandb_run = None
        if not is_main:
            return
        self._file = open(Path(output_dir) / "metrics.jsonl", "a")
        if config.wandb_mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                project=config.wandb_project,
                name=config.wandb_run_name,
                mode=config.wandb_mode,
                dir=str(output_dir),
                config=run_config,
            )

    def log(self, step: int, metrics: dict[str, float], seconds_per_step: float) -> None:
        """Log the metrics of `step` with an ETA from the mean step time."""
        if not self.is_main:
            return
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)
        eta = _format_duration((self.max_steps - step) * seconds_per_step)
        mfu = f" | mfu {100 * metrics['mfu']:.1f}%" if metrics.get("mfu") is not None else ""
        logger.info(
            "step %d/%d | loss %.4f (base %.4f, thought %.4f, policy %.3g) | reward %.4f | adv %.3g | w %.4f | "
            "gnorm %.3g | lr %.3g | %.0f tok/s%s | mem %.2f GB | eta %s",
            step,
            self.max_steps,
            metrics["loss"],
            metrics["base_loss"],
            metrics["thought_loss"],
            metrics["policy_loss"],
            metrics["mean_reward"],
            metrics["mean_advantage"],
            metrics["mean_mixing_weight"],
            metrics["grad_norm"],
            metrics["lr"],
            metrics["tokens_per_second"],
            mfu,
            metrics["peak_memory_gb"],
            eta,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()


class StepTimer:
    """Wall time per step. The mean leaves out the first step (start-up and warm-up) once there are others."""

    def __init__(self):
        self.restart()
        self._durations: list[float] = []

    def restart(self) -> None:
        """Start the clock again (after work that is not a training step, such as a checkpoint)."""
        self._last = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap (or restart)."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        self._durations.append(elapsed)
        return elapsed

    @property
    def mean(self) -> float:
        steady = self._durations[1:] or self._durations
        return sum(steady) / max(len(steady), 1)
