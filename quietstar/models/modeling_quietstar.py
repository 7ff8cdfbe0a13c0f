"""The Quiet-STaR algorithm for any supported decoder family: a causal LM that thinks before each token
(Zelikman et al. 2024).

`QuietStarModelMixin` turns a family's `...ForCausalLM` into a thinking model: it adds two start/end-of-thought
embeddings, a mixing head and a thought gate (`thinking_parts`), swaps each layer's attention for the family's
`ThoughtAttentionMixin` subclass, and dispatches the forward between four modes:

- plain (`thinking=False`): exactly the family's base model;
- parallel thinking (`parallel_thoughts`): every position thinks at once. Training (`model.train()`) scores the
  thoughts with the Quiet-STaR loss (`loss`); eval without a cache, or into an empty one, returns the thought-mixed
  next-token logits of every kept position (one thought per position at `inference_thought_temperature`, greedy by
  default, unless `thought_ids` are given);
- cached thinking (`cached_thinking`): extending a non-empty KV cache, or when only the last position's logits are
  wanted (`generate()`), each kept position thinks on the cache and the thought is cropped out again, so stock
  `generate()` thinks before every token it emits;
- adaptive thinking: in eval, with a fitted thought gate and `think_threshold` > 0, positions whose predicted thought
  effect is below the threshold return the base logits instead (`QuietStarThoughtGate`).

Dependencies point one way: this module imports the thinking passes, which are functions of a `ThinkingParts` (the
decoder, LM head and new parts, passed explicitly), never of this class. Weights keep the family's names, so a base
checkpoint loads unchanged (only the new parts are initialised). Nothing here depends on the family: each family
module only declares its config class, attention class and causal-LM class.

This module keeps relative imports only: it is copied next to a checkpoint's modeling code for
`trust_remote_code=True`.
"""

import math

import torch
from transformers import DynamicCache
from transformers import initialization as init

from .cached_thinking import QuietStarGenerationMixin, cached_thoughts, check_thinking_cache
from .configuration_quietstar import QuietStarConfigMixin
from .parallel_thoughts import (
    ParallelThoughts,
    default_position_ids,
    kept_parallel_thoughts,
    parallel_thinking_loss,
    run_parallel_thoughts,
)
from .thinking_parts import (
    KeptThoughts,
    QuietStarCausalLMOutput,
    QuietStarMixingHead,
    QuietStarThoughtEmbeddings,
    QuietStarThoughtGate,
    ThinkingParts,
    ZeroInitLinear,
)


