"""Thought attention as one fused Triton operator: the kernels and their autograd Function (`triton.py`), the
choice of launch configs (`autotune.py`) and the dense PyTorch oracle every implementation is tested against
(`naive.py`)."""

from .triton import ThoughtAttentionFunction, thought_attention

__all__ = ["ThoughtAttentionFunction", "thought_attention"]
