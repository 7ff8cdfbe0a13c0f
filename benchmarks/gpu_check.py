"""One prepared check of everything the GPU path claims, on a machine with one CUDA GPU, written as one report.

Started by `scripts/gpu_check.sh`, which first makes sure that a CUDA device is there (one line and a non-zero exit
otherwise, before anything slow). The stages run in order, each as a subprocess in a process group of its own with a
time limit of its own, extended by whatever the stages before it left unused: a stage still running at its limit is
killed with its whole group, reported as "timed out", and the next stage starts. The limits add up to the overall
budget (470 s by default, so that the whole command, installs included, stays under 8 minutes; `--budget-s` sets
it apart): a stage that no longer fits, or whose prerequisite did not pass, is skipped, and the report says why. Default limits in seconds, estimated
for one H100 (`--limit NAME=SECONDS` changes one; a Triton compile and autotune cache left by an earlier run on the
same machine, ~/.triton/cache, makes the kernel stages much quicker):

    environment      90  the project's virtualenv with a CUDA build of torch (scripts/setup_cuda_env.sh); with
                         --python, only checks that that interpreter imports quietstar and torch
    device           20  torch sees the GPU: name, compute capability, memory, library versions
    cuda_tests       95  the suite's CUDA tests (pytest -m cuda, all skipped on CPU) but the kernel sweep
    kernel_sweep     70  the Triton thought attention against the torch implementation, forward and backward:
                         bf16 and fp16, d = 64 and 128, GQA, p up to 16, odd L, padding, both dQ paths
                         (tests/test_triton_attention.py::test_cuda_kernel_sweep_against_torch)
    flash_attn       20  pip install of flash-attn (FA2) as a prebuilt wheel; whether FA3 (flash_attn_interface)
                         can be imported
    bench_attention  55  benchmarks/bench_attention.py at Mistral 7B's heads (B 1 and 8, L 1024 and 4096, p 1
                         and 16): ours, SDPA (cuDNN/flash), FA2/FA3 when installed and the dense baseline, forward
                         and backward, TFLOP/s, and time over the prediction in benchmarks/results/kernel_report.json
    train_step       55  benchmarks/bench_train_step.py: 4 layers of Mistral 7B's widths, bf16, activation
                         checkpointing, the triton path: torch.cuda.max_memory_allocated, step time and its ratio
                         to P plain steps
    generate         25  benchmarks/bench_generate.py at the same shape: generate() tokens/s thinking and plain
    fsdp_nccl        40  train.py under torchrun on one rank (NCCL, FSDP2, bf16 parameters, triton attention,
                         activation checkpointing), 3 optimizer steps of the tiny config with Mistral's head layout
                         (d = 128, 4 query heads per KV head: the kernel variants the earlier stages compiled)

Each run writes to a new directory <out-dir>/gpu_check_<UTC time>/ (default out-dir: benchmark_runs/, ignored by
git; an existing run directory is never reused): report.json and report.md, rewritten after every stage so that a
stopped run keeps what it measured, <stage>.log with each stage's output, and <stage>/ with its files. The exit
status is 0 when every stage passed.

This file imports only the standard library, so that it runs before the environment exists; the stages run with
the environment's interpreter. `gpu_check.py probe device|flash_attn` are two of those stages.

    scripts/gpu_check.sh                                  # everything, report under benchmark_runs/
    scripts/gpu_check.sh --out-dir /tmp/check --limit cuda_tests=150
    scripts/gpu_check.sh --stages bench_attention         # environment, device and one stage (a rerun)
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "benchmark_runs"
PREDICTIONS = REPO_ROOT / "benchmarks" / "results" / "kernel_report.json"
MIN_STAGE_S = 5.0  # a stage with less time than this left in the budget is skipped rather than started
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a timed-out stage's process group
SWEEP_TEST = "test_cuda_kernel_sweep_against_torch"
STAGE_ENV = dict(
    HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
    PYTHONUNBUFFERED="1",
)
# The stages in run order with their default time limits in seconds (their commands: `default_stages`); the
# overall budget defaults to their sum.
STAGE_LIMITS = {
    "environment": 90.0,
    "device": 20.0,
    "cuda_tests": 95.0,
    "kernel_sweep": 70.0,
    "flash_attn": 20.0,
    "bench_attention": 55.0,
    "train_step": 55.0,
    "generate": 25.0,
    "fsdp_nccl": 40.0,
}
ALWAYS_RUN = ("environment", "device")
MISTRAL_LAYERS = 4  # decoder layers of Mistral 7B's widths in the train_step and generate stages
ATTENTION_SHAPES = dict(batches=["1", "8"], lengths=["1024", "4096"], passes=["1", "16"])
PIP_TIMEOUT_S = 12.0  # for the flash-attn install attempt, inside the flash_attn stage's limit


class CheckFailed(Exception):
    """A stage ran to its end but what it produced shows a failure (e.g. a non-finite loss); `results` (if any) still
    go into the report."""

    def __init__(self, message: str, results: dict | None = None):
        super().__init__(message)
        self.results = results


@dataclass
class Stage:
    """One step of the check: a command run from the repository root, its time limit, and how to read its output.

    collect(stage_dir, log_text) -> results (JSON-serialisable) may raise CheckFailed to fail a stage whose
    command exited 0.
    """

    name: str
    description: str
    command: list[str]
    limit_s: float
    needs: tuple[str, ...] = ()
    collect: Callable[[Path, str], dict] | None = None


# ------------------------------------------------------------------------------------------------ arguments


def parse_limit(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in STAGE_LIMITS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=SECONDS with NAME one of {', '.join(STAGE_LIMITS)}")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the limit must be positive")
    return name, seconds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="the run directory gpu_check_<UTC time>/ is made in it (default: benchmark_runs/)")
    parser.add_argument("--budget-s", type=float,
                        help=f"overall time budget in seconds (default: the sum of the stage limits, "
                             f"{sum(STAGE_LIMITS.values()):.0f} unless --limit changes one)")
    parser.add_argument("--limit", type=parse_limit, action="append", default=[], metavar="NAME=SECONDS",
                        help="time limit of one stage (repeatable)")
    later = [name for name in STAGE_LIMITS if name not in ALWAYS_RUN]
    parser.add_argument("--stages", nargs="+", choices=later, default=later, metavar="NAME",
                        help=f"stages to run after environment and device (default: all of {', '.join(later)})")
    parser.add_argument("--python", type=Path,
                        help="an interpreter that already has quietstar and its dependencies with a CUDA torch: "
                             "nothing is installed (default: the virtualenv of scripts/setup_cuda_env.sh)")
    args = parser.parse_args(argv)
    args.limits = dict(STAGE_LIMITS, **dict(args.limit))
    if args.budget_s is None:
        args.budget_s = sum(args.limits.values())
    if not args.budget_s > 0:
        parser.error("--budget-s must be positive")
    return args


def make_run_dir(out_dir: Path, now: datetime.datetime) -> Path:
    """A new directory out_dir/gpu_check_<UTC time>; a directory that exists already is an error, never reused."""
    run_dir = out_dir / f"gpu_check_{now.strftime('%Y%m%dT%H%M%SZ')}"
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise SystemExit(f"gpu_check: {run_dir} already exists: a run directory is never reused") from None
    return run_dir


def venv_python() -> Path:
    """The interpreter of the virtualenv that scripts/setup_cuda_env.sh makes (QUIETSTAR_VENV or .venv)."""
    return Path(os.environ.get("QUIETSTAR_VENV", REPO_ROOT / ".venv")) / "bin" / "python"


# ------------------------------------------------------------------------------------------------ stages


def default_stages(python: Path, run_dir: Path, limits: dict, given_python: bool) -> list[Stage]:
    """The check's stages in order, their commands writing under run_dir/<stage name>/."""
    py = str(python)
    out = {name: run_dir / name for name in STAGE_LIMITS}
    here = str(Path(__file__).resolve())
    environment = (
        [py, "-c", "import quietstar, torch; print('quietstar', quietstar.__version__, 'torch', torch.__version__)"]
        if given_python else ["bash", str(REPO_ROOT / "scripts" / "setup_cuda_env.sh")]
    )
    pytest = [py, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "cuda"]
    mistral = ["--preset", "mistral-7b", "--layers", str(MISTRAL_LAYERS), "--device", "cuda", "--dtype", "bf16"]
    stages = [
        Stage("environment", "virtualenv with a CUDA build of torch and the package", environment,
              limits["environment"]),
        Stage("device", "torch sees the CUDA device", [py, here, "probe", "device"], limits["device"],
              needs=("environment",), collect=lambda d, log: last_json_line(log)),
        Stage("cuda_tests", "the suite's CUDA tests (pytest -m cuda) but the kernel sweep",
              [*pytest, "-k", f"not {SWEEP_TEST}", "--junitxml", str(out["cuda_tests"] / "junit.xml"),
               *cuda_test_files()],
              limits["cuda_tests"], needs=("device",), collect=all_tests_ran),
        Stage("kernel_sweep", "Triton thought attention vs the torch implementation: bf16/fp16, d 64/128, GQA, "
              "p <= 16, odd L, padding, both dQ paths",
              [*pytest, "-k", SWEEP_TEST, "--junitxml", str(out["kernel_sweep"] / "junit.xml"),
               "tests/test_triton_attention.py"],
              limits["kernel_sweep"], needs=("device",), collect=all_tests_ran),
        Stage("flash_attn", "FA2 from a prebuilt wheel, FA3 if importable", [py, here, "probe", "flash_attn"],
              limits["flash_attn"], needs=("device",), collect=lambda d, log: last_json_line(log)),
        Stage("bench_attention", "attention fwd/bwd at Mistral 7B's heads vs SDPA, FA2/FA3, dense; vs predictions",
              [py, "benchmarks/bench_attention.py", "--preset", "mistral-7b",
               "--batches", *ATTENTION_SHAPES["batches"], "--lengths", *ATTENTION_SHAPES["lengths"],
               "--passes", *ATTENTION_SHAPES["passes"], "--providers", "triton", "dense", "sdpa_cudnn", "fa3", "fa2",
               "--out-dir", str(out["bench_attention"])],
              limits["bench_attention"], needs=("device",),
              collect=lambda d, log: attention_results(d, json.loads(PREDICTIONS.read_text()))),
        Stage("train_step", f"training step, {MISTRAL_LAYERS} layers of Mistral 7B, bf16, checkpointing, triton",
              [py, "benchmarks/bench_train_step.py", *mistral, "--attention-impl", "triton",
               "--activation-checkpointing", "--thought-lengths", "4", "8", "--fit-seq-len", "256",
               "--seq-lens", "256", "--sweep-thought-tokens", "8", "--time-seq-lens", "256", "--repeats", "2",
               "--out-dir", str(out["train_step"])],
              limits["train_step"], needs=("device",), collect=lambda d, log: train_step_results(d)),
        Stage("generate", f"generate() tokens/s thinking vs plain, {MISTRAL_LAYERS} layers of Mistral 7B, bf16",
              [py, "benchmarks/bench_generate.py", *mistral, "--thought-lengths", "3", "11", "--new-tokens", "16",
               "--repeats", "2",
               "--out-dir", str(out["generate"])],
              limits["generate"], needs=("device",), collect=lambda d, log: generate_results(d)),
        Stage("fsdp_nccl", "train.py under torchrun: NCCL, FSDP2, bf16, triton attention, checkpointing, 3 steps",
              [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py",
               "--config", "configs/tiny.yaml", "--output-dir", str(out["fsdp_nccl"] / "train"),
               "--train.device=cuda", "--train.param_dtype=bfloat16", "--train.activation_checkpointing=true",
               "--model.quietstar.attention_impl=triton", "--model.architecture.hidden_size=512",
               "--model.architecture.num_attention_heads=4", "--model.architecture.num_key_value_heads=1",
               "--train.max_steps=3", "--data.synthetic.n_documents=200",
               "--checkpoint.interval=3", "--logging.interval=1"],
              limits["fsdp_nccl"], needs=("device",), collect=lambda d, log: training_results(d / "train")),
    ]
    return stages


