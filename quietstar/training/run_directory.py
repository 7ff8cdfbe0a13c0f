"""The output directory of a run: what shows that it holds a run, refusing to reuse one by accident, clearing one.

A directory holds a run when it has any of `RUN_MARKERS`. Training starts in it only with `--resume` (continue that
run) or `--overwrite` (delete it first); anything else would mix two runs' metrics, checkpoints and final model.
"""

import shutil
from pathlib import Path
from ..errors import UserError

# Written by every run; one of them is enough to call the directory a run's.
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "final")
# The changes made to the run's config by resumes (see `resume.py`).
CONFIG_CHANGES = "config_changes.jsonl"
# What else a run writes there: temporary and replaced copies of the final export, `metrics.jsonl` and `config.yaml`,
# wandb's files, the record of config changes.
_RUN_EXTRAS = (".tmp-final", ".old-final", ".tmp-metrics.jsonl", ".tmp-config.yaml", "wandb", CONFIG_CHANGES)
# The generated corpus at its default place (`data.synthetic.directory: null`), and its copy while being written.
_DEFAULT_SYNTHETIC_CORPUS = ("synthetic_corpus", ".tmp-synthetic_corpus")


def existing_run(output_dir: str | Path) -> list[str]:
    """The `RUN_MARKERS` present in `output_dir` (empty when it holds no run or does not exist)."""
    return [name for name in RUN_MARKERS if (Path(output_dir) / name).exists()]


def check_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Raise `UserError` unless training may start in `output_dir`: it holds no run, or `resume` or
    `overwrite` (not both) says what to do with the one it holds."""
    output_dir = Path(output_dir)
    if resume and overwrite:
        raise UserError(
            f"--resume and --overwrite exclude each other: --resume continues the run in {output_dir}, --overwrite "
            "deletes it"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output directory {output_dir} exists and is not a directory")
    found = existing_run(output_dir)
    if found and not (resume or overwrite):
        raise UserError(
            f"output directory {output_dir} already holds a run ({', '.join(found)}): pass --resume to continue it "
            "or --overwrite to delete it and start again"
        )


def clear_run(output_dir: str | Path) -> list[str]:
    """Delete the run's files in `output_dir` (`RUN_MARKERS`, temporary copies, wandb) and return the names deleted.
    Other files are left alone."""
    return _delete(output_dir, (*RUN_MARKERS, *_RUN_EXTRAS))


def clear_generated_corpus(output_dir: str | Path) -> list[str]:
    """Delete the generated corpus at its default place, `<output_dir>/synthetic_corpus`; return the names deleted."""
    return _delete(output_dir, _DEFAULT_SYNTHETIC_CORPUS)


def _delete(output_dir: str | Path, names: tuple[str, ...]) -> list[str]:
    deleted = []
    for name in names:
        path = Path(output_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(name)
    return deleted
