"""AdamW and the learning-rate schedule (linear warm-up, then constant, cosine or linear decay)."""

import torch
from transformers import get_scheduler

from .config import TrainConfig

_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over all trainable parameters (fused kernels on CUDA)."""
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' warm-up schedules: `warmup_steps` linear from 0, then `lr_schedule` until `max_steps`."""
    return get_scheduler(
        _SCHEDULES[config.lr_schedule],
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.max_steps,
    )
