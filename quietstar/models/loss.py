"""The Quiet-STaR training objective.

Shapes: B' = B * N rows (each sequence repeated N = n_thoughts times, thought copies adjacent: row b * N + n),
L positions, H hidden size, V vocabulary, A = n_ahead_talk look-ahead targets. Position i with look-ahead j (1..A)
predicts x[i + j]; a target is ignored where the shifted label is -100 or falls past the end of the sequence. A
position gets a reward and a REINFORCE term only when all A targets of its window exist (`complete_windows`).
"""

from dataclasses import dataclass

import torch
from einops import rearrange

from .lm_head import DEFAULT_CHUNK_SIZE, weighted_linear_cross_entropy

IGNORE_INDEX = -100


@dataclass
class QuietStarLosses:
    """The loss and its parts (all scalars).

    - `loss`: base_loss_weight * base_nll + (1 - base_loss_weight) * thought_nll + policy_loss_weight * policy_loss
    - `base_nll`: mean next-token NLL of the plain (no thought) prediction
    - `thought_nll`: mean over j of the mean NLL of x[i + j] under the thought-mixed logits
    - `policy_loss`: mean over the positions with a complete look-ahead window of -advantage * mean log-prob of the
      sampled thought tokens
    - `mean_reward`: mean of the reward over the same positions (detached)
    - `mean_advantage`: mean of the advantage after clipping over the same positions (detached)
    """

    loss: torch.Tensor
    base_nll: torch.Tensor
    thought_nll: torch.Tensor
    policy_loss: torch.Tensor
    mean_reward: torch.Tensor
    mean_advantage: torch.Tensor