def cuda_test_files() -> list[str]:
    """The suite's test modules that mark tests `cuda` (collecting only those saves importing the others)."""
    return sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in path.read_text())


# ------------------------------------------------------------------------------------------------ running


def kill_group(process: subprocess.Popen) -> None:
    """SIGTERM a timed-out stage's process group (the stage and every process it started), SIGKILL what is left of
    it after a grace period, and reap the stage's process."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        process.wait()
        return
    try:
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:  # the group outlives its leader while any member is alive, so its id still names only this stage's group
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_stage(stage: Stage, run_dir: Path, deadline: float, env: dict) -> dict:
    """Run one stage until `deadline` (time.monotonic()) at the latest and return its record for the report."""
    record = dict(name=stage.name, description=stage.description, command=stage.command, limit_s=stage.limit_s,
                  log=f"{stage.name}.log")
    limit = max(deadline - time.monotonic(), 0.0)
    stage_dir = run_dir / stage.name
    stage_dir.mkdir(exist_ok=True)
    log_path = run_dir / record["log"]
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            process = subprocess.Popen(stage.command, cwd=REPO_ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            return record | dict(status="failed", reason=f"could not start: {error}", seconds=0.0)
        try:
            returncode = process.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(process)
            timed_out = True
    record |= dict(seconds=round(time.monotonic() - start, 1), effective_limit_s=round(limit, 1))
    if timed_out:
        record |= dict(status="timed_out", reason=f"timed out after {limit:.3g} s: killed, the rest of it skipped",
                       returncode=None)
    else:
        record |= dict(status="passed" if returncode == 0 else "failed", returncode=returncode)
        if returncode:
            record["reason"] = f"exit status {returncode}"
    log_text = log_path.read_text(errors="replace")
    if stage.collect is not None:
        try:
            record["results"] = stage.collect(stage_dir, log_text)
        except CheckFailed as error:
            if error.results is not None:
                record["results"] = error.results
            if record["status"] == "passed":
                record["status"] = "failed"
            record["reason"] = "; ".join(filter(None, [record.get("reason"), str(error)]))
        except Exception as error:  # a stage stopped early leaves partial or no output: say so, keep going
            record["results_error"] = f"{type(error).__name__}: {error}"
    if record["status"] != "passed":
        record["log_tail"] = log_text.splitlines()[-20:]
    return record


def run_stages(stages: list[Stage], run_dir: Path, budget_s: float, env: dict, selected=None,
               on_record: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Run the selected stages in order within budget_s; those not selected, or whose needs did not pass, are
    skipped. on_record(records) is called after each stage (to rewrite the report).

    Stage i may run until the start time plus the limits of stages 1..i (and never past budget_s): its own limit,
    plus whatever the stages before it left unused, so that time a quick stage saves goes to the next one and no
    stage gets less than its own limit (less the kill grace of an earlier stage that timed out).
    """
    start = time.monotonic()
    slot_end, budget_end = start, start + budget_s
    records, status = [], {}
    for stage in stages:
        slot_end += stage.limit_s
        unmet = [need for need in stage.needs if status.get(need) != "passed"]
        budget_left = budget_end - time.monotonic()
        if selected is not None and stage.name not in selected:
            record = dict(name=stage.name, description=stage.description, status="skipped",
                          reason="not selected (--stages)")
        elif unmet:
            record = dict(name=stage.name, description=stage.description, status="skipped",
                          reason=f"not started: {', '.join(unmet)} did not pass")
        elif budget_left < MIN_STAGE_S:
            record = dict(name=stage.name, description=stage.description, status="skipped",
                          reason=f"not started: {max(budget_left, 0):.0f} s left in the overall budget")
        else:
            record = run_stage(stage, run_dir, min(slot_end, budget_end), env)
        status[stage.name] = record["status"]
        records.append(record)
        if on_record is not None:
            on_record(records)
    return records


