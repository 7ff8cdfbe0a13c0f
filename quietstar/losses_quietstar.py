"""The Quiet-STaR training objective.

Shapes: B' = B * N rows (each sequence repeated N = n_thoughts times, thought copies adjacent: row b * N + n),
L positions, H hidden size, V vocabulary, A = n_ahead_talk look-ahead targets. Position i with look-ahead j (1..A)
predicts x[i + j]; a target is ignored where the shifted label is -100 or falls past the end of the sequence. A
position gets a reward and a REINFORCE term only when all A targets of its window exist (`complete_windows`).
"""

from dataclasses import dataclass

import torch
from einops import rearrange

from .chunked_lm_head import DEFAULT_CHUNK_SIZE, linear_cross_entropy

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
    """Per-position NLLs of the base and thought-mixed predictions, and the reward of each thought.

    - `base_nll`: (B', L) NLL of x[i + 1] under the base logits (0 where the target is ignored)
    - `talk_nll`: A tensors (B', L); `talk_nll[j - 1]` is the NLL of x[i + j] under the mixed logits
    - `talk_scored`: A bool tensors (B', L), where `talk_nll[j - 1]` has a target
    - `rewarded`: (B', L) bool, the real positions whose whole window x[i + 1 .. i + A] is real
      (`complete_windows`)
    - `rewards`: (B', L) sum over j = 1..A of (base NLL of x[i + j]) - (mixed NLL of x[i + j]), detached: how much
      the thought at position i helped predict the next A tokens; 0 outside `rewarded`
    """

    base_nll: torch.Tensor
    talk_nll: list[torch.Tensor]
    talk_scored: list[torch.Tensor]
    rewarded: torch.Tensor
    rewards: torch.Tensor


def look_ahead_scores(
    base_hidden: torch.Tensor,
    talk_hidden: list[torch.Tensor],
    labels: torch.Tensor,
    lm_head_weight: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LookAheadScores:
    """Score the base pass and the A look-ahead predictions of every position.

    Args:
        base_hidden: (B', L, H) final hidden states of the base pass; position i predicts x[i + 1].
        talk_hidden: A tensors (B', L, H); `talk_hidden[j - 1]` at position i is the thought-mixed hidden state
            that predicts x[i + j].
        labels: (B', L) token ids, -100 where no loss is wanted; `labels[i]` is the target x[i].
        lm_head_weight: (V, H) the output embedding.
        attention_mask: (B', L) 1 for real tokens, 0 for padding, or None. A padding position thinks about nothing,
            so it gets no reward even when the tokens after it are real (left padding).
        chunk_size: rows whose logits are materialised at once; the NLLs come from `linear_cross_entropy`, which
            keeps no (rows, V) tensor for backward.
    """
    base_nll = linear_cross_entropy(
        base_hidden, lm_head_weight, shift_left(labels, 1, IGNORE_INDEX), ignore_index=IGNORE_INDEX, chunk_size=chunk_size
    )
    rewarded = complete_windows(labels, len(talk_hidden))
    if attention_mask is not None:
        rewarded &= attention_mask.bool()
    talk_nll, talk_scored = [], []
    rewards = torch.zeros_like(base_nll)
    for j, hidden in enumerate(talk_hidden, start=1):
        targets = shift_left(labels, j, IGNORE_INDEX)
        nll = linear_cross_entropy(hidden, lm_head_weight, targets, ignore_index=IGNORE_INDEX, chunk_size=chunk_size)
        base_nll_of_same_target = shift_left(base_nll, j - 1)
        rewards = rewards + (base_nll_of_same_target - nll).detach() * rewarded
        talk_nll.append(nll)
        talk_scored.append(targets != IGNORE_INDEX)
    return LookAheadScores(
        base_nll=base_nll, talk_nll=talk_nll, talk_scored=talk_scored, rewarded=rewarded, rewards=rewards.detach()
    )


def quietstar_loss(
    scores: LookAheadScores,
    thought_logprobs: torch.Tensor,
    *,
    n_thoughts: int,
    base_loss_weight: float,
    policy_loss_weight: float,
    clip_negative_rewards: bool,
) -> QuietStarLosses:
    """Combine the scores of one parallel-thought forward into the Quiet-STaR loss.

    Args:
        scores: the per-position NLLs and rewards of `look_ahead_scores` (rows b * N + n).
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
    loss = base_loss_weight * base_nll + (1 - base_loss_weight) * thought_nll + policy_loss_weight * policy_loss
    return QuietStarLosses(
        loss=loss,
        base_nll=base_nll.detach(),
        thought_nll=thought_nll.detach(),
        policy_loss=policy_loss.detach(),
        mean_reward=masked_mean(scores.rewards, scores.rewarded),
        mean_advantage=masked_mean(advantage, scores.rewarded),
    )
