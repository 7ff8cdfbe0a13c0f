"""Quiet-STaR on Llama: `LlamaForCausalLM` that thinks before each token.

Llama 3.x (and Llama 2): rope_scaling of type "llama3" and tied or untied embeddings come from
`LlamaConfig` and `LlamaForCausalLM` unchanged. The algorithm is `modeling_quietstar.QuietStarModelMixin`, shared by every family.
"""

from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention

from .thought_attention import ThoughtAttentionMixin
from .configuration_quietstar_llama import QuietStarLlamaConfig
from .modeling_quietstar import QuietStarModelMixin


class QuietStarLlamaAttention(ThoughtAttentionMixin, LlamaAttention):
    """Llama attention that also runs the thought passes (`ThoughtAttentionMixin`)."""


class QuietStarLlamaForCausalLM(QuietStarModelMixin, LlamaForCausalLM):
    """Llama causal LM with Quiet-STaR thinking; see `QuietStarModelMixin` and `QuietStarLlamaConfig`."""

    config_class = QuietStarLlamaConfig
    thought_attention_class = QuietStarLlamaAttention


__all__ = ["QuietStarLlamaAttention", "QuietStarLlamaForCausalLM"]