# ------------------------------------------------------------------------------------------------ collectors


def last_json_line(log: str) -> dict:
    """The last line of a stage's output that is a JSON object (what the probes print)."""
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("the stage printed no JSON line")


def pytest_results(stage_dir: Path, log: str) -> dict:
    """Outcome per test: from pytest's JUnit XML, or from its verbose lines when it was stopped before writing it."""
    xml = stage_dir / "junit.xml"
    tests = []
    if xml.exists():
        source = "junit.xml"
        for case in ElementTree.parse(xml).iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    message = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else ""
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            tests.append(dict(name=name, outcome=outcome, seconds=float(case.get("time") or 0), message=message))
    else:
        source = "log (pytest was stopped before writing its XML report)"
        for line in log.splitlines():
            parts = line.split()
            if len(parts) >= 2 and "::" in parts[0] and parts[1] in PYTEST_OUTCOMES:
                tests.append(dict(name=parts[0], outcome=PYTEST_OUTCOMES[parts[1]], seconds=None, message=""))
    return dict(source=source, counts=dict(collections.Counter(t["outcome"] for t in tests)), tests=tests)


def all_tests_ran(stage_dir: Path, log: str) -> dict:
    """pytest_results, failing the stage when no test ran or one was skipped: with a GPU, no CUDA test may skip."""
    results = pytest_results(stage_dir, log)
    skipped = results["counts"].get("skipped", 0)
    if not results["tests"]:
        raise CheckFailed("no test ran", results)
    if skipped:
        raise CheckFailed(f"{skipped} test(s) skipped on the GPU machine", results)
    return results


