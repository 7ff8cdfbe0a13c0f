"""Process group, devices and FSDP2 sharding.

A run started by torchrun (WORLD_SIZE in the environment) joins a process group (NCCL on CUDA, gloo on CPU) and
shards the model with FSDP2; a plain `python train.py` runs in one process with no process group.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ..devices import DTYPES, resolve_device

@dataclass
class World:
    """Where this process runs. `distributed` is True under torchrun (then FSDP2 shards the model)."""

    rank: int
    world_size: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_from_main(self, obj):
        """Rank 0's `obj` (any picklable object) on every rank; collective under torchrun."""
        if not self.distributed:
            return obj
        payload = [obj]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a float tensor (returned on the CPU)."""
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / self.world_size
        return values.cpu()


def init_world(device: str) -> World:
    """Join the torchrun process group if there is one and pick the device (`auto`, `cpu` or `cuda`; a `UserError`
    for `cuda` without CUDA)."""
    device = resolve_device(device, "train.device").type
    if "WORLD_SIZE" not in os.environ:
        return World(rank=0, world_size=1, device=torch.device(device, 0) if device == "cuda" else torch.device(device), distributed=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    dist.init_process_group(
        backend="nccl" if device == "cuda" else "gloo",
        device_id=torch_device if device == "cuda" else None,
        timeout=datetime.timedelta(minutes=30),
    )
    return World(rank=dist.get_rank(), world_size=dist.get_world_size(), device=torch_device, distributed=True)


def shutdown(world: World) -> None:
    if world.distributed:
        dist.destroy_process_group()


def apply_fsdp(model: torch.nn.Module, world: World, param_dtype: str, reshard_after_forward: bool) -> None:
    """`fully_shard` every decoder layer, then the root (embeddings, final norm, LM head, mixing head, meta embeddings).

    Mixed precision: parameters are cast to `param_dtype` for compute, gradients are reduced in float32, and the
    sharded master weights (and so the optimizer state) stay float32. Every pass and head runs inside the model's
    `forward`, so the root's FSDP hooks cover them all.

    Parameters are not resharded after backward: the keys and values of one pass are used by the later passes of the
    same layer, so the backward of an earlier pass's projections runs after FSDP's post-backward of a later pass and
    needs the gathered weights then. `reshard_parameters` frees them before the optimizer step.
    """
    mesh = init_device_mesh(world.device.type, (world.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    model.set_reshard_after_backward(False)


def reshard_parameters(model: torch.nn.Module) -> None:
    """Free the gathered parameters of every FSDP module, so the optimizer updates (and the next step gathers) the
    sharded master weights. No-op for a model without FSDP."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def materialize_from_rank0(model: torch.nn.Module, full_state_dict: dict, world: World) -> None:
    """Fill a sharded model built on the meta device with the full state dict that rank 0 holds (others pass {}).

    Parameters are broadcast from rank 0 and each rank keeps its shard, so only rank 0 ever holds the whole model.
    Non-persistent buffers (the rotary frequencies) are not in state dicts; they are recomputed on every rank.
    """
    model.to_empty(device=world.device)
    set_model_state_dict(
        model, full_state_dict, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(model.config).to(world.device)
