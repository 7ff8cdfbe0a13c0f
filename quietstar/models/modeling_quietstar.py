"""The Quiet-STaR algorithm for any supported decoder family: a causal LM that thinks before each token
(Zelikman et al. 2024).

`QuietStarModelMixin` turns a family's `...ForCausalLM` into a thinking model: it adds two start/end-of-thought
embeddings and a mixing head, swaps each layer's attention for the family's `ThoughtAttentionMixin` subclass, and
implements the thinking forward. Weights keep the family's names, so a base checkpoint loads unchanged (only the new
parts are initialised). Nothing here depends on the family: each family module only declares its config class,
attention class and causal-LM class.

Training (`model.train()`), for every position i of every sequence at once ("parallel thoughts"):
pass 0 is the plain causal pass; pass 1 feeds `<|startofthought|>` at every position; passes 2..T-1 feed the
thought tokens sampled from the previous pass; pass T feeds `<|endofthought|>`; passes T+1..T+A-1 feed the real
tokens x[i+1..i+A-1] (teacher forcing). The token of pass p at position i has RoPE position i + p and attends to
x[0..i] and to its own earlier passes only (`attention_quietstar`). The hidden state of pass T + j - 1, mixed
with the base hidden state of position i + j - 1 by the mixing head, predicts x[i + j]. The loss is in
`losses_quietstar`.

Inference (`model.eval()`): `.logits` are the thought-mixed next-token logits of every position (one thought per
position at `inference_thought_temperature`, greedy by default, unless `thought_ids` are given). With a fitted
thought gate and `think_threshold` > 0, positions whose predicted thought effect is below the threshold return the
base logits instead (adaptive thinking; `QuietStarThoughtGate`). Without a cache, or
into an empty cache, all positions think in parallel as in training. Extending a non-empty cache, or when only the
last position's logits are wanted (`generate()`), each wanted position thinks on the KV cache and the thought is
cropped out again (`generation_quietstar`), so stock `generate()` thinks before every token it emits.
"""

import math
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import nn
from transformers import Cache, DynamicCache
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from .thought_attention import ThoughtKVStore, resolve_attention_impl
from .lm_head import linear_distillation_kl, sample_thought_tokens
from .configuration_quietstar import QuietStarConfigMixin
from .cached_thinking import QuietStarGenerationMixin, check_thinking_cache
from .loss import IGNORE_INDEX, look_ahead_scores, quietstar_loss, shift_left


@dataclass
class QuietStarCausalLMOutput(CausalLMOutputWithPast):
    r"""
    [`CausalLMOutputWithPast`] plus the parts of the Quiet-STaR loss, so training can log them.

    base_loss (`torch.FloatTensor`, *optional*):
        Plain next-token NLL of the base pass (detached).
    thought_loss (`torch.FloatTensor`, *optional*):
        NLL of the thought-mixed predictions, averaged over the look-ahead tokens (detached).
    policy_loss (`torch.FloatTensor`, *optional*):
        The REINFORCE term before its weight (detached).
    mean_reward (`torch.FloatTensor`, *optional*):
        Mean over positions of the reward: how much the thoughts lowered the NLL of the next tokens.
    mean_advantage (`torch.FloatTensor`, *optional*):
        Mean over positions of the (clipped) advantage.
    mean_mixing_weight (`torch.FloatTensor`, *optional*):
        Mean mixing weight w over scored positions (0 = base prediction only).
    distill_loss (`torch.FloatTensor`, *optional*):
        Training: the distillation term before its weight, mean KL(thought-mixed || base) over scored positions
        (detached); 0 when `distill_loss_weight` is 0 (not computed).
    thought_ids (`torch.LongTensor` of shape `(batch_size, kept_length, n_thought_tokens - 2)`, *optional*):
        Eval mode: the thought content tokens behind each returned position's logits; -100 where the position did
        not think (`thought_used` False).
    mixing_weights (`torch.FloatTensor` of shape `(batch_size, kept_length)`, *optional*):
        Eval mode: the mixing weight w of each returned position (0 where it did not think).
    thought_used (`torch.BoolTensor` of shape `(batch_size, kept_length)`, *optional*):
        Eval mode: whether each returned position's logits are thought-mixed (False where the thought gate
        predicted an effect below `think_threshold` and the base logits were returned).
    """

    base_loss: torch.FloatTensor | None = None
    thought_loss: torch.FloatTensor | None = None
    policy_loss: torch.FloatTensor | None = None
    mean_reward: torch.FloatTensor | None = None
    mean_advantage: torch.FloatTensor | None = None
    mean_mixing_weight: torch.FloatTensor | None = None
    distill_loss: torch.FloatTensor | None = None
    thought_ids: torch.LongTensor | None = None
    mixing_weights: torch.FloatTensor | None = None
    thought_used: torch.BoolTensor | None = None