PYTEST_OUTCOMES = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped",
                   "XFAIL": "xfailed", "XPASS": "xpassed"}


def hardware_of(device_name: str) -> str | None:
    """The hardware name of the committed predictions that `device_name` is ("H100", "H200"), or None."""
    return next((hw for hw in ("H100", "H200") if hw in device_name.upper()), None)


def attention_results(stage_dir: Path, kernel_report: dict) -> dict:
    """bench_attention's rows, each triton row with its time over the committed prediction at the same (B, L, p)
    on the same hardware, and the measured rooflines over the predicted ones."""
    (path,) = sorted(stage_dir.glob("attention_*.json"))
    report = json.loads(path.read_text())
    hardware = hardware_of(report["meta"]["device"])
    predicted = {(p["batch"], p["L"], p["p"]): p for p in kernel_report["predictions"] if p["hardware"] == hardware}
    keys = ("provider", "B", "L", "p", "fwd_ms", "bwd_ms", "fwd_tflops", "bwd_tflops", "peak_mem_MiB",
            "fwd_vs_roofline", "bwd_vs_roofline", "error")
    rows = []
    for row in report["results"]:
        entry = {k: row[k] for k in keys if k in row}
        prediction = predicted.get((row["B"], row["L"], row["p"]))
        if row["provider"] == "triton" and prediction is not None and "error" not in row:
            entry |= dict(predicted_fwd_ms=prediction["fwd_ms"], predicted_bwd_ms=prediction["bwd_ms"],
                          fwd_vs_predicted=row["fwd_ms"] / prediction["fwd_ms"],
                          bwd_vs_predicted=row["bwd_ms"] / prediction["bwd_ms"])
        rows.append(entry)
    rooflines = []
    for roof in report["roofline"]:
        prediction = predicted.get((roof["B"], roof["L"], roof["p"]))
        entry = dict(B=roof["B"], L=roof["L"], p=roof["p"], fwd_ms=roof["fwd_ms"], bwd_ms=roof["bwd_ms"])
        if prediction is not None:
            entry |= dict(predicted_fwd_ms=prediction["roofline_fwd_ms"], predicted_bwd_ms=prediction["roofline_bwd_ms"],
                          fwd_vs_predicted=roof["fwd_ms"] / prediction["roofline_fwd_ms"],
                          bwd_vs_predicted=roof["bwd_ms"] / prediction["roofline_bwd_ms"])
        rooflines.append(entry)
    return dict(source=path.name, complete=report.get("complete", True), device=report["meta"]["device"],
                predictions_for=hardware,
                copy_bandwidth_GBps=report["meta"]["copy_bandwidth_GBps"], skipped_providers=report["skipped"],
                rows=rows, rooflines=rooflines)


