"""The parts Quiet-STaR adds to a causal LM, and `ThinkingParts`, the one view of a model the thinking code uses.

New modules (their parameter and buffer names are the checkpoint's keys: `thought_embeddings.weight`,
`mixing_head.{input,hidden,output}.*`, `thought_gate.{weight,bias}`):

- `QuietStarThoughtEmbeddings`: the input embeddings of `<|startofthought|>` and `<|endofthought|>`
- `QuietStarMixingHead`: the MLP that mixes a position's base and thought hidden states
- `QuietStarThoughtGate`: the fitted linear head that predicts whether thinking would change a prediction
- `ZeroInitLinear`: the mixing head's output layer, which starts at zero

`ThinkingParts` bundles these with the family's decoder, its LM head and the config, and implements what every
thinking pass needs from them (the meta-token embeddings, sampling the next thought token, thought-mixed logits, the
thought gate's choice). The parallel passes (`parallel_thoughts`) and thinking on a KV cache (`cached_thinking`) are
functions of a `ThinkingParts`, so they depend on these parts explicitly rather than on attributes of a model class
that subclasses them; `QuietStarModelMixin.thinking_parts()` builds it from the model.

`QuietStarCausalLMOutput` is what the thinking forward returns; `KeptThoughts` is what an eval-mode thinking path
hands back to the forward before the gate picks the logits.

This module keeps relative imports only: it is copied next to a checkpoint's modeling code for
`trust_remote_code=True`.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_quietstar import QuietStarConfigMixin
from .lm_head import sample_thought_tokens
from .loss import IGNORE_INDEX


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


@dataclass
class KeptThoughts:
    """The thinking of the K positions whose logits an eval-mode forward returns (B rows).

    - `base_hidden`: (B, K, H) base hidden states; `mixed_hidden`: (B, K, H) thought-mixed ones
    - `thought_ids`: (B, K, n_thought_tokens - 2) thought content tokens; `mixing_weights`: (B, K)
    - `thought_used`: (B, K) the thought gate's choice; False where the position's thought is to be ignored
    """

    base_hidden: torch.Tensor
    mixed_hidden: torch.Tensor
    thought_ids: torch.LongTensor
    mixing_weights: torch.Tensor
    thought_used: torch.BoolTensor


@dataclass
class ThinkingParts:
    """The parts of a thinking model that the thinking passes use, passed explicitly.

    - `config`: the model's config (a family config with `QuietStarConfigMixin`)
    - `decoder`: the family's decoder (`model.model`: token embeddings, layers with thought attention, final norm)
    - `lm_head`: the (V, H) output head; `thought_embeddings`, `mixing_head`, `thought_gate`: the new parts
    - `training`: whether the model is in training mode (it sets the thought temperatures)
    """

    config: QuietStarConfigMixin
    decoder: nn.Module
    lm_head: nn.Linear
    thought_embeddings: QuietStarThoughtEmbeddings
    mixing_head: QuietStarMixingHead
    thought_gate: QuietStarThoughtGate
    training: bool

    def meta_token_ids(self, device: torch.device) -> torch.LongTensor:
        """(2,) the ids of `<|startofthought|>` and `<|endofthought|>`."""
        return torch.tensor([self.config.start_thought_token_id, self.config.end_thought_token_id], device=device)

    def embed_input_ids(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings (B, L) -> (B, L, H), with the meta tokens taking the trained thought embeddings."""
        embeds = self.decoder.embed_tokens(input_ids)
        start_id, end_id = self.config.start_thought_token_id, self.config.end_thought_token_id
        if start_id is None:
            return embeds
        meta = self.thought_embeddings().to(embeds.dtype)
        embeds = torch.where((input_ids == start_id).unsqueeze(-1), meta[0], embeds)
        return torch.where((input_ids == end_id).unsqueeze(-1), meta[1], embeds)

    def thinking_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., V) of thought-mixed hidden states (..., H), as a thinking model returns them.

        The hidden states (float32 from the mixing head) are cast to the head's dtype, so a bfloat16 model returns
        bfloat16 logits as its base model does.

        The two meta tokens are set to the lowest finite value of the dtype, so they are never predicted (whatever
        the generation config suppresses) and a softmax never sees -inf - (-inf).
        """
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype))
        return logits.index_fill(-1, self.meta_token_ids(logits.device), torch.finfo(logits.dtype).min)

    def next_thought_tokens(
        self, hidden: torch.Tensor, given: torch.LongTensor | None
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """The next thought token of every row and position, and in training its log-probability for REINFORCE.

        Tokens are drawn at `thought_temperature` in training and at `inference_thought_temperature` in eval (the
        argmax at 0); the two meta tokens are never drawn. Computed in chunks of `config.lm_head_chunk_size` rows,
        so no (rows, V) tensor is kept for backward (`lm_head.sample_thought_tokens`).

        Args:
            hidden: (..., H) output of the previous thought pass.
            given: (...) tokens to use instead of sampling, or None.

        Returns:
            tokens (...) and, in training mode, log softmax(logits / reinforce_temperature) at those tokens (...),
            fp32 with gradient; else None.
        """
        if given is not None and not self.training:
            return given, None
        config = self.config
        return sample_thought_tokens(
            hidden,
            self.lm_head.weight,
            banned_ids=self.meta_token_ids(hidden.device),
            sample_temperature=config.thought_temperature if self.training else config.inference_thought_temperature,
            logprob_temperature=config.reinforce_temperature if self.training else None,
            given_tokens=given,
            chunk_size=config.lm_head_chunk_size,
        )

    def gated_outputs(self, kept: KeptThoughts) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
        """The eval-mode outputs of positions that thought or were skipped by the thought gate (adaptive thinking).

        Returns logits (B, K, V) (`thinking_logits` of the mixed state, or of the base state where the position did
        not think), thought ids (-100 where it did not think) and mixing weights (0 there).
        """
        skipped = ~kept.thought_used
        hidden = torch.where(kept.thought_used.unsqueeze(-1), kept.mixed_hidden, kept.base_hidden)
        return (
            self.thinking_logits(hidden),
            kept.thought_ids.masked_fill(skipped.unsqueeze(-1), IGNORE_INDEX),
            kept.mixing_weights.masked_fill(skipped, 0),
        )


__all__ = [
    "KeptThoughts",
    "QuietStarCausalLMOutput",
    "QuietStarMixingHead",
    "QuietStarThoughtEmbeddings",
    "QuietStarThoughtGate",
    "ThinkingParts",
    "ZeroInitLinear",
]
