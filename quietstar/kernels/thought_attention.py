"""`quietstar.ops.thought_attention` under its 0.1 name, for the modeling code of checkpoints saved by quietstar 0.1."""

from ..ops.thought_attention import thought_attention

__all__ = ["thought_attention"]