def train_step_results(stage_dir: Path) -> dict:
    """Step time and ratio to P plain steps, and the CUDA memory of each measured row (bytes)."""
    (path,) = sorted(stage_dir.glob("train_step_*.json"))
    report = json.loads(path.read_text())
    memory_keys = ("n_thought_tokens", "passes", "seq_len", "status", "cuda_max_allocated_bytes", "cuda_peak_bytes",
                   "union_bytes", "plain_step_saved_bytes")
    time_keys = ("n_thought_tokens", "passes", "seq_len", "status", "quietstar_seconds", "plain_seconds", "ratio")
    memory = [{k: r[k] for k in memory_keys if k in r} for r in report["memory"] if r["study"] == "thought_length"]
    return dict(source=path.name, meta={k: report["meta"][k] for k in
                                        ("device", "model", "batch", "n_thoughts", "n_ahead_talk", "dtype",
                                         "attention_impl", "activation_checkpointing")},
                time=[{k: r[k] for k in time_keys if k in r} for r in report["time"]], memory=memory)


def generate_results(stage_dir: Path) -> dict:
    (path,) = sorted(stage_dir.glob("generate_*.json"))
    report = json.loads(path.read_text())
    return dict(source=path.name, device=report["device"], parameters=report["model"]["parameters"],
                settings=report["settings"], results=report["results"])