@dataclass
class ParallelThoughts:
    """What `QuietStarModelMixin.run_parallel_thoughts` computes, for B' = B * N rows.

    Hidden states rather than logits: a (B', L, V) tensor per pass is what limits the batch on a GPU, so logits are
    computed where they are needed (`QuietStarModelMixin.thinking_logits` for outputs, chunked cross-entropies for
    the loss).

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


class ZeroInitLinear(nn.Linear):
    """A linear layer that `QuietStarModelMixin._init_weights` initialises to zero."""


class QuietStarThoughtEmbeddings(nn.Module):
    """The input embeddings of `<|startofthought|>` (row 0) and `<|endofthought|>` (row 1).

    `weight` (2, H) is stored divided by `config.meta_embedding_scale` and multiplied back in `forward`, which acts as
    a learning-rate multiplier for these two vectors. Set from the embedding of "---" by `add_thought_tokens`.
    """

    def __init__(self, config: QuietStarConfigMixin):
        super().__init__()
        self.scale = config.meta_embedding_scale
        self.weight = nn.Parameter(torch.zeros(2, config.hidden_size))

    def forward(self) -> torch.Tensor:
        """The (2, H) embeddings as fed to the model."""
        return self.scale * self.weight


class QuietStarMixingHead(nn.Module):
    """MLP on [h_base ; h_thought] (2H -> H -> H -> 1, ReLU between) giving the mixing weight w.

    The mixed hidden state is (1 - w) * h_base + w * h_thought. The output layer starts at zero, so w = 0 exactly at
    initialisation and the model predicts like the base model. There is no output nonlinearity (as in the reference).
    """

    def __init__(self, config: QuietStarConfigMixin):
        super().__init__()
        hidden = config.hidden_size
        self.input = nn.Linear(2 * hidden, hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.output = ZeroInitLinear(hidden, 1, bias=False)
        self.activation = nn.ReLU()

    def forward(self, h_base: torch.Tensor, h_thought: torch.Tensor) -> torch.Tensor:
        """(..., H) and (..., H) -> w of shape (..., 1)."""
        x = self.activation(self.input(torch.cat([h_base, h_thought], dim=-1)))
        x = self.activation(self.hidden(x))
        return self.output(x)

    def mix(self, h_base: torch.Tensor, h_thought: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mixed hidden state (1 - w) * h_base + w * h_thought and w.

        The mix is computed and returned in float32 (float64 for float64 inputs) whatever the dtype of the hidden
        states: w starts at 0 and stays small, and in bfloat16 h_base + w * (h_thought - h_base) would round back to
        h_base (a relative step of 2^-8 against w of order 1e-4), so the thought would change nothing.
        """
        weight = self(h_base, h_thought)
        dtype = torch.promote_types(h_base.dtype, torch.float32)
        h_base = h_base.to(dtype)
        return h_base + weight.to(dtype) * (h_thought.to(dtype) - h_base), weight


