"""Thought attention as one fused Triton operator (`triton.py`) and its dense PyTorch oracle (`naive.py`)."""

from .triton import ThoughtAttentionFunction, thought_attention

__all__ = ["ThoughtAttentionFunction", "thought_attention"]
