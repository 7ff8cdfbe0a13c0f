"""Parallel thoughts: every position of every sequence thinks at once, and what training and eval make of it.

`run_parallel_thoughts` runs the passes of Quiet-STaR over whole sequences: pass 0 is the plain causal pass; pass 1
feeds `<|startofthought|>` at every position; passes 2..T-1 feed the thought tokens sampled from the previous pass;
pass T feeds `<|endofthought|>`; passes T+1..T+A-1 feed the real tokens x[i+1..i+A-1] (teacher forcing). The token
of pass p at position i has RoPE position i + p and attends to x[0..i] and to its own earlier passes only
(`thought_attention`). The hidden state of pass T + j - 1, mixed with the base hidden state of position i + j - 1 by
the mixing head, predicts x[i + j].

Training turns the passes into the Quiet-STaR loss (`parallel_thinking_loss`, with the objective in `loss`); eval
keeps the thought-mixed prediction of the positions it returns (`kept_parallel_thoughts`). Everything here is a
function of a `ThinkingParts` (the model's decoder, LM head and new parts, passed explicitly).

This module keeps relative imports only: it is copied next to a checkpoint's modeling code for
`trust_remote_code=True`.
"""

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from transformers import Cache

from .lm_head import linear_distillation_kl
from .loss import IGNORE_INDEX, look_ahead_scores, quietstar_loss, shift_left
from .thinking_parts import KeptThoughts, QuietStarCausalLMOutput, ThinkingParts
from .thought_attention import ThoughtKVStore, resolve_attention_impl


@dataclass
class ParallelThoughts:
    """What `run_parallel_thoughts` computes, for B' = B * N rows.

    Hidden states rather than logits: a (B', L, V) tensor per pass is what limits the batch on a GPU, so logits are
    computed where they are needed (`ThinkingParts.thinking_logits` for outputs, chunked cross-entropies for the
    loss).

    - `base_hidden`: (B', L, H) final hidden states of the plain causal pass; position i predicts x[i + 1]
    - `talk_hidden`: A tensors (B', L, H) in float32 (float64 for a float64 model); `talk_hidden[j - 1]` at
      position i is the thought-mixed hidden state that predicts x[i + j] (j = 1 is the prediction right after the
      thought)
    - `mixing_weights`: A tensors (B', L), the mixing weight w behind each of `talk_hidden`
    - `thought_ids`: (B', L, n_thought_tokens - 2) the thought content tokens used at every position
    - `thought_logprobs`: (B', L) mean log-probability of those tokens at `reinforce_temperature` (training mode
      only, else None)
    """

    base_hidden: torch.Tensor
    talk_hidden: list[torch.Tensor]
    mixing_weights: list[torch.Tensor]
    thought_ids: torch.LongTensor
    thought_logprobs: torch.Tensor | None


def run_parallel_thoughts(
    parts: ThinkingParts,
    input_ids: torch.LongTensor,
    *,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.LongTensor | None = None,
    thought_ids: torch.LongTensor | None = None,
    n_thoughts: int = 1,
    n_ahead_talk: int = 1,
    past_key_values: Cache | None = None,
) -> ParallelThoughts:
    """Run the base pass, the thought passes and the look-ahead passes for all positions at once.

    Args:
        parts: the model's parts.
        input_ids: (B, L) token ids.
        inputs_embeds: (B, L, H) their embeddings (computed from input_ids when omitted).
        attention_mask: (B, L) 1 for real tokens, 0 for padding.
        position_ids: (B, L) RoPE positions of the base tokens (counted over real tokens when omitted).
        thought_ids: thought content tokens to use instead of sampling: (B, N, L, n_thought_tokens - 2), one thought
            per copy, or (B, L, n_thought_tokens - 2), the same thought for every copy.
        n_thoughts: N, thoughts per position; every row is repeated N times (row b * N + n).
        n_ahead_talk: A, look-ahead passes scored after the thought.
        past_key_values: an empty cache that receives the base pass's keys and values (needs n_thoughts = 1).

    Thought tokens are sampled at `thought_temperature` in training mode and at `inference_thought_temperature`
    (greedy at 0) in eval mode. The log-probabilities for REINFORCE are only computed in training mode.
    """
    if past_key_values is not None and (n_thoughts != 1 or past_key_values.get_seq_length() != 0):
        raise ValueError("run_parallel_thoughts fills only an empty cache, and only with n_thoughts=1")
    if inputs_embeds is None:
        inputs_embeds = parts.embed_input_ids(input_ids)
    tokens, embeds, attention_mask, position_ids, thought_ids = _repeat_rows(
        input_ids, inputs_embeds, attention_mask, position_ids, thought_ids, n_thoughts
    )
    run_pass = _PassRunner(parts, attention_mask, position_ids)
    base_hidden = run_pass(embeds, 0)
    if past_key_values is not None:
        for layer_idx in range(parts.config.num_hidden_layers):
            past_key_values.update(*run_pass.store.base(layer_idx), layer_idx)
    hidden, sampled_ids, thought_logprobs = _thought_passes(parts, run_pass, embeds, thought_ids)
    talk_hidden, mixing_weights = _look_ahead_passes(parts, run_pass, base_hidden, hidden, tokens, n_ahead_talk)
    return ParallelThoughts(
        base_hidden=base_hidden,
        talk_hidden=talk_hidden,
        mixing_weights=mixing_weights,
        thought_ids=sampled_ids,
        thought_logprobs=thought_logprobs,
    )


