"""Output directories are never reused by accident, and `metrics.jsonl` holds every step once after a resume."""

import importlib
import json
from pathlib import Path

import pytest
import yaml
from tiny_checkpoint import save_tiny_base_checkpoint

from quietstar.training import metrics as metrics_module
from quietstar.training.config import config_to_dict, load_config
from quietstar.training.metrics import truncate_metrics
from quietstar.training.resume import ConfigChange, check_resume, config_changes, is_run_setting
from quietstar.errors import UserError
from quietstar.training.run_directory import (
    RUN_MARKERS,
    check_output_dir,
    clear_generated_corpus,
    clear_run,
)

REPO = Path(__file__).resolve().parents[1]


def _train_module():
    return importlib.import_module("quietstar.training.loop")


def _user_error(capsys, argv: list[str]) -> str:
    """Run train.py's `main(argv)`, which must stop on a user error: exit status 2 and one line on stderr, returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _train_module().main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _fake_run(directory: Path) -> None:
    """The files a finished run of the tiny config leaves, plus a file of the user's."""
    (directory / "checkpoints" / "step_00000004" / "state").mkdir(parents=True)
    (directory / "final").mkdir()
    (directory / "final" / "config.json").write_text("{}")
    (directory / "wandb").mkdir()
    (directory / "synthetic_corpus").mkdir()
    config = load_config(REPO / "configs" / "tiny.yaml", [f"output_dir={directory}", "train.max_steps=4"])
    (directory / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)))
    (directory / "config_changes.jsonl").write_text(json.dumps({"step": 2, "field": "train.lr", "old": 1, "new": 2}))
    (directory / "notes.txt").write_text("mine")


def test_a_new_or_empty_directory_is_accepted(tmp_path):
    check_output_dir(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "synthetic_corpus").mkdir()  # a generated corpus alone is not a run
    check_output_dir(tmp_path, resume=False, overwrite=False)


@pytest.mark.parametrize("marker", RUN_MARKERS)
def test_a_directory_with_a_run_is_refused_without_a_flag(tmp_path, marker):
    target = tmp_path / marker
    target.mkdir() if marker in ("checkpoints", "final") else target.write_text("")
    with pytest.raises(UserError) as error:
        check_output_dir(tmp_path, resume=False, overwrite=False)
    message = str(error.value)
    assert message == (
        f"output directory {tmp_path} already holds a run ({marker}): pass --resume to continue it or --overwrite to "
        "delete it and start again"
    )
    check_output_dir(tmp_path, resume=True, overwrite=False)
    check_output_dir(tmp_path, resume=False, overwrite=True)


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(UserError, match=r"--resume and --overwrite exclude each other"):
        check_output_dir(tmp_path, resume=True, overwrite=True)


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(UserError, match=r"output directory .*out exists and is not a directory"):
        check_output_dir(tmp_path / "out", resume=False, overwrite=False)


def test_overwrite_deletes_the_run_and_keeps_other_files(tmp_path):
    _fake_run(tmp_path)
    deleted = ["config.yaml", "metrics.jsonl", "checkpoints", "final", "wandb", "config_changes.jsonl"]
    assert clear_run(tmp_path) == deleted
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt", "synthetic_corpus"}
    check_output_dir(tmp_path, resume=False, overwrite=False)
    assert clear_generated_corpus(tmp_path) == ["synthetic_corpus"]
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt"}
    assert clear_run(tmp_path) == [] and clear_generated_corpus(tmp_path) == []