class QuietStarThoughtGate(nn.Module):
    """Linear head (H -> 1) on the base hidden state of a position predicting log KL(thought-mixed || base) of its
    next-token distribution: how much thinking there would change the prediction (natural log of nats).

    Adaptive thinking skips the thought where the predicted KL is below `config.think_threshold`. The gate is fitted
    after training on the model's own thoughts (`quietstar.fit_thought_gate`, a ridge regression); it is never
    trained by the main loss, so it cannot change the thoughts or the LM. Its `weight` (1, H) and `bias` (1,) are
    persistent buffers, not parameters: they are saved and loaded with the checkpoint but no optimizer sees them. An
    unfitted gate (weight 0, bias +inf, also what a checkpoint without a gate loads as) predicts an infinite
    effect: the model thinks at every position.
    """

    def __init__(self, config: QuietStarConfigMixin):
        super().__init__()
        self.register_buffer("weight", torch.zeros(1, config.hidden_size))
        self.register_buffer("bias", torch.full((1,), math.inf))

    @property
    def fitted(self) -> bool:
        """Whether the gate has been fitted (an unfitted one has an infinite bias)."""
        return bool(torch.isfinite(self.bias).all())

    def predicted_log_kl(self, base_hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) base hidden states -> (...) predicted log KL(thought-mixed || base)."""
        return nn.functional.linear(base_hidden.to(self.weight.dtype), self.weight, self.bias).squeeze(-1)

    def thinks(self, base_hidden: torch.Tensor, threshold: float) -> torch.BoolTensor:
        """(..., H) base hidden states -> (...) True where the position should think: always with `threshold` 0 or
        an unfitted gate, else where the predicted KL is at least `threshold` nats."""
        if threshold <= 0 or not self.fitted:
            return torch.ones(base_hidden.shape[:-1], dtype=torch.bool, device=base_hidden.device)
        return self.predicted_log_kl(base_hidden) >= math.log(threshold)


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

    # ----------------------------------------------------------------------------------------------- embeddings

    def embed_input_ids(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings (B, L) -> (B, L, H), with the meta tokens taking the trained thought embeddings."""
        embeds = self.model.embed_tokens(input_ids)
        start_id, end_id = self.config.start_thought_token_id, self.config.end_thought_token_id
        if start_id is None:
            return embeds
        meta = self.thought_embeddings().to(embeds.dtype)
        embeds = torch.where((input_ids == start_id).unsqueeze(-1), meta[0], embeds)
        return torch.where((input_ids == end_id).unsqueeze(-1), meta[1], embeds)

    # --------------------------------------------------------------------------------------------------- forward

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
            self._check_token_ids(input_ids)
            inputs_embeds = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        if not thinking:
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
        self._check_can_think(input_ids, thought_ids)
        if not self.training:
            return self._thinking_inference_forward(
                input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, labels, use_cache,
                logits_to_keep, thought_ids,
            )
        if past_key_values is not None:
            raise ValueError("a training forward does not take past_key_values; pass thinking=False to use a KV cache")
        return self._parallel_thinking_forward(input_ids, inputs_embeds, attention_mask, position_ids, labels, thought_ids)

    def _check_token_ids(self, input_ids: torch.LongTensor) -> None:
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"input_ids must lie in [0, vocab_size={self.config.vocab_size}); got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )

    def _check_can_think(self, input_ids: torch.LongTensor, thought_ids: torch.LongTensor | None) -> None:
        if self.config.start_thought_token_id is None or self.config.end_thought_token_id is None:
            raise ValueError(
                "the config has no start_thought_token_id/end_thought_token_id: add the meta tokens with "
                "quietstar.add_thought_tokens(model, tokenizer) first, or pass thinking=False"
            )
        length = input_ids.shape[1]
        if self.training and length <= self.config.n_ahead_talk:
            raise ValueError(
                f"sequences of length {length} are too short for n_ahead_talk={self.config.n_ahead_talk}: "
                f"training needs at least n_ahead_talk + 1 = {self.config.n_ahead_talk + 1} tokens"
            )
        if thought_ids is not None:
            batch, length = input_ids.shape
            copies = self.config.n_thoughts if self.training else 1
            sampled = self.config.n_sampled_thought_tokens
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
            self._check_token_ids(thought_ids)

    def _thinking_inference_forward(
        self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, labels, use_cache,
        logits_to_keep, thought_ids,
    ) -> QuietStarCausalLMOutput:
        """Eval-mode thinking forward of a chunk of n new tokens, with or without a KV cache.

        Into an empty cache (or without one) with more than one kept position, all positions think in parallel
        (`run_parallel_thoughts`) and the cache receives the base pass's keys and values. Otherwise the chunk extends
        the cache and each kept position thinks on the cache (`_sequential_thoughts`); a temporary cache is used when
        `use_cache` is off. Either way the cache ends up holding the real tokens only.
        """
        batch, length = input_ids.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = past_key_values
        if cache is None and use_cache:
            cache = DynamicCache(config=self.config)
        if cache is not None:
            check_thinking_cache(cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = _default_position_ids(attention_mask, batch, length, input_ids.device, past_length)
        keep = _kept_positions(logits_to_keep, length, input_ids.device)
        if past_length == 0 and keep.numel() > 1:
            passes = self.run_parallel_thoughts(
                input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                thought_ids=thought_ids,
                past_key_values=cache,
            )
            base_hidden = passes.base_hidden[:, keep]
            thought_used = self.thought_gate.thinks(base_hidden, self.config.think_threshold)
            logits, kept_thoughts, weights = self.gated_thinking_outputs(
                base_hidden,
                passes.talk_hidden[0][:, keep],
                passes.thought_ids[:, keep],
                passes.mixing_weights[0][:, keep],
                thought_used,
            )
        else:
            logits, kept_thoughts, weights, thought_used = self._sequential_thoughts(
                inputs_embeds,
                attention_mask,
                position_ids,
                cache if cache is not None else DynamicCache(config=self.config),
                keep,
                thought_ids,
            )
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return QuietStarCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=cache if use_cache else None,
            mean_mixing_weight=weights.mean().detach(),
            thought_ids=kept_thoughts,
            mixing_weights=weights,
            thought_used=thought_used,
        )

    def gated_thinking_outputs(
        self,
        base_hidden: torch.Tensor,
        mixed_hidden: torch.Tensor,
        thought_ids: torch.LongTensor,
        mixing_weights: torch.Tensor,
        thought_used: torch.BoolTensor,
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
        """The eval-mode outputs of positions that thought or were skipped by the thought gate.

        Args:
            base_hidden: (B, K, H) base hidden states; mixed_hidden: (B, K, H) thought-mixed ones.
            thought_ids: (B, K, n_thought_tokens - 2) thought content tokens; mixing_weights: (B, K).
            thought_used: (B, K) False where the position did not think.

        Returns:
            logits (B, K, V) (`thinking_logits` of the mixed state, or of the base state where the position did not
            think), thought ids (-100 where it did not think) and mixing weights (0 there).
        """
        hidden = torch.where(thought_used.unsqueeze(-1), mixed_hidden, base_hidden)
        return (
            self.thinking_logits(hidden),
            thought_ids.masked_fill(~thought_used.unsqueeze(-1), IGNORE_INDEX),
            mixing_weights.masked_fill(~thought_used, 0),
        )

    def _parallel_thinking_forward(self, input_ids, inputs_embeds, attention_mask, position_ids, labels, thought_ids):
        config = self.config
        n_thoughts = config.n_thoughts
        passes = self.run_parallel_thoughts(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            thought_ids=thought_ids,
            n_thoughts=n_thoughts,
            n_ahead_talk=config.n_ahead_talk,
        )
        if labels is None:
            labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        labels = repeat(labels, "b l -> (b n) l", n=n_thoughts)
        if attention_mask is not None:
            attention_mask = repeat(attention_mask, "b l -> (b n) l", n=n_thoughts)
        scores = look_ahead_scores(
            passes.base_hidden,
            passes.talk_hidden,
            labels,
            self.lm_head.weight,
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
            distill_loss = self.distillation_loss(passes.base_hidden, passes.talk_hidden[0], scores.talk_scored[0])
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
        self, base_hidden: torch.Tensor, mixed_hidden: torch.Tensor, scored: torch.BoolTensor
    ) -> torch.Tensor:
        """Mean over the `scored` positions of KL(thought-mixed || base) of the next-token distribution, both over
        the text vocabulary (meta tokens left out), the thought-mixed prediction a no-grad teacher.

        Args:
            base_hidden: (B', L, H) base hidden states (the student; gradients flow into them and the LM head).
            mixed_hidden: (B', L, H) hidden states of the thought-mixed prediction of the next token (the teacher).
            scored: (B', L) positions with a next-token target.
        """
        row_weights = scored.float() / scored.sum().clamp(min=1)
        loss, _ = linear_distillation_kl(
            base_hidden,
            mixed_hidden,
            self.lm_head.weight,
            row_weights,
            banned_ids=self._meta_token_ids(base_hidden.device),
            chunk_size=self.config.lm_head_chunk_size,
        )
        return loss

    def run_parallel_thoughts(
        self,
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
        (greedy at 0) in eval mode.
        The log-probabilities for REINFORCE are only computed in training mode.
        """
        config = self.config
        thought_length = config.n_thought_tokens
        batch, length = input_ids.shape
        if past_key_values is not None and (n_thoughts != 1 or past_key_values.get_seq_length() != 0):
            raise ValueError("run_parallel_thoughts fills only an empty cache, and only with n_thoughts=1")
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        tokens = repeat(input_ids, "b l -> (b n) l", n=n_thoughts)
        embeds = repeat(inputs_embeds, "b l h -> (b n) l h", n=n_thoughts)
        if attention_mask is not None:
            attention_mask = repeat(attention_mask, "b l -> (b n) l", n=n_thoughts)
        if position_ids is None:
            position_ids = _default_position_ids(attention_mask, batch * n_thoughts, length, tokens.device)
        else:
            position_ids = repeat(position_ids.expand(batch, -1), "b l -> (b n) l", n=n_thoughts)
        if thought_ids is not None and thought_ids.ndim == 4:
            if thought_ids.shape[1] != n_thoughts:
                raise ValueError(f"thought_ids has {thought_ids.shape[1]} copies per row, expected n_thoughts={n_thoughts}")
            thought_ids = rearrange(thought_ids, "b n l t -> (b n) l t")
        elif thought_ids is not None:
            thought_ids = repeat(thought_ids, "b l t -> (b n) l t", n=n_thoughts)

        key_padding_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_padding_mask = attention_mask.bool()
        store = ThoughtKVStore(key_padding_mask, resolve_attention_impl(config.attention_impl, tokens.device))

        def run_pass(pass_embeds: torch.Tensor, pass_idx: int) -> torch.Tensor:
            return self.model(
                inputs_embeds=pass_embeds,
                attention_mask=attention_mask if pass_idx == 0 else None,
                position_ids=position_ids + pass_idx,
                use_cache=False,
                thought_kv=store,
                thought_pass=pass_idx,
            ).last_hidden_state

        base_hidden = run_pass(embeds, 0)
        if past_key_values is not None:
            for layer_idx in range(config.num_hidden_layers):
                past_key_values.update(*store.base(layer_idx), layer_idx)

        meta = self.thought_embeddings().to(embeds.dtype)
        hidden = run_pass(meta[0].expand_as(embeds), 1)
        sampled_tokens, token_logprobs = [], []
        for pass_idx in range(2, thought_length):
            given = None if thought_ids is None else thought_ids[..., pass_idx - 2]
            next_tokens, logprobs = self._next_thought_tokens(hidden, given)
            if logprobs is not None:
                token_logprobs.append(logprobs)
            sampled_tokens.append(next_tokens)
            hidden = run_pass(self.model.embed_tokens(next_tokens), pass_idx)
        hidden = run_pass(meta[1].expand_as(embeds), thought_length)

        talk_hidden, mixing_weights = [], []
        for j in range(1, n_ahead_talk + 1):
            if j > 1:
                teacher_tokens = shift_left(tokens, j - 1)
                hidden = run_pass(self.model.embed_tokens(teacher_tokens), thought_length + j - 1)
            mixed_hidden, weight = self.mixing_head.mix(shift_left(base_hidden, j - 1), hidden)
            talk_hidden.append(mixed_hidden)
            mixing_weights.append(weight.squeeze(-1))

        return ParallelThoughts(
            base_hidden=base_hidden,
            talk_hidden=talk_hidden,
            mixing_weights=mixing_weights,
            thought_ids=torch.stack(sampled_tokens, dim=-1),
            thought_logprobs=torch.stack(token_logprobs, dim=-1).mean(dim=-1) if token_logprobs else None,
        )

    def thinking_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., V) of thought-mixed hidden states (..., H), as a thinking model returns them.

        The hidden states (float32 from the mixing head) are cast to the head's dtype, so a bfloat16 model returns
        bfloat16 logits as its base model does.

        The two meta tokens are set to the lowest finite value of the dtype, so they are never predicted (whatever
        the generation config suppresses) and a softmax never sees -inf - (-inf).
        """
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype))
        return logits.index_fill(-1, self._meta_token_ids(logits.device), torch.finfo(logits.dtype).min)

    def _meta_token_ids(self, device: torch.device) -> torch.LongTensor:
        return torch.tensor([self.config.start_thought_token_id, self.config.end_thought_token_id], device=device)

    def _next_thought_tokens(
        self, hidden: torch.Tensor, given: torch.LongTensor | None
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """The next thought token of every row and position, and in training its log-probability for REINFORCE.

        Tokens are drawn at `thought_temperature` in training and at `inference_thought_temperature` in eval (the
        argmax at 0); the two meta tokens are never drawn. Computed in chunks of `config.lm_head_chunk_size` rows,
        so no (rows, V) tensor is kept for backward (`chunked_lm_head.sample_thought_tokens`).

        Args:
            hidden: (..., H) output of the previous thought pass.
            given: (...) tokens to use instead of sampling, or None.

        Returns:
            tokens (...) and, in training mode, log softmax(logits / reinforce_temperature) at those tokens (...),
            fp32 with gradient; else None.
        """
        if given is not None and not self.training:
            return given, None
        return sample_thought_tokens(
            hidden,
            self.lm_head.weight,
            banned_ids=self._meta_token_ids(hidden.device),
            sample_temperature=self.config.thought_temperature if self.training else self.config.inference_thought_temperature,
            logprob_temperature=self.config.reinforce_temperature if self.training else None,
            given_tokens=given,
            chunk_size=self.config.lm_head_chunk_size,
        )


def _default_position_ids(attention_mask, rows: int, length: int, device, past_length: int = 0) -> torch.LongTensor:
    """(rows, length) positions of the last `length` tokens, counted over real tokens (so left padding works).

    `attention_mask` is (rows, past_length + length) or None; without it the positions are past_length, past_length + 1, ...
    """
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device).expand(rows, -1)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


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
