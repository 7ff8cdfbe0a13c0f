"""Configuration of a Quiet-STaR Qwen3 model: a Qwen3 config plus the knobs of the thinking algorithm."""

from transformers import Qwen3Config

from .configuration_quietstar import QuietStarConfigMixin


class QuietStarQwen3Config(QuietStarConfigMixin, Qwen3Config):
    r"""
    Configuration of [`QuietStarQwen3ForCausalLM`]: every field of [`Qwen3Config`] plus the Quiet-STaR fields of
    [`QuietStarConfigMixin`], documented there. Sliding-window layers are refused (thought passes see the whole
    prefix, and thinking generation crops thoughts out of a full-attention cache).
    """

    model_type = "quietstar_qwen3"


__all__ = ["QuietStarQwen3Config"]
