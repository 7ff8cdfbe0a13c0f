"""Output directories are never reused by accident, and `metrics.jsonl` holds every step once after a resume."""

import json
from pathlib import Path

import pytest
from scripts import load_script

from quietstar.training import metrics as metrics_module
from quietstar.training.metrics import truncate_metrics
from quietstar.training.run_directory import (
    RUN_MARKERS,
    RunDirectoryError,
    check_output_dir,
    clear_generated_corpus,
    clear_run,
)

REPO = Path(__file__).resolve().parents[1]


def _train_module():
    return load_script(REPO / "train.py", "train_entry")


def _fake_run(directory: Path) -> None:
    """The files a finished run leaves, plus a file of the user's."""
    (directory / "checkpoints" / "step_00000004" / "state").mkdir(parents=True)
    (directory / "final").mkdir()
    (directory / "final" / "config.json").write_text("{}")
    (directory / "wandb").mkdir()
    (directory / "synthetic_corpus").mkdir()
    (directory / "config.yaml").write_text("output_dir: old\n")
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)))
    (directory / "notes.txt").write_text("mine")


def test_a_new_or_empty_directory_is_accepted(tmp_path):
    check_output_dir(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "synthetic_corpus").mkdir()  # a generated corpus alone is not a run
    check_output_dir(tmp_path, resume=False, overwrite=False)


@pytest.mark.parametrize("marker", RUN_MARKERS)
def test_a_directory_with_a_run_is_refused_without_a_flag(tmp_path, marker):
    target = tmp_path / marker
    target.mkdir() if marker in ("checkpoints", "final") else target.write_text("")
    with pytest.raises(RunDirectoryError) as error:
        check_output_dir(tmp_path, resume=False, overwrite=False)
    message = str(error.value)
    assert message == (
        f"output directory {tmp_path} already holds a run ({marker}): pass --resume to continue it or --overwrite to "
        "delete it and start again"
    )
    check_output_dir(tmp_path, resume=True, overwrite=False)
    check_output_dir(tmp_path, resume=False, overwrite=True)


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(RunDirectoryError, match=r"--resume and --overwrite exclude each other"):
        check_output_dir(tmp_path, resume=True, overwrite=True)


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(RunDirectoryError, match=r"output directory .*out exists and is not a directory"):
        check_output_dir(tmp_path / "out", resume=False, overwrite=False)


def test_overwrite_deletes_the_run_and_keeps_other_files(tmp_path):
    _fake_run(tmp_path)
    assert clear_run(tmp_path) == ["config.yaml", "metrics.jsonl", "checkpoints", "final", "wandb"]
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt", "synthetic_corpus"}
    check_output_dir(tmp_path, resume=False, overwrite=False)
    assert clear_generated_corpus(tmp_path) == ["synthetic_corpus"]
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt"}
    assert clear_run(tmp_path) == [] and clear_generated_corpus(tmp_path) == []


def test_refused_start_leaves_the_directory_as_it_was(tmp_path):
    _fake_run(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        _train_module().main(["--output-dir", str(tmp_path), "--train.max_steps=2"])
    assert exit_info.value.code == (
        f"train.py: error: output directory {tmp_path} already holds a run (config.yaml, metrics.jsonl, checkpoints, "
        "final): pass --resume to continue it or --overwrite to delete it and start again"
    )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_config_error_does_not_touch_config_yaml(tmp_path):
    _fake_run(tmp_path)
    with pytest.raises(SystemExit, match=r"unknown config key 'train\.nope'"):
        _train_module().main(["--output-dir", str(tmp_path), "--resume", "--train.nope=1"])
    assert (tmp_path / "config.yaml").read_text() == "output_dir: old\n"


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_start_that_fails_after_set_up_began_does_not_touch_the_run(tmp_path, flag):
    # The data source is opened after the process group and the tokenizer: a later failure, still one line, and the
    # run in the directory is still whole, even with --overwrite.
    _fake_run(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        _train_module().main(
            [
                "--output-dir",
                str(tmp_path),
                flag,
                "--data.sources.0.path=json",
                f"--data.sources.0.data_files={missing}",
            ]
        )
    message = exit_info.value.code
    assert message.startswith("train.py: error: data.sources.0.data_files") and str(missing) in message
    assert "\n" not in message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_truncate_metrics_keeps_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": float(s)}) for s in (1, 2, 3, 4, 5)]
    path.write_text("\n".join(lines) + '\n{"step": 6, "lo')  # the last record was cut short by a kill
    assert truncate_metrics(path, 3) == 3
    assert path.read_text() == "\n".join(lines[:3]) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left
    assert truncate_metrics(path, 3) == 0 and path.read_text() == "\n".join(lines[:3]) + "\n"
    assert truncate_metrics(path, 0) == 3 and path.read_text() == ""
    assert truncate_metrics(tmp_path / "missing.jsonl", 3) == 0


def test_truncate_metrics_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    original = "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3))
    path.write_text(original)

    def crash(*args):
        raise OSError("crashed before the rename")

    monkeypatch.setattr(metrics_module.os, "replace", crash)
    with pytest.raises(OSError, match="crashed before the rename"):
        truncate_metrics(path, 1)
    assert path.read_text() == original  # the old file stays whole until the new one is renamed over it
    monkeypatch.undo()
    truncate_metrics(path, 1)
    assert path.read_text() == json.dumps({"step": 1}) + "\n"
