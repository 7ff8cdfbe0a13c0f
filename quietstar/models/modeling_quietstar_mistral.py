"""Quiet-STaR on Mistral: `MistralForCausalLM` that thinks before each token.

The algorithm is `modeling_quietstar.QuietStarModelMixin`, shared by every family; this module only binds it to
Mistral's attention and causal-LM classes. Weights keep Mistral's names, so a Mistral checkpoint loads unchanged.
"""

from transformers import MistralForCausalLM
from transformers.models.mistral.modeling_mistral import MistralAttention

from .thought_attention import ThoughtAttentionMixin
from .configuration_quietstar_mistral import QuietStarConfig
from .modeling_quietstar import QuietStarModelMixin
from .thinking_parts import QuietStarCausalLMOutput, QuietStarMixingHead, QuietStarThoughtEmbeddings


class QuietStarAttention(ThoughtAttentionMixin, MistralAttention):
    """Mistral attention that also runs the thought passes (`ThoughtAttentionMixin`)."""


class QuietStarForCausalLM(QuietStarModelMixin, MistralForCausalLM):
    """Mistral causal LM with Quiet-STaR thinking; see `QuietStarModelMixin` and `QuietStarConfig`."""

    config_class = QuietStarConfig
    thought_attention_class = QuietStarAttention


__all__ = [
    "QuietStarAttention",
    "QuietStarCausalLMOutput",
    "QuietStarForCausalLM",
    "QuietStarMixingHead",
    "QuietStarThoughtEmbeddings",
]
