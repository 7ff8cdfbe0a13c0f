"""Quiet-STaR on Qwen2: `Qwen2ForCausalLM` that thinks before each token.

Qwen2 / Qwen2.5: the q/k/v projections carry biases, which the shared projection applies as
Qwen2's own forward does. The algorithm is `modeling_quietstar.QuietStarModelMixin`, shared by every family.
"""

from transformers import Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

from .thought_attention import ThoughtAttentionMixin
from .configuration_quietstar_qwen2 import QuietStarQwen2Config
from .modeling_quietstar import QuietStarModelMixin


class QuietStarQwen2Attention(ThoughtAttentionMixin, Qwen2Attention):
    """Qwen2 attention that also runs the thought passes (`ThoughtAttentionMixin`)."""


class QuietStarQwen2ForCausalLM(QuietStarModelMixin, Qwen2ForCausalLM):
    """Qwen2 causal LM with Quiet-STaR thinking; see `QuietStarModelMixin` and `QuietStarQwen2Config`."""

    config_class = QuietStarQwen2Config
    thought_attention_class = QuietStarQwen2Attention


__all__ = ["QuietStarQwen2Attention", "QuietStarQwen2ForCausalLM"]
