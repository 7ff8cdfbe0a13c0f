"""One optimizer step: gradient accumulation over micro-batches, clipping, AdamW, schedule, metrics."""

import contextlib

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from ..devices import DTYPES
from .parallel import World, reshard_parameters

# Scalars of the model's training output that are logged (averaged over micro-batches and ranks).
LOSS_FIELDS = (
    "loss", "base_loss", "thought_loss", "policy_loss", "mean_reward", "mean_advantage", "mean_mixing_weight",
    "distill_loss",
)


def sampling_seed(seed: int, step: int, micro_batch_index: int) -> int:
    """The seed of thought sampling for one micro-batch, from (run seed, step, global micro-batch index)."""
    return int(np.random.SeedSequence([seed, step, micro_batch_index]).generate_state(1)[0])


def accumulate_gradients(
    model: torch.nn.Module,
    micro_batches: list[torch.LongTensor],
    world: World,
    *,
    step: int,
    seed: int,
    param_dtype: str,
) -> torch.Tensor:
    """Forward and backward of this rank's `micro_batches` (each (b, L) token ids) into the parameters' `.grad`.

    The loss of each micro-batch is a mean over its scored positions, divided by the number of micro-batches; FSDP
    averages gradients over ranks, so the gradients are those of the mean loss over the global batch (under FSDP
    they are sharded DTensors). Before each micro-batch the RNG is seeded from (seed, step, rank * n_micro + i): the
    thoughts sampled for a sequence depend only on its place in the global batch, not on the world size, and a
    resumed run samples what the original would. Gathered FSDP parameters are freed on return.
    Returns this rank's `LOSS_FIELDS` averaged over its micro-batches, shape (len(LOSS_FIELDS),).
    """
    n_micro = len(micro_batches)
    # Without FSDP, bfloat16 compute is autocast (FSDP2 casts parameters itself).
    autocast = (
        torch.autocast(world.device.type, dtype=DTYPES[param_dtype])
        if param_dtype != "float32" and not world.distributed
        else contextlib.nullcontext()
    )
    totals = torch.zeros(len(LOSS_FIELDS), device=world.device)
    for index, tokens in enumerate(micro_batches):
        torch.manual_seed(sampling_seed(seed, step, world.rank * n_micro + index))
        with autocast:
            output = model(tokens.to(world.device))
        (output.loss / n_micro).backward()
        totals += torch.stack([getattr(output, name).detach().float() for name in LOSS_FIELDS]) / n_micro
    reshard_parameters(model)
    return totals


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[torch.LongTensor],
    world: World,
    *,
    step: int,
    seed: int,
    grad_clip: float,
    param_dtype: str,
) -> dict[str, float]:
    """Run one optimizer step on this rank's `micro_batches` (each (b, L) token ids) and return its metrics.

    Gradients come from `accumulate_gradients` (the mean loss over the global batch), are clipped to `grad_clip`
    (0: not clipped) and applied by the optimizer; the schedule then advances.
    Returns the `LOSS_FIELDS` averaged over the global batch, `grad_norm` (before clipping) and `lr` (of this step).
    """
    lr = scheduler.get_last_lr()[0]
    totals = accumulate_gradients(model, micro_batches, world, step=step, seed=seed, param_dtype=param_dtype)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    means = world.all_reduce_mean(totals)
    metrics = {name: float(value) for name, value in zip(LOSS_FIELDS, means)}
    metrics.update(grad_norm=float(grad_norm), lr=lr)
    return metrics