def test_refused_start_leaves_the_directory_as_it_was(capsys, tmp_path):
    _fake_run(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert _user_error(capsys, ["--output-dir", str(tmp_path), "--train.max_steps=2"]) == (
        f"train.py: error: output directory {tmp_path} already holds a run (config.yaml, metrics.jsonl, checkpoints, "
        "final): pass --resume to continue it or --overwrite to delete it and start again"
    )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_config_error_does_not_touch_config_yaml(capsys, tmp_path):
    _fake_run(tmp_path)
    before = (tmp_path / "config.yaml").read_text()
    message = _user_error(capsys, ["--output-dir", str(tmp_path), "--resume", "--train.nope=1"])
    assert "unknown config key 'train.nope'" in message
    assert (tmp_path / "config.yaml").read_text() == before


@pytest.mark.parametrize("flags", [["--resume", "--allow-config-change"], ["--overwrite"]])
def test_a_start_that_fails_after_set_up_began_does_not_touch_the_run(capsys, tmp_path, flags):
    # The data source is opened after the process group and the tokenizer: a later failure, still one line, and the
    # run in the directory is still whole, even with --overwrite, or --resume with new settings (a longer run, other
    # data).
    _fake_run(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    missing = tmp_path / "missing.jsonl"
    message = _user_error(
        capsys,
        [
            "--output-dir",
            str(tmp_path),
            *flags,
            "--train.max_steps=8",
            "--data.sources.0.path=json",
            f"--data.sources.0.data_files={missing}",
        ],
    )
    assert message.startswith("train.py: error: data.sources.0.data_files") and str(missing) in message
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


TINY = REPO / "configs" / "tiny.yaml"


def _run_of(directory: Path, *overrides: str, step: int, final: bool) -> None:
    """The files of a run in `directory` trained with the tiny config and `overrides` up to a checkpoint at `step`."""
    config = load_config(TINY, [f"output_dir={directory}", *overrides])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    (directory / "checkpoints" / f"step_{step:08d}" / "state").mkdir(parents=True)
    if final:
        (directory / "final").mkdir()


def _files(directory: Path) -> dict:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_config_changes_name_each_field_with_old_and_new_values():
    old = {"output_dir": "a", "model": {"quietstar": {"n_thoughts": 2}}, "data": {"sources": [{"path": "x", "p": 1}]},
           "checkpoint": {"resume": False}}
    new = {"output_dir": "b", "model": {"quietstar": {"n_thoughts": 4, "n_thought_tokens": 8}},
           "data": {"sources": [{"path": "x", "p": 0.5}]}, "checkpoint": {"resume": True}}
    changes = config_changes(old, new)
    assert changes == [
        ConfigChange("model.quietstar.n_thoughts", 2, 4),
        ConfigChange("model.quietstar.n_thought_tokens", new=8),
        ConfigChange("data.sources.0.p", 1, 0.5),
    ]
    assert [change.describe() for change in changes] == [
        "model.quietstar.n_thoughts 2 -> 4", "model.quietstar.n_thought_tokens unset -> 8", "data.sources.0.p 1 -> 0.5"
    ]
    assert changes[1].record(20) == {"step": 20, "field": "model.quietstar.n_thought_tokens", "new": 8}
    two_sources = {"checkpoint": {}, "data": {"sources": [{"path": "x"}, {"path": "y"}]}}
    assert config_changes(old, two_sources) == [
        ConfigChange("model", old["model"]),
        ConfigChange("data.sources", old["data"]["sources"], two_sources["data"]["sources"]),
    ]


def test_resume_refuses_changed_settings_naming_them_and_leaves_the_run_as_it_was(capsys, tmp_path):
    _run_of(tmp_path, step=20, final=False)
    before = _files(tmp_path)
    message = _user_error(
        capsys, ["--output-dir", str(tmp_path), "--resume", "--model.quietstar.n_thought_tokens=8", "--data.seq_len=32"]
    )
    assert message == (
        f"train.py: error: --resume with settings that differ from those of the run in {tmp_path} (its config.yaml): "
        "model.quietstar.n_thought_tokens 4 -> 8, data.seq_len 48 -> 32; resume with the run's settings, or pass "
        "--allow-config-change to change them from step 20 on (recorded in config_changes.jsonl)"
    )
    assert _files(tmp_path) == before
    message = _user_error(capsys, ["--output-dir", str(tmp_path / "new"), "--allow-config-change"])
    assert message == "train.py: error: --allow-config-change only applies with --resume"
    assert not (tmp_path / "new").exists()


def test_what_a_resume_may_change_freely(tmp_path):
    _run_of(tmp_path, step=20, final=False)
    carried_out = [
        "train.device=auto", "train.activation_checkpointing=true", "train.reshard_after_forward=false",
        "model.quietstar.attention_impl=triton", "model.quietstar.lm_head_chunk_size=64", "checkpoint.interval=5",
        "checkpoint.keep_last=3", "checkpoint.export_dtype=bfloat16", "logging.interval=2", "logging.wandb_mode=offline",
    ]
    config = load_config(TINY, [f"output_dir={tmp_path}", "checkpoint.resume=true", *carried_out])
    resumption = check_resume(config, allow_config_change=False)
    assert resumption.step == 20 and not resumption.finished
    assert sorted(f"{change.field}={change.new}".lower() for change in resumption.changes) == sorted(carried_out)
    # The tiny config's cosine schedule decays to 0 at train.max_steps: changing it changes every later learning rate.
    longer = load_config(TINY, [f"output_dir={tmp_path}", "checkpoint.resume=true", "train.max_steps=90"])
    assert is_run_setting(ConfigChange("train.max_steps", 60, 90), longer)
    with pytest.raises(UserError, match=r"differ from those of the run .*: train\.max_steps 60 -> 90;"):
        check_resume(longer, allow_config_change=False)
    assert check_resume(longer, allow_config_change=True).changes == [ConfigChange("train.max_steps", 60, 90)]
    # With a constant learning rate it only makes the run longer or shorter.
    constant = tmp_path / "constant"
    _run_of(constant, "train.lr_schedule=constant", step=20, final=False)
    longer = load_config(TINY, [f"output_dir={constant}", "checkpoint.resume=true", "train.lr_schedule=constant",
                                "train.max_steps=90"])
    assert check_resume(longer, allow_config_change=False).changes == [ConfigChange("train.max_steps", 60, 90)]


def test_resuming_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys):
    _run_of(tmp_path, step=60, final=True)
    before = _files(tmp_path)
    assert _train_module().main(["--output-dir", str(tmp_path), "--resume"]) is None  # exit status 0
    assert capsys.readouterr().out == (
        f"train.py: the run in {tmp_path} is finished: its latest checkpoint is at step 60 of train.max_steps=60 and "
        f"{tmp_path / 'final'} holds the trained model; nothing to do (raise train.max_steps to train further)\n"
    )
    assert _files(tmp_path) == before
    # Killed after its last checkpoint, before the final export: the export is still to do.
    (tmp_path / "final").rmdir()
    config = load_config(TINY, [f"output_dir={tmp_path}", "checkpoint.resume=true"])
    assert not check_resume(config, allow_config_change=False).finished


def test_a_start_that_fails_on_the_model_leaves_no_output_directory(capsys, tmp_path):
    # A base checkpoint with truncated weights: found while the model is built (after the tokenizer); the tiny
    # config's generated corpus, which goes into the output directory, waits until then.
    base = save_tiny_base_checkpoint(tmp_path / "llama")
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    message = _user_error(
        capsys, ["--output-dir", str(tmp_path / "run"), f"--model.name_or_path={base}", "--model.architecture={}"]
    )
    assert message.startswith(f"train.py: error: {weights} is truncated")
    assert not (tmp_path / "run").exists()
    # Errors in the model's config are found before anything is set up.
    missing = tmp_path / "missing"
    for overrides, message in [
        ([f"--model.name_or_path={missing}"], f"model.name_or_path: no such directory: {missing}"),
        ([f"--model.tokenizer={missing}"], f"model.tokenizer: no such directory: {missing}"),
        (["--model.quietstar.n_thought_tokens=2"], "model.quietstar/model.architecture: QuietStarConfig.n_thought_tokens"),
    ]:
        reported = _user_error(capsys, ["--output-dir", str(tmp_path / "run"), "--model.architecture={}", *overrides])
        assert reported.startswith(f"train.py: error: {message}"), reported
        assert not (tmp_path / "run").exists()
