"""The knobs of the Quiet-STaR algorithm, shared by the configuration of every supported model family.

Each family's configuration (`QuietStarConfig` for Mistral, `QuietStarLlamaConfig`, `QuietStarQwen2Config`,
`QuietStarQwen3Config`) is that family's transformers configuration plus `QuietStarConfigMixin`, so it has all of
the family's fields and all of the fields below.
"""

import dataclasses
from dataclasses import dataclass
from typing import Literal

from huggingface_hub.dataclasses import type_validator
from transformers.utils import logging
from transformers.utils.type_validators import interval, probability

logger = logging.get_logger(__name__)


@dataclass(repr=False, kw_only=True)
class QuietStarConfigMixin:
    r"""
    The Quiet-STaR fields of a model configuration.

    Defaults are the effective settings of the reference implementation that produced the paper's numbers
    (Zelikman et al. 2024). Counting convention: `n_thought_tokens` includes `<|startofthought|>` and
    `<|endofthought|>`; the reference code's `n_ahead` is `n_thought_tokens + 1` (its `n_ahead=12` run is
    `n_thought_tokens=11`, i.e. 9 sampled tokens).

    Args:
        n_thought_tokens (`int`, defaults to 11):
            Tokens in one thought, start and end meta tokens included, so `n_thought_tokens - 2` are sampled.
            At least 3.
        n_ahead_talk (`int`, defaults to 4):
            Future real tokens scored after each thought with teacher forcing (training only). At least 1.
        n_thoughts (`int`, defaults to 2):
            Thoughts sampled per position in training; their mean reward is the REINFORCE baseline. At least 1.
        thought_temperature (`float`, defaults to 1.0):
            Sampling temperature of the thought tokens in training (1.0 samples from the model's distribution,
            which is what the reference's hard Gumbel-softmax does at any Gumbel temperature). Greater than 0.
        inference_thought_temperature (`float`, defaults to 0.0):
            Sampling temperature of the thought tokens in eval mode (generation, evaluation, inspection). 0 picks
            the most likely token (deterministic thoughts); 1.0 samples from the model's distribution, as the paper's
            evaluation did. At least 0.
        reinforce_temperature (`float`, defaults to 3.0):
            Temperature of the log-probabilities of the sampled thought tokens in the REINFORCE term.
            Greater than 0.
        policy_loss_weight (`float`, defaults to 1e6):
            Multiplier of the REINFORCE term in the loss. At least 0.
        base_loss_weight (`float`, defaults to 0.5):
            Weight of the plain next-token NLL; the thought (mixed) NLL gets `1 - base_loss_weight`. In [0, 1].
        meta_embedding_scale (`float`, defaults to 100.0):
            The start/end-of-thought embeddings are stored divided by this and multiplied back at use, which acts
            as a learning-rate multiplier for them. Greater than 0.
        clip_negative_rewards (`bool`, defaults to `True`):
            Use only the positive part of the advantage in the REINFORCE term.
        start_thought_token_id (`int`, *optional*):
            Id of `<|startofthought|>`; set by [`add_thought_tokens`].
        end_thought_token_id (`int`, *optional*):
            Id of `<|endofthought|>`; set by [`add_thought_tokens`].
        thinking (`bool`, defaults to `True`):
            Whether the model thinks. With `False` it is exactly the base model of its family. Can be overridden per call
            with `model(..., thinking=...)`.
        attention_impl (`str`, defaults to `"auto"`):
            Attention of the thought passes: `"torch"` (causal scores plus per-position thought scores, one softmax;
            exact and memory-lean), `"triton"` (fused kernel) or `"auto"` (triton on CUDA, torch otherwise). A
            config saved with the former `"dense"` loads as `"torch"`.
        lm_head_chunk_size (`int`, defaults to 1024):
            Rows (positions x thought copies) whose vocabulary-sized logits are materialised at once when thinking:
            thought sampling, its REINFORCE log-probability and the NLLs of the loss run over the rows in chunks of
            this size and never keep a chunk's logits for backward (with V = 32002 one chunk of 1024 rows is 131 MB
            in fp32). Smaller saves memory for large vocabularies; it never changes results beyond float rounding.
            At least 1.
        think_threshold (`float`, defaults to 0.0):
            Adaptive thinking in eval mode (generation, evaluation): a position thinks only where the fitted thought
            gate (`fit_thought_gate`) predicts that its thought changes the next-token distribution by at least this
            much, measured as KL(thought-mixed || base) in nats; elsewhere the model returns the base prediction and,
            on a KV cache, runs no thought at all. 0 thinks at every position. A model whose gate was never fitted
            thinks at every position whatever the threshold. At least 0.
        distill_loss_weight (`float`, defaults to 0.0):
            Weight of the distillation term added to the training loss: the mean over scored positions of
            KL(thought-mixed || base) of the next-token distribution, with the thought-mixed prediction as a no-grad
            teacher, so the base (no-thinking) prediction learns what the thinking model predicts and the model can
            then generate with `thinking=False` at the base model's cost. 0 turns it off. At least 0.
    """

    # Ranges are declared with transformers' field validators (those of its `@strict` configs), run by
    # `validate_quietstar_fields`. Float fields take ints too, as YAML and JSON write `1` for `1.0`.
    n_thought_tokens: int = interval(min=3)(default=11)
    n_ahead_talk: int = interval(min=1)(default=4)
    n_thoughts: int = interval(min=1)(default=2)
    thought_temperature: float | int = interval(min=0, exclude_min=True)(default=1.0)
    inference_thought_temperature: float | int = interval(min=0)(default=0.0)
    reinforce_temperature: float | int = interval(min=0, exclude_min=True)(default=3.0)
    policy_loss_weight: float | int = interval(min=0)(default=1e6)
    base_loss_weight: float | int = probability(default=0.5)
    meta_embedding_scale: float | int = interval(min=0, exclude_min=True)(default=100.0)
    clip_negative_rewards: bool = True
    start_thought_token_id: int | None = None
    end_thought_token_id: int | None = None
    thinking: bool = True
    attention_impl: Literal["auto", "torch", "triton"] = "auto"
    lm_head_chunk_size: int = interval(min=1)(default=1024)
    think_threshold: float | int = interval(min=0)(default=0.0)
    distill_loss_weight: float | int = interval(min=0)(default=0.0)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.attention_impl == "dense":  # quietstar 0.1's explicit-mask attention, same results
            message = "%s.attention_impl 'dense' is no longer an option; using 'torch' (same results)"
            logger.warning(message, type(self).__name__)
            self.attention_impl = "torch"
        self.validate_quietstar_fields()
        self.refuse_unsupported_attention()

    def refuse_unsupported_attention(self) -> None:
        """Raise a `ValueError` for attention features the thought passes do not implement.

        Thought passes see every earlier token and thinking generation crops thoughts out of the KV cache, so
        sliding-window layers (which drop old keys), attention sinks and logit soft-capping would compute
        something else than the base model; they are refused here rather than silently ignored.
        """
        name = type(self).__name__
        if getattr(self, "sliding_window", None) is not None and getattr(self, "use_sliding_window", True):
            raise ValueError(
                f"{name}.sliding_window={self.sliding_window}: sliding-window attention is not supported by Quiet-STaR "
                "thought passes; set sliding_window=None (use_sliding_window=False)"
            )
        layer_types = getattr(self, "layer_types", None) or []
        if any(layer_type != "full_attention" for layer_type in layer_types):
            raise ValueError(f"{name}.layer_types={layer_types}: only full-attention layers are supported")
        for field in ("attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(self, field, None) is not None:
                raise ValueError(f"{name}.{field}: logit soft-capping is not supported by Quiet-STaR")
        if getattr(self, "use_sink", False) or getattr(self, "sinks", None):
            raise ValueError(f"{name}: attention sinks are not supported by Quiet-STaR")

    def validate_quietstar_fields(self) -> None:
        """Raise a `ValueError` naming the first Quiet-STaR field (as `QuietStarLlamaConfig.n_thoughts`) whose value
        has the wrong type or lies outside its declared range, or a meta token id outside the vocabulary.

        The checks are those `@strict` runs, called here because `@strict` raises its own error type without the
        config class; the token ids depend on `vocab_size`, which no field validator sees."""
        name = type(self).__name__
        for field in dataclasses.fields(QuietStarConfigMixin):
            value = getattr(self, field.name)
            try:
                type_validator(f"{name}.{field.name}", value, field.type)
                for validator in field.metadata.get("validator", ()):
                    validator(value)
            except TypeError as error:
                raise ValueError(str(error)) from None
            except ValueError as error:
                raise ValueError(f"{name}.{field.name}: {error}") from None
        for field in ("start_thought_token_id", "end_thought_token_id"):
            token_id = getattr(self, field)
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                vocab = f"[0, vocab_size={self.vocab_size})"
                raise ValueError(f"{name}.{field} must be a token id in {vocab}, got {token_id}")
        if self.start_thought_token_id is not None and self.start_thought_token_id == self.end_thought_token_id:
            raise ValueError(f"{name}.start_thought_token_id and end_thought_token_id must differ")

    @property
    def n_sampled_thought_tokens(self) -> int:
        """Thought tokens drawn from the model: `n_thought_tokens` minus the start and end meta tokens."""
        return self.n_thought_tokens - 2


__all__ = ["QuietStarConfigMixin"]
