"""The Triton thought attention under its 0.1 name, for the modeling code of checkpoints saved by quietstar 0.1.

That code calls `thought_attention(q, kb, vb, kt, vt, key_padding_mask, scaling)` and expects what 0.1's operator
did: its arguments checked, fp32 inputs on CUDA computed by the `torch` implementation, (B, H, L, d) returned. The
model layer's dispatcher does exactly this for `impl="triton"` (the operator itself, `quietstar.ops.thought_attention`,
takes its arguments as valid and runs every supported dtype in the kernel).
"""

from collections.abc import Sequence

import torch

from ..models.thought_attention import thought_attention as dispatch_thought_attention


def thought_attention(
    q: torch.Tensor,
    kb: torch.Tensor,
    vb: torch.Tensor,
    kt: Sequence[torch.Tensor],
    vt: Sequence[torch.Tensor],
    key_padding_mask: torch.Tensor | None = None,
    scaling: float | None = None,
) -> torch.Tensor:
    """Thought-pass attention by the fused kernel, (B, H, L, d); the arguments are those of
    `quietstar.ops.thought_attention.thought_attention` under their 0.1 names."""
    return dispatch_thought_attention(q, kb, vb, kt, vt, key_padding_mask, scaling, impl="triton").transpose(1, 2)


__all__ = ["thought_attention"]
