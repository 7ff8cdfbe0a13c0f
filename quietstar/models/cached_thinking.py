"""Thinking on a KV cache: what `QuietStarForCausalLM` does in eval mode when it extends a cache (generation).

For a position whose prediction is wanted, the model runs `<|startofthought|>`, `n_thought_tokens - 2` thought
tokens and `<|endofthought|>` as single-token steps on the cache that holds the context, mixes the hidden state at
`<|endofthought|>` with the base hidden state of the position through the mixing head, and crops the thought out of
the cache again, so later tokens never see earlier thoughts. A generated token therefore costs one base step plus
`n_thought_tokens` thought steps, and the context is never forwarded again.

Adaptive thinking: with a fitted thought gate and `think_threshold` > 0 the gate is read on the base hidden state
first, and a position whose predicted thought effect is below the threshold emits the base prediction without
running its thought (one model call for that token). In a batch the thought runs when any row needs it; rows below
the threshold still get the base prediction.

The cache passes are functions of a `ThinkingParts` (the model's decoder, LM head and new parts, passed
explicitly): `cached_thoughts` extends the cache by a chunk and thinks for the positions the forward returns, and
`think_on_cache` runs one thought. `QuietStarGenerationMixin` adds `generate` (never emitting the meta tokens) and
`generate_with_thoughts`; it relies only on what a transformers `PreTrainedModel` with `GenerationMixin` provides
(`config`, `generation_config`, `generate`, forward hooks) and on the `thought_ids`, `mixing_weights` and
`thought_used` fields of the thinking forward's output.

This module keeps relative imports only: it is copied next to a checkpoint's modeling code for
`trust_remote_code=True`.
"""

from dataclasses import dataclass

import torch
from transformers import Cache
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .configuration_quietstar import QuietStarConfigMixin
from .loss import IGNORE_INDEX
from .thinking_parts import KeptThoughts, ThinkingParts


@dataclass
class QuietStarGenerateOutput(GenerateDecoderOnlyOutput):
    r"""
    [`GenerateDecoderOnlyOutput`] plus the thought behind each generated token.

    thought_ids (`torch.LongTensor` of shape `(batch_size, generated_length, n_thought_tokens - 2)`):
        The content tokens of the thought before each generated token (start and end tokens left out); -100 where
        the token was generated without thinking (adaptive thinking). Rows that finished early (end-of-sequence)
        keep thoughts for their padding positions.
    mixing_weights (`torch.FloatTensor` of shape `(batch_size, generated_length)`):
        The mixing weight w of each generated token (0 = the base prediction only).
    thought_used (`torch.BoolTensor` of shape `(batch_size, generated_length)`):
        Whether each generated token was predicted after a thought (False where the thought gate skipped it).
    """

    thought_ids: torch.LongTensor | None = None
    mixing_weights: torch.FloatTensor | None = None
    thought_used: torch.BoolTensor | None = None


def check_thinking_cache(cache) -> None:
    """Raise a `ValueError` unless `cache` can hold thoughts and drop them again (a dynamic, non-sliding cache)."""
    if not isinstance(cache, Cache) or cache.is_compileable or any(cache.is_sliding):
        raise ValueError(
            "thinking with a KV cache needs a croppable full-attention cache (DynamicCache, with "
            f"config.sliding_window=None); got {type(cache).__name__}. Use the default cache of generate() or pass "
            "thinking=False"
        )


def cached_thoughts(
    parts: ThinkingParts,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.LongTensor,
    cache: Cache,
    keep: torch.LongTensor,
    thought_ids: torch.LongTensor | None,
) -> KeptThoughts:
    """Extend `cache` by a chunk of real tokens, then think on the cache for each kept position of the chunk
    where the thought gate says so (`QuietStarThoughtGate.thinks`; every position unless it is fitted and
    `think_threshold` > 0).

    Args:
        parts: the model's parts.
        inputs_embeds: (B, n) embeddings of the new tokens.
        attention_mask: (B, past + n) 1 for real tokens, 0 for padding, or None for no padding.
        position_ids: (B, n) RoPE positions of the new tokens.
        cache: holds the `past` earlier tokens; holds `past + n` on return (no thought tokens).
        keep: (K,) indices into the chunk of the positions to predict from.
        thought_ids: (B, n, n_thought_tokens - 2) thought content tokens to use instead of sampling, or None.

    The thought of chunk position i sees the context up to i only: later tokens of the chunk are masked out. A kept
    position that no row thinks at gets its base hidden state as its thought hidden state and -100 thought tokens.
    """
    past_length = cache.get_seq_length()
    batch, length = inputs_embeds.shape[:2]
    base_hidden = parts.decoder(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    kept_base = base_hidden[:, keep]
    thought_used = parts.thought_gate.thinks(kept_base, parts.config.think_threshold)
    thought_hidden, thoughts = [], []
    for k, i in enumerate(keep.tolist()):
        if not bool(thought_used[:, k].any()):
            thought_hidden.append(kept_base[:, k])
            thoughts.append(torch.full((batch, parts.config.n_sampled_thought_tokens), IGNORE_INDEX, device=keep.device))
            continue
        context_mask = attention_mask
        if i < length - 1:
            if context_mask is None:
                context_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=inputs_embeds.device)
            context_mask = context_mask.clone()
            context_mask[:, past_length + i + 1 :] = 0
        hidden, tokens = think_on_cache(
            parts, cache, context_mask, position_ids[:, i], None if thought_ids is None else thought_ids[:, i]
        )
        thought_hidden.append(hidden)
        thoughts.append(tokens)
    mixed_hidden, weight = parts.mixing_head.mix(kept_base, torch.stack(thought_hidden, dim=1))
    return KeptThoughts(
        base_hidden=kept_base,
        mixed_hidden=mixed_hidden,
        thought_ids=torch.stack(thoughts, dim=1),
        mixing_weights=weight.squeeze(-1),
        thought_used=thought_used,
    )


