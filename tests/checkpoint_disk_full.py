"""Run under `torchrun --nproc_per_node=2`: a full disk on one rank while checkpointing stops every rank.

Two failures are tried after a first complete checkpoint: rank 1 alone finds the disk full while DCP writes its shard
of the state, and rank 0 (the only writer) finds it full during the HF export. Each rank records the error it raised;
rank 0 writes them, with the checkpoint directory's listing after each failure, to the JSON file named by argv[1].
"""

import errno
import json
import sys
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint.filesystem as dcp_filesystem

from quietstar.models.modeling_quietstar_mistral import QuietStarForCausalLM
from quietstar.training.checkpoint import checkpoints_dir, save_checkpoint
from quietstar.training.config import load_config
from quietstar.training.model import load_tokenizer, setup_model
from quietstar.training.optim import build_optimizer, build_scheduler
from quietstar.training.parallel import init_world, shutdown


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def main(out_path: str) -> None:
    world = init_world("cpu")
    output_dir = Path(out_path).parent
    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
        ["model.architecture.hidden_size=16", "model.architecture.intermediate_size=32", "train.param_dtype=float32"],
    )
    tokenizer = load_tokenizer(config.model)
    model = setup_model(
        config.model,
        tokenizer,
        world,
        seed=0,
        param_dtype="float32",
        activation_checkpointing=False,
        reshard_after_forward=True,
    )
    optimizer = build_optimizer(model, config.train, world.device)
    scheduler = build_scheduler(optimizer, config.train)
    save = dict(tokenizer=tokenizer, world=world, export_dtype="float32", keep_last=2)
    save_checkpoint(output_dir, 1, model, optimizer, scheduler, {"position": 1}, **save)

    cases = {
        "state_rank_1": (dcp_filesystem, "_write_item", 1),
        "hf_export_rank_0": (QuietStarForCausalLM, "save_pretrained", 0),
    }
    report = {}
    for step, (name, (owner, attribute, failing_rank)) in enumerate(cases.items(), start=2):
        original = getattr(owner, attribute)
        if world.rank == failing_rank:
            setattr(owner, attribute, _no_space)
        try:
            save_checkpoint(output_dir, step, model, optimizer, scheduler, {"position": step}, **save)
            outcome = "saved"
        except Exception as error:  # noqa: BLE001  (the test checks which error each rank raised)
            outcome = f"{type(error).__name__}: {error}"
        finally:
            setattr(owner, attribute, original)
        outcomes = [None] * world.world_size
        dist.all_gather_object(outcomes, outcome)
        world.barrier()
        report[name] = {"outcomes": outcomes, "listing": sorted(p.name for p in checkpoints_dir(output_dir).iterdir())}
    if world.is_main:
        Path(out_path).write_text(json.dumps(report))
    shutdown(world)


if __name__ == "__main__":
    main(sys.argv[1])
