"""train.py end to end on CPU: single process, torchrun with 2 and 4 ranks (FSDP2, gloo), kill-and-resume,
checkpoints, a full disk, and 2-rank gradients against one process."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint.filesystem as dcp_filesystem
from transformers import AutoModelForCausalLM, AutoTokenizer

from quietstar import QuietStarForCausalLM
from quietstar.training import checkpoint as checkpoint_module
from quietstar.errors import UserError
from quietstar.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from quietstar.training.config import load_config
from quietstar.training.metrics import MetricsLogger
from quietstar.training.model import build_model, load_tokenizer
from quietstar.training.optim import build_optimizer, build_scheduler
from quietstar.training.parallel import World

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
# The tiny config, smaller still: 2 sequences of 16 tokens per step, a checkpoint every 2 steps.
SMALL = [
    "--data.seq_len=16",
    "--data.synthetic.n_documents=200",
    "--train.global_batch_size=2",
    "--train.micro_batch_size=1",
    "--train.warmup_steps=2",
    "--logging.interval=1",
    "--checkpoint.interval=2",
]
# The tiny config's own batch sizes (4 sequences per step, micro-batch derived from the world size), shorter rows.
TINY_AS_SHIPPED = ["--data.seq_len=16", "--data.synthetic.n_documents=200", "--logging.interval=1", "--checkpoint.interval=2"]


def _torchrun(n_ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_ranks}"]


def _train(output_dir, *args, launcher=(sys.executable,), small=SMALL, expect_success=True):
    command = [*launcher, str(REPO / "train.py"), "--output-dir", str(output_dir), *small, *args]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    if expect_success:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _records(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def _losses(output_dir) -> dict[int, float]:
    """Loss per step; each step must have been logged once."""
    records = _records(output_dir)
    assert len({r["step"] for r in records}) == len(records), [r["step"] for r in records]
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    _train(output_dir, "--train.max_steps=6")
    return output_dir


def test_single_process_run(uninterrupted):
    records = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "base_loss", "thought_loss", "policy_loss", "mean_reward", "mean_advantage", "mean_mixing_weight",
                "grad_norm", "lr", "tokens_per_second", "peak_memory_gb"):
        assert all(isinstance(r[key], float) for r in records), key
    assert records[0]["lr"] == 0.0 and records[2]["lr"] > 0  # linear warm-up over 2 steps
    assert [p.name for p in sorted((uninterrupted / "checkpoints").iterdir())] == ["step_00000004", "step_00000006"]

    model = AutoModelForCausalLM.from_pretrained(uninterrupted / "final")
    assert isinstance(model, QuietStarForCausalLM)
    exported = AutoModelForCausalLM.from_pretrained(uninterrupted / "checkpoints" / "step_00000006" / "hf")
    for (name, a), b in zip(model.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(a, b), name
    tokenizer = AutoTokenizer.from_pretrained(uninterrupted / "final")
    assert tokenizer.convert_tokens_to_ids("<|startofthought|>") == model.config.start_thought_token_id
    assert set(model.generation_config.suppress_tokens) == {model.config.start_thought_token_id, model.config.end_thought_token_id}
    model.eval()
    with torch.no_grad():
        logits = model(**tokenizer("2 + 3 = 5", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_kill_and_resume_reproduces_the_losses(uninterrupted, tmp_path):
    command = [sys.executable, str(REPO / "train.py"), "--output-dir", str(tmp_path), *SMALL, "--train.max_steps=6"]
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.exists() and any(json.loads(l)["step"] >= 3 for l in metrics.read_text().splitlines())):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    # A checkpoint write cut short by a kill leaves only a temporary directory, which resuming ignores.
    (tmp_path / "checkpoints" / ".tmp-step_00000005" / "state").mkdir(parents=True)
    resumed_from = latest_checkpoint(tmp_path)
    assert resumed_from is not None and resumed_from.name in ("step_00000002", "step_00000004")

    result = _train(tmp_path, "--train.max_steps=6", "--resume")
    assert f"resumed from {resumed_from}" in result.stderr
    # The records the killed run wrote past the checkpoint are dropped: every step is in metrics.jsonl once, in order.
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3, 4, 5, 6]
    expected, got = _losses(uninterrupted), _losses(tmp_path)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_resume_with_an_allowed_config_change_records_it(uninterrupted, tmp_path):
    # (Refusing the change without --allow-config-change, and resuming a finished run: tests/test_run_directory.py.)
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    changed = ["--train.max_steps=7", "--resume", "--model.quietstar.n_thought_tokens=5"]
    # Allowed: training continues from step 6 with thoughts of 5 tokens, and the run's history says so.
    _train(run, *changed, "--allow-config-change")
    records = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert records == [
        {"step": 6, "field": "model.quietstar.n_thought_tokens", "old": 4, "new": 5},
        {"step": 6, "field": "train.max_steps", "old": 6, "new": 7},
    ]
    assert load_config(run / "config.yaml").model.quietstar["n_thought_tokens"] == 5
    assert [r["step"] for r in _records(run)] == [1, 2, 3, 4, 5, 6, 7]
    assert json.loads((run / "final" / "config.json").read_text())["n_thought_tokens"] == 5


@pytest.mark.parametrize("n_ranks", [2, 4])
def test_torchrun_trains_the_tiny_config_as_shipped(tmp_path, n_ranks):
    # FSDP2 on gloo with the tiny config's batch sizes: 4 sequences per step are 2 or 1 per rank. The 2-rank run goes
    # into a directory holding an earlier run, with --overwrite: rank 0 deletes that run, the user's file stays.
    flags = []
    if n_ranks == 2:
        (tmp_path / "checkpoints" / "step_00000009").mkdir(parents=True)
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 9, "loss": 1.0}) + "\n")
        (tmp_path / "notes.txt").write_text("mine")
        flags = ["--overwrite"]
    result = _train(tmp_path, "--train.max_steps=2", *flags, launcher=_torchrun(n_ranks), small=TINY_AS_SHIPPED)
    assert f"{n_ranks} rank(s) on cpu, 1 micro-batch(es) of {4 // n_ranks} per step" in result.stderr
    # The generated corpus has 2 shards: 4 ranks each read both (and keep their own documents), said once by rank 0.
    shard_notes = [line for line in result.stderr.splitlines() if "the data stream has 2 shard(s)" in line]
    assert [note.split("]")[0][-6:] for note in shard_notes] == (["rank 0"] if n_ranks == 4 else [])
    assert [r["step"] for r in _records(tmp_path)] == [1, 2]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000002"]
    assert (tmp_path / "checkpoints" / "step_00000002" / "state" / ".metadata").is_file()
    if n_ranks == 2:
        assert (tmp_path / "notes.txt").read_text() == "mine"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert isinstance(model, QuietStarForCausalLM)


def test_torchrun_reports_a_config_error_once(tmp_path):
    result = _train(tmp_path, "--train.nope=1", launcher=_torchrun(2), expect_success=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "train.py: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: unknown config key 'train.nope'"), errors
    assert f'File "{REPO / "train.py"}"' not in result.stderr  # no traceback from the ranks (torchrun adds its own)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_two_ranks_match_one_process(tmp_path):
    out = tmp_path / "result.json"
    command = [*_torchrun(2), str(REPO / "tests" / "fsdp_equivalence.py"), str(out)]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    # FSDP2 found no view among the model's outputs (its "returned a view tensor" warning), on any rank.
    assert report["fsdp_view_warnings"] == 0
    # Gradients before any optimizer step, gathered to full tensors, from the same weights with a non-zero mixing
    # weight (so rewards and the REINFORCE term contribute), against one process on the same 4 sequences.
    for gradients in report["gradients"]:
        assert gradients["names"]
        assert gradients["sharded"]["policy_loss"] != 0 and gradients["sharded"]["mean_mixing_weight"] != 0
        assert gradients["mixing_head_grad"] > 1e-6
        for key in ("loss", "policy_loss", "mean_reward"):
            assert gradients["sharded"][key] == pytest.approx(gradients["single"][key], rel=1e-6, abs=1e-9), key
        assert gradients["max_rel_grad_diff"] < 1e-5, gradients
    (sharded_1, sharded_2), (single_1, single_2) = report["sharded"], report["single"]
    # Step 1 (mixing weight 0, so no reward yet): the same loss and the same updated weights.
    assert report["max_param_change"] > 1e-3
    assert sharded_1["loss"] == pytest.approx(single_1["loss"], abs=1e-6)
    assert sharded_1["grad_norm"] == pytest.approx(single_1["grad_norm"], rel=1e-5)
    assert report["max_param_diff"][0] < 1e-6
    # Step 2 has rewards and a REINFORCE term. A reward is a difference of two nearly equal NLLs (~10 apart by
    # 1e-4), so float32 summation order shows at the 1e-4 relative level in it, and Adam turns noise-level gradients
    # of the mixing head into lr-sized updates; the losses still agree to 1e-6.
    assert sharded_2["policy_loss"] != 0
    for key in ("loss", "base_loss", "thought_loss"):
        assert sharded_2[key] == pytest.approx(single_2[key], abs=1e-5), key
    for key in ("policy_loss", "mean_reward", "grad_norm"):
        assert sharded_2[key] == pytest.approx(single_2[key], rel=2e-3), key
    assert report["max_param_diff"][1] < 1e-3


@pytest.fixture(scope="module")
def small_training_state():
    """(model, optimizer, scheduler, world, save_checkpoint keyword arguments) of a tiny hidden-16 model."""
    config = load_config(
        REPO / "configs" / "tiny.yaml", ["model.architecture.hidden_size=16", "model.architecture.intermediate_size=32"]
    )
    tokenizer = load_tokenizer(config.model)
    model = build_model(config.model, tokenizer, seed=0)
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, config.train)
    world = World(rank=0, world_size=1, device=torch.device("cpu"), distributed=False)
    save = dict(tokenizer=tokenizer, world=world, export_dtype="float32", keep_last=2)
    return model, optimizer, scheduler, world, save


def test_interrupted_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, small_training_state):
    model, optimizer, scheduler, world, save = small_training_state
    first = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"position": 1}, **save)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoint_module, "export_hf", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"position": 2}, **save)
    assert (tmp_path / "checkpoints" / ".tmp-step_00000002" / "state" / ".metadata").is_file()
    assert latest_checkpoint(tmp_path) == first
    step, data_state = load_checkpoint(first, model, optimizer, scheduler, world)
    assert (step, data_state) == (1, {"position": 1})


def _disk_full_in_dcp(monkeypatch):
    """DCP's file writer writes part of a tensor file, then finds the disk full."""

    def write_item(transforms, stream, *args, **kwargs):
        stream.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dcp_filesystem, "_write_item", write_item)