def shift_left(tensor: torch.Tensor, steps: int, fill_value=0) -> torch.Tensor:
    """`out[:, i] = tensor[:, i + steps]`, with `fill_value` where i + steps runs past the end (dim 1)."""
    if steps == 0:
        return tensor
    filler = tensor.new_full((tensor.shape[0], steps, *tensor.shape[2:]), fill_value)
    return torch.cat([tensor[:, steps:], filler], dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is True; 0 when nothing is selected."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def reinforce_advantage(rewards: torch.Tensor, n_thoughts: int, clip_negative: bool) -> torch.Tensor:
    """(B * N, L) rewards -> advantages: reward minus the mean over the N thoughts of the same position.

    Before clipping the advantages of one position sum to zero; with `clip_negative` only the positive part is kept.
    """
    grouped = rearrange(rewards, "(b n) l -> b n l", n=n_thoughts)
    advantage = grouped - grouped.mean(dim=1, keepdim=True)
    if clip_negative:
        advantage = advantage.clamp(min=0)
    return rearrange(advantage, "b n l -> (b n) l")


def complete_windows(labels: torch.Tensor, n_ahead_talk: int) -> torch.Tensor:
    """(B', L) bool: the whole look-ahead window x[i + 1 .. i + A] of position i exists and has no ignored label.

    Only these positions get a reward and a REINFORCE term: the reward is defined on the next A real tokens, so a
    window cut short by the end of the row or by padding would measure something else.
    """
    complete = torch.ones_like(labels, dtype=torch.bool)
    for j in range(1, n_ahead_talk + 1):
        complete &= shift_left(labels, j, IGNORE_INDEX) != IGNORE_INDEX
    return complete


@dataclass
class LookAheadScores:
    """Per-position NLLs of the base and thought-mixed predictions, the reward of each thought, and the NLL loss.

    - `base_nll`: (B', L) NLL of x[i + 1] under the base logits (0 where the target is ignored), detached
    - `talk_nll`: A tensors (B', L); `talk_nll[j - 1]` is the NLL of x[i + j] under the mixed logits, detached
    - `talk_scored`: A bool tensors (B', L), where `talk_nll[j - 1]` has a target
    - `rewarded`: (B', L) bool, the real positions whose whole window x[i + 1 .. i + A] is real
      (`complete_windows`)
    - `rewards`: (B', L) sum over j = 1..A of (base NLL of x[i + j]) - (mixed NLL of x[i + j]), detached: how much
      the thought at position i helped predict the next A tokens; 0 outside `rewarded`
    - `nll_loss`: scalar, base_loss_weight * (mean of `base_nll` over the scored positions) + (1 - base_loss_weight)
      * (mean over j of the mean of `talk_nll[j - 1]` over its scored positions); the only differentiable field
    """

    base_nll: torch.Tensor
    talk_nll: list[torch.Tensor]
    talk_scored: list[torch.Tensor]
    rewarded: torch.Tensor
    rewards: torch.Tensor
    nll_loss: torch.Tensor


def look_ahead_scores(
    base_hidden: torch.Tensor,
    talk_hidden: list[torch.Tensor],
    labels: torch.Tensor,
    lm_head_weight: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    base_loss_weight: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LookAheadScores:
    """Score the base pass and the A look-ahead predictions of every position.

    The NLLs, and so the rewards, are computed in float32 (float64 for float64 inputs) whatever the dtype of the
    hidden states and the head (`weighted_linear_cross_entropy`): a reward is a difference of two NLLs of the same
    token, far below bfloat16's resolution.

    Args:
        base_hidden: (B', L, H) final hidden states of the base pass; position i predicts x[i + 1].
        talk_hidden: A tensors (B', L, H); `talk_hidden[j - 1]` at position i is the thought-mixed hidden state
            that predicts x[i + j].
        labels: (B', L) token ids, -100 where no loss is wanted; `labels[i]` is the target x[i].
        lm_head_weight: (V, H) the output embedding.
        attention_mask: (B', L) 1 for real tokens, 0 for padding, or None. A padding position thinks about nothing,
            so it gets no reward even when the tokens after it are real (left padding).
        base_loss_weight: weight of the base NLL in `nll_loss` (the mixed NLLs get 1 - base_loss_weight).
        chunk_size: rows whose logits are materialised at once. All A + 1 passes are scored by one
            `weighted_linear_cross_entropy`: each row's weight in `nll_loss` depends on the label mask only, so its
            gradient is computed in this call and no (rows, V) tensor is kept for backward.
    """
    n_ahead = len(talk_hidden)
    talk_targets = [shift_left(labels, j, IGNORE_INDEX) for j in range(1, n_ahead + 1)]
    targets = [talk_targets[0], *talk_targets]  # the base pass predicts x[i + 1], as the first look-ahead does
    scored = [target != IGNORE_INDEX for target in targets]
    pass_weights = [base_loss_weight] + [(1 - base_loss_weight) / n_ahead] * n_ahead
    dtype = torch.promote_types(base_hidden.dtype, torch.float32)
    row_weights = [mask.to(dtype) * weight / mask.sum().clamp(min=1).to(dtype) for weight, mask in zip(pass_weights, scored)]
    nll_loss, nll = weighted_linear_cross_entropy(
        torch.stack([base_hidden.to(dtype), *(hidden.to(dtype) for hidden in talk_hidden)]),
        lm_head_weight,
        torch.stack(targets),
        torch.stack(row_weights),
        ignore_index=IGNORE_INDEX,
        chunk_size=chunk_size,
    )
    base_nll, talk_nll = nll[0], list(nll[1:])
    rewarded = complete_windows(labels, n_ahead)
    if attention_mask is not None:
        rewarded &= attention_mask.bool()
    rewards = torch.zeros_like(base_nll)
    for j, mixed_nll in enumerate(talk_nll, start=1):
        base_nll_of_same_target = shift_left(base_nll, j - 1)
        rewards = rewards + (base_nll_of_same_target - mixed_nll) * rewarded
    return LookAheadScores(
        base_nll=base_nll,
        talk_nll=talk_nll,
        talk_scored=scored[1:],
        rewarded=rewarded,
        rewards=rewards,
        nll_loss=nll_loss,
    )


def quietstar_loss(
    scores: LookAheadScores,
    thought_logprobs: torch.Tensor,
    *,
    n_thoughts: int,
    policy_loss_weight: float,
    clip_negative_rewards: bool,
) -> QuietStarLosses:
    """Combine the scores of one parallel-thought forward into the Quiet-STaR loss.

    Args:
        scores: the per-position NLLs, rewards and weighted NLL loss of `look_ahead_scores` (rows b * N + n).
        thought_logprobs: (B', L) mean over the sampled thought tokens of position i of their log-probability at
            the REINFORCE temperature (carries the gradient of the policy term).

    The NLL terms average over every position with a target; the REINFORCE term, the reward and the advantage
    average over the positions with a complete look-ahead window (`scores.rewarded`) only.
    """
    base_nll = masked_mean(scores.base_nll, scores.talk_scored[0])
    thought_nll = torch.stack(
        [masked_mean(nll, valid) for nll, valid in zip(scores.talk_nll, scores.talk_scored)]
    ).mean()
    advantage = reinforce_advantage(scores.rewards, n_thoughts, clip_negative_rewards)
    policy_loss = masked_mean(-advantage * thought_logprobs, scores.rewarded)
    loss = scores.nll_loss + policy_loss_weight * policy_loss
    return QuietStarLosses(
        loss=loss,
        base_nll=base_nll,
        thought_nll=thought_nll,
        policy_loss=policy_loss.detach(),
        mean_reward=masked_mean(scores.rewards, scores.rewarded),
        mean_advantage=masked_mean(advantage, scores.rewarded),
    )
