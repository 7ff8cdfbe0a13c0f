"""Configuration of a Quiet-STaR Qwen2 model: a Qwen2 config plus the knobs of the thinking algorithm."""

from transformers import Qwen2Config

from .configuration_quietstar import QuietStarConfigMixin


class QuietStarQwen2Config(QuietStarConfigMixin, Qwen2Config):
    r"""
    Configuration of [`QuietStarQwen2ForCausalLM`]: every field of [`Qwen2Config`] plus the Quiet-STaR fields of
    [`QuietStarConfigMixin`], documented there. Sliding-window layers are refused (thought passes see the whole
    prefix, and thinking generation crops thoughts out of a full-attention cache).
    """

    model_type = "quietstar_qwen2"


__all__ = ["QuietStarQwen2Config"]
