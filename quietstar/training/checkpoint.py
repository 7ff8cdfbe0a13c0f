"""Checkpoints: resumable training state (torch.distributed.checkpoint) and HF exports, written atomically.

Layout under `<output_dir>/checkpoints/`:

    step_00000050/state/   DCP: model and optimizer (sharded), scheduler, step, and per rank the data position
                           and RNG states
    step_00000050/hf/      the model in HF format (safetensors, config, generation config, tokenizer)

A checkpoint is written into `.tmp-step_NNNNNNNN/` and renamed when every rank has finished
(`quietstar.atomic_files`), so only complete checkpoints carry a `step_` name; a run killed while writing leaves a
`.tmp-` directory that is ignored and removed by the next save. A write that fails with an OS error (a full disk)
removes its `.tmp-` directory at once.
"""

import contextlib
import errno
import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from transformers import PreTrainedTokenizerBase

from ..atomic_files import replace_directory, staging_path
from ..families import family_of
from ..devices import DTYPES
from .parallel import World
from ..errors import UserError

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint, oldest first."""
    root = checkpoints_dir(output_dir)
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


@contextlib.contextmanager
def _dcp_context(world: World):
    """DCP warns on every save/load without a process group, which is what a single process means to do."""
    with warnings.catch_warnings():
        if not world.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _encode(obj) -> bytes:
    return json.dumps(obj).encode()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _app_state(model, optimizer, world: World, trainer: bytes, rank_state: bytes) -> dict:
    """The DCP state dict. Non-tensor parts are JSON bytes; per-rank parts sit under a key of their own rank."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {
        "model": model_state,
        "optimizer": optimizer_state,
        "trainer": trainer,
        "ranks": {f"rank_{world.rank}": rank_state},
    }


def _is_no_space(error: BaseException) -> bool:
    """Whether `error`, its causes, or (for a DCP `CheckpointException`) the failure of any rank is ENOSPC."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if isinstance(current, CheckpointException):
            pending.extend(failure for failure, _ in current.failures.values())
        pending.extend((current.__cause__, current.__context__))
    return False


@contextlib.contextmanager
def removed_on_write_error(tmp: Path, destination: Path, world: World):
    """Delete the partial directory `tmp` (rank 0) as soon as writing it fails with an OS error; "no space left on
    device" becomes a `UserError` naming `destination` and `tmp`.

    Every rank must see the failure: DCP raises one rank's write error on all ranks, `export_hf` shares rank 0's.
    """
    try:
        yield
    except (OSError, CheckpointException) as error:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_no_space(error):
            raise UserError(
                f"no space left on device while writing {destination} (the partial {tmp} was removed); free space "
                "and continue with --resume"
            ) from error
        raise


def export_hf(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    world: World,
    dtype: str,
) -> None:
    """Write the model (gathered from all ranks) with its tokenizer in HF format to `directory` (rank 0 writes).

    Collective: every rank must call it. The export is a plain model of the family's class built on the meta device and
    given the gathered weights, so `AutoModelForCausalLM.from_pretrained(directory)` loads it after `import quietstar`.
    An OS error while rank 0 writes (a full disk) is raised on every rank, so none waits for a write that failed.
    """
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    failure = None
    if world.is_main:
        with torch.device("meta"):
            export = family_of(model.config.model_type).model_class(model.config)
        export.load_state_dict({k: v.to(DTYPES[dtype]) for k, v in full.items()}, assign=True, strict=True)
        export.tie_weights()  # the cast gave each tied name its own tensor; re-tied, the table is saved once
        export.config.dtype = DTYPES[dtype]
        export.generation_config = model.generation_config
        try:
            export.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
        except OSError as error:
            failure = error
    failure = world.broadcast_from_main(failure)
    if failure is not None:
        raise failure


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data_state: dict,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    *,
    export_dtype: str,
    keep_last: int,
) -> Path:
    """Write the resumable state and an HF export for `step` (collective), then keep the `keep_last` newest.

    Raises `UserError` when the disk is full (the partial checkpoint is removed, earlier ones are
    kept)."""
    root = checkpoints_dir(output_dir)
    final = root / f"step_{step:08d}"
    tmp = staging_path(final)
    if world.is_main:
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale)
        tmp.mkdir(parents=True)
    world.barrier()
    trainer = _encode({"step": step, "world_size": world.world_size, "scheduler": scheduler.state_dict()})
    rank_state = _encode({"data": data_state, "rng": _rng_state()})
    with removed_on_write_error(tmp, final, world):
        with _dcp_context(world):
            dcp.save(
                _app_state(model, optimizer, world, trainer, rank_state),
                checkpoint_id=tmp / "state",
                no_dist=not world.distributed,
            )
        export_hf(model, tokenizer, tmp / "hf", world, export_dtype)
    if world.is_main:
        replace_directory(tmp, final)
        for _, old in complete_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
        logger.info("saved checkpoint %s", final)
    world.barrier()
    return final


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    world: World,
) -> tuple[int, dict]:
    """Restore model, optimizer, scheduler and RNG from `directory`; return (step, this rank's data state)."""
    state = _app_state(model, optimizer, world, b"", b"")
    with _dcp_context(world):
        dcp.load(state, checkpoint_id=directory / "state", no_dist=not world.distributed)
    trainer = json.loads(state["trainer"])
    if trainer["world_size"] != world.world_size:
        raise UserError(
            f"{directory} was written by {trainer['world_size']} ranks; resume with the same world size "
            f"(now {world.world_size}): each rank's data position is its own"
        )
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    scheduler.load_state_dict(trainer["scheduler"])
    rank_state = json.loads(state["ranks"][f"rank_{world.rank}"])
    _set_rng_state(rank_state["rng"])
    return trainer["step"], rank_state["data"]