def training_results(train_dir: Path) -> dict:
    """Losses per logged step of the torchrun job and the checkpoints and export it wrote; a non-finite loss, no
    logged step, or no checkpoint fails the stage."""
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    results = dict(losses={r["step"]: r["loss"] for r in records if "loss" in r},
                   checkpoints=sorted(p.name for p in (train_dir / "checkpoints").glob("step_*")),
                   final_export=(train_dir / "final").is_dir())
    bad = [step for step, loss in results["losses"].items() if not math.isfinite(loss)]
    if not results["losses"]:
        raise CheckFailed(f"no loss logged in {train_dir / 'metrics.jsonl'}", results)
    if bad:
        raise CheckFailed(f"non-finite loss at steps {bad}", results)
    if not results["checkpoints"]:
        raise CheckFailed(f"no checkpoint in {train_dir / 'checkpoints'}", results)
    return results


# ------------------------------------------------------------------------------------------------ probes


def probe_device() -> int:
    """Print the CUDA device and library versions as one JSON line; one line and exit 1 when torch sees none."""
    import torch  # the stage's interpreter has it; the driver does not need it

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible to torch {torch.__version__} (built with CUDA {torch.version.cuda})")
        return 1
    import transformers
    import triton

    props = torch.cuda.get_device_properties(0)
    print(json.dumps(dict(
        device=props.name, capability=f"{props.major}.{props.minor}", memory_GiB=round(props.total_memory / 2**30, 1),
        multiprocessors=props.multi_processor_count, devices=torch.cuda.device_count(), torch=torch.__version__,
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), triton=triton.__version__,
        transformers=transformers.__version__, python=sys.version.split()[0],
    )))
    return 0


def probe_flash_attn() -> int:
    """Try a prebuilt flash-attn (FA2) wheel, without dependencies (torch stays as it is) and without compiling (its
    source build takes far longer than the check); report which FlashAttention modules import."""
    import importlib
    import importlib.util

    attempt = None
    if importlib.util.find_spec("flash_attn") is None:
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--retries", "0",
                   "--timeout", "10", "flash-attn"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            print(result.stdout[-2000:], result.stderr[-2000:], sep="\n")
            output = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
            attempt = dict(command=" ".join(command[1:]), returncode=result.returncode, last_line=output)
        except subprocess.TimeoutExpired:
            attempt = dict(command=" ".join(command[1:]), returncode=None,
                           last_line=[f"no answer from the package index within {PIP_TIMEOUT_S:.0f} s"])
    modules = {}
    for label, module in (("fa2", "flash_attn"), ("fa3", "flash_attn_interface")):
        try:
            imported = importlib.import_module(module)
            modules[label] = dict(module=module, installed=True, version=getattr(imported, "__version__", None))
        except Exception as error:  # not installed, or installed but built for another torch/CUDA
            modules[label] = dict(module=module, installed=False, reason=f"{type(error).__name__}: {error}"[:300])
    print(json.dumps(dict(pip_attempt=attempt, **modules)))
    return 0


PROBES = {"device": probe_device, "flash_attn": probe_flash_attn}


# ------------------------------------------------------------------------------------------------ report


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def summary_counts(records: list[dict]) -> dict:
    return dict(collections.Counter(r["status"] for r in records))