def _disk_full_in_hf_export(monkeypatch):
    """The HF export writes part of model.safetensors, then finds the disk full."""

    def save_pretrained(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / "model.safetensors"))

    monkeypatch.setattr(QuietStarForCausalLM, "save_pretrained", save_pretrained)


@pytest.mark.parametrize("fill_disk", [_disk_full_in_dcp, _disk_full_in_hf_export], ids=["state", "hf_export"])
def test_disk_full_while_checkpointing(tmp_path, monkeypatch, small_training_state, fill_disk):
    model, optimizer, scheduler, world, save = small_training_state
    first = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"position": 1}, **save)
    fill_disk(monkeypatch)
    with pytest.raises(UserError) as error:
        save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"position": 2}, **save)
    root = tmp_path / "checkpoints"
    assert str(error.value) == (
        f"no space left on device while writing {root / 'step_00000002'} (the partial {root / '.tmp-step_00000002'} "
        "was removed); free space and continue with --resume"
    )
    assert [p.name for p in root.iterdir()] == ["step_00000001"]  # the partial checkpoint is gone at once
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(first, model, optimizer, scheduler, world) == (1, {"position": 1})


def test_other_write_errors_also_remove_the_partial_checkpoint(tmp_path, monkeypatch, small_training_state):
    model, optimizer, scheduler, world, save = small_training_state

    def denied(self, directory, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(directory))

    monkeypatch.setattr(QuietStarForCausalLM, "save_pretrained", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"position": 1}, **save)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_training_output_holds_no_views(small_training_state):
    # FSDP2 registers its pre-backward hook on every grad-requiring tensor the wrapped root returns and warns about
    # views ("returned a view tensor ... can cause backward to fail or produce wrong gradients"): an in-place op on a
    # view would drop the hook. The training forward used to return the thought-mixed logits as a slice of a stacked
    # tensor; it now returns only the loss (and detached parts), none of them a view.
    model = small_training_state[0]
    model.train()
    output = model(torch.randint(0, 1000, (2, 12)))
    returned = [value for value in output.values() if isinstance(value, torch.Tensor)]
    assert output.loss.requires_grad
    assert all(value._base is None for value in returned if value.requires_grad)


