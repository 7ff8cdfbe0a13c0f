"""Configuration of a Quiet-STaR Mistral model: a Mistral config plus the knobs of the thinking algorithm."""

from transformers import MistralConfig

from .configuration_quietstar import QuietStarConfigMixin


class QuietStarConfig(QuietStarConfigMixin, MistralConfig):
    r"""
    Configuration of [`QuietStarForCausalLM`]: every field of [`MistralConfig`] plus the Quiet-STaR fields of
    [`QuietStarConfigMixin`] (`n_thought_tokens`, `n_ahead_talk`, `n_thoughts`, temperatures, loss weights, meta
    token ids, `thinking`, `attention_impl`, `lm_head_chunk_size`), documented there.

    Args:
        sliding_window (`int`, *optional*, defaults to `None`):
            Mistral's sliding window is off by default here: sliding caches drop old keys and cannot be cropped,
            which thinking generation needs.
    """

    model_type = "quietstar"

    sliding_window: int | None = None


__all__ = ["QuietStarConfig"]