def think_on_cache(
    parts: ThinkingParts,
    cache: Cache,
    context_mask: torch.Tensor | None,
    positions: torch.LongTensor,
    forced_thought: torch.LongTensor | None,
) -> tuple[torch.Tensor, torch.LongTensor]:
    """Run one thought per row after the context in `cache`, then crop it out of the cache.

    Args:
        parts: the model's parts.
        cache: holds the C context tokens; holds the same C tokens on return.
        context_mask: (B, C) 1 for the context tokens the thought may see, or None for all of them.
        positions: (B,) RoPE position of the token the thought follows; thought token k gets position + k.
        forced_thought: (B, n_thought_tokens - 2) content tokens to use instead of sampling, or None.

    Returns:
        the final hidden state at `<|endofthought|>` (B, H) and the thought content tokens (B, n_thought_tokens - 2).
    """
    config = parts.config
    batch = positions.shape[0]
    context_length = cache.get_seq_length()
    meta = parts.thought_embeddings().to(parts.decoder.embed_tokens.weight.dtype)
    step_embeds = meta[0].expand(batch, 1, -1)
    tokens = []
    for step in range(config.n_thought_tokens):
        step_mask = None
        if context_mask is not None:
            step_mask = torch.cat([context_mask, context_mask.new_ones(batch, step + 1)], dim=-1)
        hidden = parts.decoder(
            inputs_embeds=step_embeds,
            attention_mask=step_mask,
            position_ids=(positions + step + 1).unsqueeze(-1),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        if step < config.n_sampled_thought_tokens:
            next_tokens, _ = parts.next_thought_tokens(
                hidden[:, 0], None if forced_thought is None else forced_thought[:, step]
            )
            tokens.append(next_tokens)
            step_embeds = parts.decoder.embed_tokens(next_tokens).unsqueeze(1)
        else:
            step_embeds = meta[1].expand(batch, 1, -1)
    cache.crop(context_length - cache.get_seq_length())
    return hidden[:, 0], torch.stack(tokens, dim=-1)


class QuietStarGenerationMixin:
    """`generate` and `generate_with_thoughts` of a thinking model, mixed in before a family's `...ForCausalLM`.

    Uses only the `PreTrainedModel`/`GenerationMixin` interface of the class it is mixed into (`config`, a
    `QuietStarConfigMixin` config; `generation_config`; `generate`; forward hooks) and the thinking forward's output
    fields `thought_ids`, `mixing_weights` and `thought_used`.
    """

    config: QuietStarConfigMixin

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, *args, **kwargs):
        """[`~GenerationMixin.generate`] that never emits the two meta tokens, in either mode.

        In thinking mode the model already gives them the lowest logit; with `thinking=False` the forward is exactly
        the base model, so the meta tokens (trained or not) are added to `suppress_tokens` here, whatever
        `generation_config` (the argument's or the model's, for example one built from a config without
        `add_thought_tokens`) lists.
        """
        meta_ids = {self.config.start_thought_token_id, self.config.end_thought_token_id} - {None}
        if meta_ids:
            listed = kwargs.get("suppress_tokens")
            for config in (generation_config, self.generation_config):
                if listed is None and config is not None:
                    listed = config.suppress_tokens
            kwargs["suppress_tokens"] = sorted(set(listed or []) | meta_ids)
        return super().generate(inputs, generation_config, *args, **kwargs)

    @torch.no_grad()
    def generate_with_thoughts(self, inputs: torch.Tensor | None = None, **kwargs) -> QuietStarGenerateOutput:
        """`generate(inputs, **kwargs)` that also returns the thought and mixing weight behind each generated token.

        Takes every argument of [`~GenerationMixin.generate`] (greedy or sampling decoding; beam search is not
        supported because beams reorder the rows) and always returns a [`QuietStarGenerateOutput`] whose
        `thought_ids` has shape (batch, generated_length, n_thought_tokens - 2). Decode a thought with
        `tokenizer.decode(output.thought_ids[b, t])`.
        """
        if not kwargs.get("thinking", self.config.thinking):
            raise ValueError("generate_with_thoughts needs a thinking model; pass thinking=True or use generate()")
        generation_config = kwargs.get("generation_config") or self.generation_config
        if (kwargs.get("num_beams") or generation_config.num_beams or 1) > 1:
            raise ValueError("generate_with_thoughts supports greedy and sampling decoding, not beam search (num_beams > 1)")
        kwargs.pop("return_dict_in_generate", None)
        steps = []

        def record(module, args, output):
            steps.append((output.thought_ids[:, -1], output.mixing_weights[:, -1], output.thought_used[:, -1]))

        handle = self.register_forward_hook(record)
        try:
            output = self.generate(inputs, return_dict_in_generate=True, **kwargs)
        finally:
            handle.remove()
        thought_ids, mixing_weights, thought_used = zip(*steps)
        return QuietStarGenerateOutput(
            **output,
            thought_ids=torch.stack(thought_ids, dim=1),
            mixing_weights=torch.stack(mixing_weights, dim=1),
            thought_used=torch.stack(thought_used, dim=1),
        )


__all__ = [
    "QuietStarGenerateOutput",
    "QuietStarGenerationMixin",
    "cached_thoughts",
    "check_thinking_cache",
    "think_on_cache",
]