def test_disk_full_on_one_rank_stops_every_rank(tmp_path):
    out = tmp_path / "result.json"
    command = [*_torchrun(2), str(REPO / "tests" / "checkpoint_disk_full.py"), str(out)]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    for case, step in (("state_rank_1", 2), ("hf_export_rank_0", 3)):
        root = tmp_path / "checkpoints"
        message = (
            f"UserError: no space left on device while writing {root / f'step_{step:08d}'} (the partial "
            f"{root / f'.tmp-step_{step:08d}'} was removed); free space and continue with --resume"
        )
        assert report[case]["outcomes"] == [message, message], case
        assert report[case]["listing"] == ["step_00000001"], case


def test_metrics_logger_writes_jsonl_and_wandb_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest disables wandb globally; the config decides here
    config = load_config(REPO / "configs" / "tiny.yaml", ["logging.wandb_mode=offline"]).logging
    metrics = dict.fromkeys(
        ("loss", "base_loss", "thought_loss", "policy_loss", "mean_reward", "mean_advantage", "mean_mixing_weight",
         "grad_norm", "lr", "tokens_per_second", "peak_memory_gb"),
        1.0,
    )
    logger = MetricsLogger(tmp_path, config, {"run": "test"}, max_steps=10, is_main=True)
    with caplog.at_level("INFO", logger="quietstar.train"):
        logger.log(4, {**metrics, "mfu": 0.5}, seconds_per_step=2.0)
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 4
    assert "step 4/10" in caplog.text and "mfu 50.0%" in caplog.text and "eta 0:00:12" in caplog.text
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    silent = MetricsLogger(tmp_path / "other", config, {}, max_steps=10, is_main=False)  # ranks > 0 write nothing
    silent.log(1, metrics, 1.0)
    assert not (tmp_path / "other").exists()
