"""Fitting the thought gate of adaptive thinking on a trained model's own thoughts.

A thinking model's gate (`QuietStarThoughtGate`, a linear head on the base hidden state) predicts how much the
thought of a position changes its next-token distribution, as log KL(thought-mixed || base). `fit_thought_gate` runs
the model in eval mode over some text (one thought per position, at `inference_thought_temperature`: the thoughts
generation would use), measures that KL at every real position, and fits the gate to it by ridge regression in closed
form. The fit is detached from training: it reads the model and writes the gate's two tensors only.

Why closed form rather than a gradient loop: the gate is linear and the target is fixed, so the least-squares
solution is exact, needs no learning rate or step count, and costs one (H + 1) x (H + 1) solve.
"""

from dataclasses import dataclass

import torch

from ..models.lm_head import linear_distillation_kl
from ..models.modeling_quietstar import QuietStarModelMixin

# KLs below this are clamped before the log (an untrained mixing head gives exactly 0).
MIN_KL = 1e-8


@dataclass
class ThoughtGateFit:
    """What `fit_thought_gate` fitted on.

    - `n_positions`: real positions used
    - `r2`: coefficient of determination of the fit on those positions (log-KL units)
    - `kl_quantiles`: the measured KL (nats) at the 10th, 25th, 50th, 75th and 90th percentiles, to choose
      `think_threshold` from (a threshold at the q-quantile of the KL skips about a fraction q of positions)
    """

    n_positions: int
    r2: float
    kl_quantiles: dict[str, float]


@torch.no_grad()
def thought_effects(
    model: QuietStarModelMixin, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Base hidden states and KL(thought-mixed || base) of every position, as eval-mode thinking computes them.

    Args:
        input_ids: (B, L) token ids (right or left padding).
        attention_mask: (B, L) 1 for real tokens, or None.

    Returns:
        base hidden states (B, L, H) and the KL in nats (B, L), fp32 or wider; both distributions leave the meta
        tokens out, as the model's outputs do.
    """
    if model.training:
        raise ValueError("thought_effects needs the model in eval mode (model.eval()): it measures inference thoughts")
    passes = model.run_parallel_thoughts(input_ids, attention_mask=attention_mask)
    base, mixed = passes.base_hidden, passes.talk_hidden[0]
    _, kl = linear_distillation_kl(
        base,
        mixed,
        model.lm_head.weight,
        torch.ones(base.shape[:-1], device=base.device),
        banned_ids=model._meta_token_ids(base.device),
        chunk_size=model.config.lm_head_chunk_size,
    )
    return base, kl


@torch.no_grad()
def fit_thought_gate(
    model: QuietStarModelMixin,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
    ridge: float = 1e-3,
) -> ThoughtGateFit:
    """Fit `model.thought_gate` to predict log KL(thought-mixed || base) from the base hidden state, in place.

    Args:
        model: a thinking model (meta tokens added), in eval mode.
        input_ids: (N, L) token ids of held-in text.
        attention_mask: (N, L) 1 for real tokens, or None; padding positions are left out of the fit.
        batch_size: rows run through the model at once.
        ridge: L2 penalty on the gate's weight, relative to the mean variance of the hidden features (the bias is
            not penalised). At least 0.

    Returns:
        a `ThoughtGateFit` with the fit's size, its R^2 and quantiles of the measured KL.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if input_ids.ndim != 2 or (attention_mask is not None and attention_mask.shape != input_ids.shape):
        raise ValueError("input_ids must be (N, L) and attention_mask None or of the same shape")
    features, targets = [], []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(model.device)
        mask = None if attention_mask is None else attention_mask[start : start + batch_size].to(model.device)
        base, kl = thought_effects(model, ids, mask)
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        features.append(base[real].double().cpu())
        targets.append(kl[real].double().cpu())
    x, kl = torch.cat(features), torch.cat(targets)
    if x.shape[0] < 2:
        raise ValueError("fit_thought_gate needs at least 2 real positions")
    y = kl.clamp(min=MIN_KL).log()
    x_mean, y_mean = x.mean(0), y.mean()
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = ridge * gram.diagonal().mean().clamp(min=torch.finfo(torch.float64).tiny)
    weight = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    bias = y_mean - x_mean @ weight
    residual = yc - xc @ weight
    total = (yc**2).sum()
    r2 = float(1 - (residual**2).sum() / total) if total > 0 else 1.0
    gate = model.thought_gate
    gate.weight.copy_(weight.view(1, -1).to(gate.weight))
    gate.bias.copy_(bias.view(1).to(gate.bias))
    levels = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=kl.dtype)
    quantiles = torch.quantile(kl, levels)
    return ThoughtGateFit(
        n_positions=int(x.shape[0]),
        r2=r2,
        kl_quantiles={f"q{int(level * 100)}": float(value) for level, value in zip(levels, quantiles)},
    )


__all__ = ["MIN_KL", "ThoughtGateFit", "fit_thought_gate", "thought_effects"]