def markdown_report(report: dict) -> str:
    counts = report["summary"]
    device = report.get("device") or {}
    lines = [
        f"# GPU check: {device.get('device', 'no CUDA device seen')}",
        "",
        ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items()) + f" of {len(report['stages'])} "
        f"stages, in {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget; started {report['started']}; "
        f"quietstar {report['revision']}.",
    ]
    if device:
        lines.append(f"Compute capability {device.get('capability')}, {device.get('memory_GiB')} GiB; torch "
                     f"{device.get('torch')} (CUDA {device.get('cuda')}, cuDNN {device.get('cudnn')}), triton "
                     f"{device.get('triton')}, transformers {device.get('transformers')}, Python {device.get('python')}.")
    lines += ["", "| stage | status | s | limit s | checks | note |", "|---|---|---|---|---|---|"]
    for r in report["stages"]:
        note = r.get("reason", "") or r.get("results_error", "")
        lines.append(f"| {r['name']} | {r['status'].replace('_', ' ')} | {_fmt(r.get('seconds'))} | "
                     f"{_fmt(r.get('effective_limit_s', r.get('limit_s')))} | {r['description']} | {note} |")
    for r in report["stages"]:
        section = STAGE_SECTIONS.get(r["name"])
        try:
            body = section(r["results"]) if section and r.get("results") else []
        except (KeyError, TypeError, ValueError) as error:  # results of an unexpected shape must not stop the run
            body = [f"(results not rendered: {type(error).__name__}: {error}; see report.json)"]
        if body or r.get("log_tail"):
            lines += ["", f"## {r['name']}: {r['status'].replace('_', ' ')}", ""]
        lines += body
        if r.get("log_tail"):
            lines += [""] * bool(body) + [f"Last lines of {r['log']}:", "", "```", *r["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def _tests_section(results: dict) -> list[str]:
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(results["counts"].items()))
    lines = [f"{counts} (from {results['source']}).", "", "| test | outcome | s | message |", "|---|---|---|---|"]
    order = {"failed": 0, "error": 1, "xpassed": 2, "passed": 3, "xfailed": 4, "skipped": 5}
    for test in sorted(results["tests"], key=lambda t: order.get(t["outcome"], 9)):
        lines.append(f"| `{test['name']}` | {test['outcome']} | {_fmt(test['seconds'])} | "
                     f"{test['message'].replace('|', '/')} |")
    return lines


def _attention_section(results: dict) -> list[str]:
    skipped = "; ".join(f"{p}: {why}" for p, why in results["skipped_providers"].items()) or "none"
    lines = [
        ("" if results["complete"] else "Stopped before the sweep ended: the rows measured so far, no rooflines. ")
        + f"{results['device']}, copy bandwidth {results['copy_bandwidth_GBps']:.0f} GB/s; predictions "
        f"(benchmarks/results/kernel_report.json) for {results['predictions_for'] or 'no committed hardware'}. "
        f"Skipped providers: {skipped}. Causal peers have p = 0; meas/pred = measured time over the predicted time.",
        "",
        "| B | L | p | provider | fwd ms | bwd ms | fwd TFLOP/s | bwd TFLOP/s | fwd meas/pred | bwd meas/pred "
        "| fwd / roof | bwd / roof | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "error" in row:
            lines.append(f"| {row['B']} | {row['L']} | {row['p']} | {row['provider']} | {row['error']} "
                         "| | | | | | | | |")
            continue
        cells = [row["B"], row["L"], row["p"], row["provider"], row["fwd_ms"], row["bwd_ms"], row["fwd_tflops"],
                 row["bwd_tflops"], row.get("fwd_vs_predicted"), row.get("bwd_vs_predicted"),
                 row.get("fwd_vs_roofline"), row.get("bwd_vs_roofline"), row.get("peak_mem_MiB")]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if results["rooflines"]:
        lines += ["", "| B | L | p | roofline fwd ms | predicted | meas/pred | roofline bwd ms | predicted | meas/pred |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for roof in results["rooflines"]:
            cells = [roof["B"], roof["L"], roof["p"], roof["fwd_ms"], roof.get("predicted_fwd_ms"),
                     roof.get("fwd_vs_predicted"), roof["bwd_ms"], roof.get("predicted_bwd_ms"),
                     roof.get("bwd_vs_predicted")]
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines


def _train_step_section(results: dict) -> list[str]:
    meta = results["meta"]
    lines = [
        f"{meta['device']}; {meta['model']['num_hidden_layers']} layers of hidden {meta['model']['hidden_size']}, "
        f"B={meta['batch']}, N={meta['n_thoughts']}, A={meta['n_ahead_talk']}, {meta['dtype']}, attention "
        f"{meta['attention_impl']}, activation checkpointing {meta['activation_checkpointing']}.",
        "",
        "| T | P | L | Quiet-STaR step s | plain step s | step / (P x plain) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["time"]:
        lines.append(f"| {r['n_thought_tokens']} | {r['passes']} | {r['seq_len']} | "
                     + (" | ".join(_fmt(r.get(k)) for k in ("quietstar_seconds", "plain_seconds", "ratio"))
                        if r["status"] == "ok" else f"{r['status']} | |") + " |")
    lines += ["", "| T | P | L | max_memory_allocated GiB | peak above weights GiB | saved + K/V store GiB |",
              "|---|---|---|---|---|---|"]
    for r in results["memory"]:
        lines.append(f"| {r['n_thought_tokens']} | {r['passes']} | {r['seq_len']} | "
                     + (f"{_gib(r.get('cuda_max_allocated_bytes'))} | {_gib(r.get('cuda_peak_bytes'))} | "
                        f"{_gib(r.get('union_bytes'))}" if r["status"] == "ok" else f"{r['status']} | |") + " |")
    return lines


def _generate_section(results: dict) -> list[str]:
    settings = results["settings"]
    lines = [f"{results['device']}; {results['parameters'] / 1e6:.0f} M parameters, {settings['dtype']}, batch "
             f"{settings['batch_size']}, prompt {settings['prompt_length']}, {settings['new_tokens']} new tokens.",
             "", "| thinking | n_thought_tokens | tokens/s | model calls per token | slowdown |", "|---|---|---|---|---|"]
    for r in results["results"]:
        lines.append(f"| {'yes' if r['thinking'] else 'no'} | {_fmt(r['n_thought_tokens'])} | {r['tokens_per_s']:.1f} "
                     f"| {r['model_calls_per_token']:.1f} | {_fmt(r.get('slowdown', 1.0))} |")
    return lines


def _training_section(results: dict) -> list[str]:
    losses = ", ".join(f"step {step}: {loss:.4f}" for step, loss in results["losses"].items())
    return [f"Losses {losses or 'none'}; checkpoints {', '.join(results['checkpoints']) or 'none'}; final export "
            f"{'written' if results['final_export'] else 'missing'}."]


def _flash_attn_section(results: dict) -> list[str]:
    lines = []
    if results.get("pip_attempt"):
        attempt = results["pip_attempt"]
        lines.append(f"`{attempt['command']}` exited {attempt['returncode']}: {' '.join(attempt['last_line'])}")
    for label in ("fa2", "fa3"):
        info = results[label]
        lines.append(f"- {label} (`{info['module']}`): " + (f"installed, version {info['version']}" if info["installed"]
                                                           else f"not available ({info['reason']})"))
    return lines


STAGE_SECTIONS = {
    "cuda_tests": _tests_section,
    "kernel_sweep": _tests_section,
    "flash_attn": _flash_attn_section,
    "bench_attention": _attention_section,
    "train_step": _train_step_section,
    "generate": _generate_section,
    "fsdp_nccl": _training_section,
}


def write_report(run_dir: Path, report: dict) -> None:
    """report.json and report.md in run_dir (rewritten whole each time)."""
    (run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (run_dir / "report.md").write_text(markdown_report(report))


def git_revision() -> str:
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        if len(argv) != 2 or argv[1] not in PROBES:
            raise SystemExit(f"usage: gpu_check.py probe {{{','.join(PROBES)}}}")
        return PROBES[argv[1]]()
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.monotonic()
    run_dir = make_run_dir(args.out_dir, started)
    python = args.python.absolute() if args.python else venv_python()  # absolute, not resolved: a venv's python is a link
    stages = default_stages(python, run_dir, args.limits, given_python=args.python is not None)
    report = dict(check="gpu_check", started=started.isoformat(timespec="seconds"), revision=git_revision(),
                  budget_s=args.budget_s, python=str(python), run_dir=str(run_dir), device=None, stages=[],
                  summary={}, elapsed_s=0.0)

    def update(records: list[dict]) -> None:
        device = next((r for r in records if r["name"] == "device" and r["status"] == "passed"), None)
        report.update(stages=records, summary=summary_counts(records), elapsed_s=round(time.monotonic() - start, 1),
                      device=device.get("results") if device else None)
        write_report(run_dir, report)

    print(f"gpu_check: writing {run_dir}/report.{{json,md}}", flush=True)
    records = run_stages(stages, run_dir, args.budget_s, {**os.environ, **STAGE_ENV},
                         selected=set(ALWAYS_RUN) | set(args.stages), on_record=update)
    print(markdown_report(report))
    print(f"gpu_check: report in {run_dir}/report.md")
    return 0 if all(r["status"] == "passed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