class QuietStarModelMixin(QuietStarGenerationMixin):
    """The thinking algorithm, mixed in before a family's `...ForCausalLM` class.

    A family sets `config_class` (its config plus `QuietStarConfigMixin`) and `thought_attention_class` (its
    attention plus `ThoughtAttentionMixin`); everything else (parallel thoughts, mixing, losses, cached thinking in
    `generate()`) is shared.
    """

    thought_attention_class: type

    def __init__(self, config: QuietStarConfigMixin):
        super().__init__(config)
        for layer_idx, layer in enumerate(self.model.layers):
            layer.self_attn = self.thought_attention_class(config, layer_idx)
        self.mixing_head = QuietStarMixingHead(config)
        self.thought_embeddings = QuietStarThoughtEmbeddings(config)
        self.thought_gate = QuietStarThoughtGate(config)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, QuietStarThoughtGate):
            init.zeros_(module.weight)
            init.constant_(module.bias, math.inf)
        elif isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
        elif isinstance(module, QuietStarThoughtEmbeddings):
            init.zeros_(module.weight)
        else:
            super()._init_weights(module)

    def thinking_parts(self) -> ThinkingParts:
        """The parts the thinking passes use (the decoder, LM head and new parts), in the model's current mode."""
        return ThinkingParts(
            config=self.config,
            decoder=self.model,
            lm_head=self.lm_head,
            thought_embeddings=self.thought_embeddings,
            mixing_head=self.mixing_head,
            thought_gate=self.thought_gate,
            training=self.training,
        )

    def embed_input_ids(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings (B, L) -> (B, L, H), with the meta tokens taking the trained thought embeddings."""
        return self.thinking_parts().embed_input_ids(input_ids)

    def thinking_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., V) of thought-mixed hidden states (..., H) (`ThinkingParts.thinking_logits`)."""
        return self.thinking_parts().thinking_logits(hidden)

    def _meta_token_ids(self, device: torch.device) -> torch.LongTensor:
        return self.thinking_parts().meta_token_ids(device)

    def run_parallel_thoughts(self, input_ids: torch.LongTensor, **kwargs) -> ParallelThoughts:
        """Run every position's thought at once: `parallel_thoughts.run_parallel_thoughts` on this model's parts
        (same keyword arguments: inputs_embeds, attention_mask, position_ids, thought_ids, n_thoughts, n_ahead_talk,
        past_key_values)."""
        return run_parallel_thoughts(self.thinking_parts(), input_ids, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        thought_ids: torch.LongTensor | None = None,
        thinking: bool | None = None,
        **kwargs,
    ) -> QuietStarCausalLMOutput:
        r"""
        thought_ids (`torch.LongTensor` of shape `(batch_size, n_thoughts, sequence_length, n_thought_tokens - 2)` or `(batch_size, sequence_length, n_thought_tokens - 2)`, *optional*):
            The content tokens of the thought at every position, used instead of sampling (start and end tokens are
            added by the model). In training, `thought_ids[b, n, i]` is the thought of copy n of row b at position
            i; the 3D layout gives every copy the same thought and is only accepted with `n_thoughts=1` (with equal
            thoughts every advantage is 0 and REINFORCE would silently do nothing). In eval mode there is one
            thought per position: the 3D layout, or the 4D one with `n_thoughts` = 1.
        thinking (`bool`, *optional*):
            Overrides `config.thinking` for this call. With `False` the model is exactly the base model of its
            family.

        In training mode with thinking, `loss` is the Quiet-STaR loss (parts in the other fields) and `logits` is None:
        the loss is computed from hidden states in chunks of rows so that no (rows, L, vocab) tensor is kept for
        backward (call the model in eval mode for logits). In eval mode `logits` are the thought-mixed next-token
        logits of the positions selected by `logits_to_keep` (all by default), `loss` (with `labels`) is their
        causal-LM NLL, `thought_ids` and `mixing_weights` say which thought and weight produced them, and with
        `use_cache` the returned cache holds the real tokens only (never thought tokens). In thinking mode the two
        meta tokens are never predicted: their logits are set to the lowest finite value of the logits' dtype.
        """
        thinking = self.config.thinking if thinking is None else thinking
        if input_ids is not None:
            _check_token_ids(self.config, input_ids)
            inputs_embeds = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        if not thinking:  # plain: the family's base model
            return super().forward(
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if input_ids is None:
            raise ValueError("Quiet-STaR thinking needs input_ids (the thoughts feed tokens back); got inputs_embeds only")
        _check_thinking_inputs(self.config, self.training, input_ids, thought_ids)
        parts = self.thinking_parts()
        if self.training:  # parallel thinking, scored by the Quiet-STaR loss
            if past_key_values is not None:
                raise ValueError("a training forward does not take past_key_values; pass thinking=False to use a KV cache")
            passes = run_parallel_thoughts(
                parts, input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                thought_ids=thought_ids, n_thoughts=self.config.n_thoughts, n_ahead_talk=self.config.n_ahead_talk,
            )
            return parallel_thinking_loss(parts, passes, input_ids, attention_mask, labels)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = self._eval_cache(past_key_values, use_cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, *input_ids.shape, input_ids.device, past_length)
        keep = _kept_positions(logits_to_keep, input_ids.shape[1], input_ids.device)
        if past_length == 0 and keep.numel() > 1:  # parallel thinking in eval; fills an empty cache
            passes = run_parallel_thoughts(
                parts, input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                thought_ids=thought_ids, past_key_values=cache,
            )
            kept = kept_parallel_thoughts(parts, passes, keep)
        else:  # cached thinking: extend the cache, then think on it for each kept position
            run_cache = cache if cache is not None else DynamicCache(config=self.config)
            kept = cached_thoughts(parts, inputs_embeds, attention_mask, position_ids, run_cache, keep, thought_ids)
        return self._gated_output(parts, kept, labels, cache if use_cache else None)

    def _eval_cache(self, past_key_values, use_cache: bool):
        """The cache an eval-mode thinking forward extends: the given one, a new one with `use_cache`, else None."""
        cache = past_key_values
        if cache is None and use_cache:
            cache = DynamicCache(config=self.config)
        if cache is not None:
            check_thinking_cache(cache)
        return cache

    def _gated_output(
        self, parts: ThinkingParts, kept: KeptThoughts, labels: torch.LongTensor | None, cache
    ) -> QuietStarCausalLMOutput:
        """The eval-mode output: thought-mixed logits, or the base logits where the thought gate skipped the thought
        (adaptive thinking), and with `labels` their causal-LM loss."""
        logits, thought_ids, weights = parts.gated_outputs(kept)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return QuietStarCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=cache,
            mean_mixing_weight=weights.mean().detach(),
            thought_ids=thought_ids,
            mixing_weights=weights,
            thought_used=kept.thought_used,
        )


def _check_token_ids(config: QuietStarConfigMixin, input_ids: torch.LongTensor) -> None:
    """Raise a `ValueError` unless every id lies in [0, vocab_size)."""
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= config.vocab_size):
        raise ValueError(
            f"input_ids must lie in [0, vocab_size={config.vocab_size}); got values in "
            f"[{int(input_ids.min())}, {int(input_ids.max())}]"
        )


