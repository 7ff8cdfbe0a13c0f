"""Configuration of a Quiet-STaR Llama model: a Llama config plus the knobs of the thinking algorithm."""

from transformers import LlamaConfig

from .configuration_quietstar import QuietStarConfigMixin


class QuietStarLlamaConfig(QuietStarConfigMixin, LlamaConfig):
    r"""
    Configuration of [`QuietStarLlamaForCausalLM`]: every field of [`LlamaConfig`] plus the Quiet-STaR fields of
    [`QuietStarConfigMixin`], documented there. Sliding-window layers are refused (thought passes see the whole
    prefix, and thinking generation crops thoughts out of a full-attention cache).
    """

    model_type = "quietstar_llama"


__all__ = ["QuietStarLlamaConfig"]
