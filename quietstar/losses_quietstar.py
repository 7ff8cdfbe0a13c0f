"""The Quiet-STaR training objective (DESIGN.md section 2, step 10).

Shapes: B' = B * N rows (each sequence repeated N = n_thoughts times, thought copies adjacent: row b * N + n),
L positions, V vocabulary, A = n_ahead_talk look-ahead targets. Position i with look-ahead j (1..A) predicts
x[i + j]; a target is ignored where the shifted label is -100 or falls past the end of the sequence.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

IGNORE_INDEX = -100


@dataclass
class QuietStarLosses:
    """The loss and its parts (all scalars).

    - `loss`: base_loss_weight * base_nll + (1 - base_loss_weight) * thought_nll + policy_loss_weight * policy_loss
    - `base_nll`: mean next-token NLL of the plain (no thought) prediction
    - `thought_nll`: mean over j of the mean NLL of x[i + j] under the thought-mixed logits
    - `policy_loss`: mean over positions of -advantage * mean log-prob of the sampled thought tokens
    - `mean_reward`: mean over positions of the reward (detached)
    - `mean_advantage`: mean over positions of the advantage after clipping (detached)
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


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B', L, V) logits and (B', L) targets -> (B', L) NLL, 0 where the target is ignored. Computed in fp32."""
    nll = F.cross_entropy(
        rearrange(logits.float(), "b l v -> (b l) v"),
        rearrange(targets, "b l -> (b l)"),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return nll.view_as(targets)


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


@dataclass
class LookAheadScores:
    """Per-position NLLs of the base and thought-mixed predictions, and the reward of each thought.

    - `base_nll`: (B', L) NLL of x[i + 1] under the base logits (0 where the target is ignored)
    - `talk_nll`: A tensors (B', L); `talk_nll[j - 1]` is the NLL of x[i + j] under the mixed logits
    - `talk_scored`: A bool tensors (B', L), where `talk_nll[j - 1]` has a target
    - `rewards`: (B', L) sum over scored j of (base NLL of x[i + j]) - (mixed NLL of x[i + j]), detached: how much
      the thought at position i helped predict the next tokens
    """

    base_nll: torch.Tensor
    talk_nll: list[torch.Tensor]
    talk_scored: list[torch.Tensor]
    rewards: torch.Tensor


def look_ahead_scores(base_logits: torch.Tensor, talk_logits: list[torch.Tensor], labels: torch.Tensor) -> LookAheadScores:
    """Score the base pass and the A look-ahead predictions of every position (shapes as in `quietstar_loss`)."""
    base_nll = token_nll(base_logits, shift_left(labels, 1, IGNORE_INDEX))
    talk_nll, talk_scored = [], []
    rewards = torch.zeros_like(base_nll)
    for j, logits in enumerate(talk_logits, start=1):
        targets = shift_left(labels, j, IGNORE_INDEX)
        scored = targets != IGNORE_INDEX
        nll = token_nll(logits, targets)
        base_nll_of_same_target = shift_left(base_nll, j - 1)
        rewards = rewards + (base_nll_of_same_target - nll).detach() * scored
        talk_nll.append(nll)
        talk_scored.append(scored)
    return LookAheadScores(base_nll=base_nll, talk_nll=talk_nll, talk_scored=talk_scored, rewards=rewards.detach())


def quietstar_loss(
    base_logits: torch.Tensor,
    talk_logits: list[torch.Tensor],
    thought_logprobs: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_thoughts: int,
    base_loss_weight: float,
    policy_loss_weight: float,
    clip_negative_rewards: bool,
) -> QuietStarLosses:
    """Combine the passes of one parallel-thought forward into the Quiet-STaR loss.

    Args:
        base_logits: (B', L, V) logits of the base pass; position i predicts x[i + 1].
        talk_logits: A tensors (B', L, V); `talk_logits[j - 1]` at position i are the thought-mixed logits for
            x[i + j].
        thought_logprobs: (B', L) mean over the sampled thought tokens of position i of their log-probability at
            the REINFORCE temperature (carries the gradient of the policy term).
        labels: (B', L) token ids, -100 where no loss is wanted (padding); `labels[i]` is the target x[i] (the
            usual causal-LM convention: the shift happens here).
    """
    scores = look_ahead_scores(base_logits, talk_logits, labels)
    scored = scores.talk_scored[0]  # positions with a next-token target x[i + 1]
    base_nll = masked_mean(scores.base_nll, scored)
    thought_nll = torch.stack(
        [masked_mean(nll, valid) for nll, valid in zip(scores.talk_nll, scores.talk_scored)]
    ).mean()
    rewards = scores.rewards
    advantage = reinforce_advantage(rewards, n_thoughts, clip_negative_rewards)
    policy_loss = masked_mean(-advantage * thought_logprobs, scored)
    loss = base_loss_weight * base_nll + (1 - base_loss_weight) * thought_nll + policy_loss_weight * policy_loss
    return QuietStarLosses(
        loss=loss,
        base_nll=base_nll.detach(),
        thought_nll=thought_nll.detach(),
        policy_loss=policy_loss.detach(),
        mean_reward=masked_mean(rewards, scored),
        mean_advantage=masked_mean(advantage, scored),
    )