def default_position_ids(attention_mask, rows: int, length: int, device, past_length: int = 0) -> torch.LongTensor:
    """(rows, length) positions of the last `length` tokens, counted over real tokens (so left padding works).

    `attention_mask` is (rows, past_length + length) or None; without it the positions are past_length,
    past_length + 1, ...
    """
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device).expand(rows, -1)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


def _repeat_rows(input_ids, inputs_embeds, attention_mask, position_ids, thought_ids, n_thoughts: int):
    """Repeat every row N times (row b * N + n) and fill in the defaults.

    Returns tokens (B', L), embeddings (B', L, H), attention mask (B', L) or None, positions (B', L) and thought
    content tokens (B', L, n_thought_tokens - 2) or None.
    """
    batch, length = input_ids.shape
    tokens = repeat(input_ids, "b l -> (b n) l", n=n_thoughts)
    embeds = repeat(inputs_embeds, "b l h -> (b n) l h", n=n_thoughts)
    if attention_mask is not None:
        attention_mask = repeat(attention_mask, "b l -> (b n) l", n=n_thoughts)
    if position_ids is None:
        position_ids = default_position_ids(attention_mask, batch * n_thoughts, length, tokens.device)
    else:
        position_ids = repeat(position_ids.expand(batch, -1), "b l -> (b n) l", n=n_thoughts)
    if thought_ids is not None and thought_ids.ndim == 4:
        if thought_ids.shape[1] != n_thoughts:
            raise ValueError(f"thought_ids has {thought_ids.shape[1]} copies per row, expected n_thoughts={n_thoughts}")
        thought_ids = rearrange(thought_ids, "b n l t -> (b n) l t")
    elif thought_ids is not None:
        thought_ids = repeat(thought_ids, "b l t -> (b n) l t", n=n_thoughts)
    return tokens, embeds, attention_mask, position_ids, thought_ids


class _PassRunner:
    """Runs pass p of the decoder on (B', L, H) embeddings -> (B', L, H) final hidden states.

    The passes share one `ThoughtKVStore`: the base pass (p = 0, the only one that takes the padding mask) stores its
    keys and values, and every later pass attends to them and to the earlier passes at the same position.
    """

    def __init__(self, parts: ThinkingParts, attention_mask: torch.Tensor | None, position_ids: torch.LongTensor):
        key_padding_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_padding_mask = attention_mask.bool()
        device = position_ids.device
        self.store = ThoughtKVStore(key_padding_mask, resolve_attention_impl(parts.config.attention_impl, device))
        self.decoder = parts.decoder
        self.attention_mask = attention_mask
        self.position_ids = position_ids

    def __call__(self, pass_embeds: torch.Tensor, pass_idx: int) -> torch.Tensor:
        return self.decoder(
            inputs_embeds=pass_embeds,
            attention_mask=self.attention_mask if pass_idx == 0 else None,
            position_ids=self.position_ids + pass_idx,
            use_cache=False,
            thought_kv=self.store,
            thought_pass=pass_idx,
        ).last_hidden_state


def _thought_passes(
    parts: ThinkingParts, run_pass: _PassRunner, embeds: torch.Tensor, thought_ids: torch.LongTensor | None
) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor | None]:
    """Passes 1..T: `<|startofthought|>`, the sampled (or given) thought tokens, `<|endofthought|>`.

    Returns the hidden states at `<|endofthought|>` (B', L, H), the thought content tokens (B', L, T - 2) and, in
    training, their mean log-probability (B', L) (else None).
    """
    thought_length = parts.config.n_thought_tokens
    meta = parts.thought_embeddings().to(embeds.dtype)
    hidden = run_pass(meta[0].expand_as(embeds), 1)
    sampled_tokens, token_logprobs = [], []
    for pass_idx in range(2, thought_length):
        given = None if thought_ids is None else thought_ids[..., pass_idx - 2]
        next_tokens, logprobs = parts.next_thought_tokens(hidden, given)
        if logprobs is not None:
            token_logprobs.append(logprobs)
        sampled_tokens.append(next_tokens)
        hidden = run_pass(parts.decoder.embed_tokens(next_tokens), pass_idx)
    hidden = run_pass(meta[1].expand_as(embeds), thought_length)
    thought_logprobs = torch.stack(token_logprobs, dim=-1).mean(dim=-1) if token_logprobs else None
    return hidden, torch.stack(sampled_tokens, dim=-1), thought_logprobs