def _check_thinking_inputs(
    config: QuietStarConfigMixin, training: bool, input_ids: torch.LongTensor, thought_ids: torch.LongTensor | None
) -> None:
    """Raise a `ValueError` unless the model can think on (B, L) `input_ids` with the given `thought_ids`."""
    if config.start_thought_token_id is None or config.end_thought_token_id is None:
        raise ValueError(
            "the config has no start_thought_token_id/end_thought_token_id: add the meta tokens with "
            "quietstar.add_thought_tokens(model, tokenizer) first, or pass thinking=False"
        )
    length = input_ids.shape[1]
    if training and length <= config.n_ahead_talk:
        raise ValueError(
            f"sequences of length {length} are too short for n_ahead_talk={config.n_ahead_talk}: "
            f"training needs at least n_ahead_talk + 1 = {config.n_ahead_talk + 1} tokens"
        )
    if thought_ids is not None:
        batch, length = input_ids.shape
        copies = config.n_thoughts if training else 1
        sampled = config.n_sampled_thought_tokens
        per_copy = (batch, copies, length, sampled)
        if tuple(thought_ids.shape) == (batch, length, sampled) and copies > 1:
            raise ValueError(
                f"thought_ids of shape (batch, length, n_thought_tokens - 2) = {tuple(thought_ids.shape)} give "
                f"all n_thoughts={copies} copies the same thought, so every advantage would be 0 and the "
                f"REINFORCE term would do nothing; pass one thought per copy, shape {per_copy}"
            )
        if tuple(thought_ids.shape) not in ((batch, length, sampled), per_copy):
            raise ValueError(
                f"thought_ids must have shape (batch, n_thoughts, length, n_thought_tokens - 2) = {per_copy} "
                f"or (batch, length, n_thought_tokens - 2) = {(batch, length, sampled)}, got "
                f"{tuple(thought_ids.shape)}"
            )
        _check_token_ids(config, thought_ids)


def _kept_positions(logits_to_keep: int | torch.Tensor, length: int, device) -> torch.LongTensor:
    """The chunk indices whose logits `forward` returns: all for 0, the last k for an int k, or the given 1D indices."""
    if isinstance(logits_to_keep, torch.Tensor):
        keep = logits_to_keep.to(device=device, dtype=torch.long)
        if keep.ndim != 1 or not keep.numel() or int(keep.min()) < -length or int(keep.max()) >= length:
            raise ValueError(f"logits_to_keep as a tensor must hold 1D indices into the {length} new positions")
        return keep % length
    if logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
    return torch.arange(max(length - logits_to_keep, 0) if logits_to_keep else 0, length, device=device)


__all__ = [
    "QuietStarCausalLMOutput",
    "QuietStarMixingHead",
    "QuietStarModelMixin",
    "QuietStarThoughtEmbeddings",
    "QuietStarThoughtGate",
]