def _look_ahead_passes(
    parts: ThinkingParts,
    run_pass: _PassRunner,
    base_hidden: torch.Tensor,
    end_hidden: torch.Tensor,
    tokens: torch.LongTensor,
    n_ahead_talk: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mix the hidden state after the thought with the base one, then teacher-force x[i+1..i+A-1] (passes T+1..).

    Returns A thought-mixed hidden states (B', L, H) and A mixing weights (B', L); entry j - 1 predicts x[i + j].
    """
    thought_length = parts.config.n_thought_tokens
    hidden = end_hidden
    talk_hidden, mixing_weights = [], []
    for j in range(1, n_ahead_talk + 1):
        if j > 1:
            teacher_tokens = shift_left(tokens, j - 1)
            hidden = run_pass(parts.decoder.embed_tokens(teacher_tokens), thought_length + j - 1)
        mixed_hidden, weight = parts.mixing_head.mix(shift_left(base_hidden, j - 1), hidden)
        talk_hidden.append(mixed_hidden)
        mixing_weights.append(weight.squeeze(-1))
    return talk_hidden, mixing_weights


def kept_parallel_thoughts(parts: ThinkingParts, passes: ParallelThoughts, keep: torch.LongTensor) -> KeptThoughts:
    """Eval mode: the thought-mixed next-token prediction of the `keep` (K,) positions, and the gate's choice."""
    base_hidden = passes.base_hidden[:, keep]
    return KeptThoughts(
        base_hidden=base_hidden,
        mixed_hidden=passes.talk_hidden[0][:, keep],
        thought_ids=passes.thought_ids[:, keep],
        mixing_weights=passes.mixing_weights[0][:, keep],
        thought_used=parts.thought_gate.thinks(base_hidden, parts.config.think_threshold),
    )


def parallel_thinking_loss(
    parts: ThinkingParts,
    passes: ParallelThoughts,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    labels: torch.LongTensor | None,
) -> QuietStarCausalLMOutput:
    """Training: the Quiet-STaR loss of `passes` (run with `config.n_thoughts` copies of the (B, L) batch) and its
    parts. Labels default to the input ids with padding ignored."""
    config = parts.config
    n_thoughts = config.n_thoughts
    if labels is None:
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels = repeat(labels, "b l -> (b n) l", n=n_thoughts)
    if attention_mask is not None:
        attention_mask = repeat(attention_mask, "b l -> (b n) l", n=n_thoughts)
    scores = look_ahead_scores(
        passes.base_hidden,
        passes.talk_hidden,
        labels,
        parts.lm_head.weight,
        attention_mask,
        base_loss_weight=config.base_loss_weight,
        chunk_size=config.lm_head_chunk_size,
    )
    losses = quietstar_loss(
        scores,
        passes.thought_logprobs,
        n_thoughts=n_thoughts,
        policy_loss_weight=config.policy_loss_weight,
        clip_negative_rewards=config.clip_negative_rewards,
    )
    loss, distill_loss = losses.loss, torch.zeros_like(losses.base_nll)
    if config.distill_loss_weight > 0:
        distill_loss = distillation_loss(parts, passes.base_hidden, passes.talk_hidden[0], scores.talk_scored[0])
        loss = loss + config.distill_loss_weight * distill_loss
    return QuietStarCausalLMOutput(
        loss=loss,
        base_loss=losses.base_nll,
        thought_loss=losses.thought_nll,
        policy_loss=losses.policy_loss,
        mean_reward=losses.mean_reward,
        mean_advantage=losses.mean_advantage,
        mean_mixing_weight=passes.mixing_weights[0][scores.talk_scored[0]].mean().detach(),
        distill_loss=distill_loss.detach(),
    )


def distillation_loss(
    parts: ThinkingParts, base_hidden: torch.Tensor, mixed_hidden: torch.Tensor, scored: torch.BoolTensor
) -> torch.Tensor:
    """Mean over the `scored` positions of KL(thought-mixed || base) of the next-token distribution, both over
    the text vocabulary (meta tokens left out), the thought-mixed prediction a no-grad teacher.

    Args:
        parts: the model's parts.
        base_hidden: (B', L, H) base hidden states (the student; gradients flow into them and the LM head).
        mixed_hidden: (B', L, H) hidden states of the thought-mixed prediction of the next token (the teacher).
        scored: (B', L) positions with a next-token target.
    """
    row_weights = scored.float() / scored.sum().clamp(min=1)
    loss, _ = linear_distillation_kl(
        base_hidden,
        mixed_hidden,
        parts.lm_head.weight,
        row_weights,
        banned_ids=parts.meta_token_ids(base_hidden.device),
        chunk_size=parts.config.lm_head_chunk_size,
    )
    return loss


__all__ = [
    "ParallelThoughts",
    "default_position_ids",
    "distillation_loss",
    "kept_parallel_thoughts",
    "parallel_thinking_loss",
    "run_parallel_thoughts",
]
