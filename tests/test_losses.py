"""Each part of the Quiet-STaR loss against a hand computation, and gradients reaching every trained part."""

import math

import pytest
import torch
from tiny import TINY_VOCAB, tiny_model

from quietstar.losses_quietstar import IGNORE_INDEX, quietstar_loss, reinforce_advantage


def nll(logits_row, target):
    """-log softmax(logits_row)[target], written out."""
    return -(logits_row[target] - math.log(sum(math.exp(v) for v in logits_row)))


def test_loss_parts_match_a_hand_computation():
    # B = 1 sequence, N = 2 thoughts, L = 4, V = 3, A = 2; the last token of the sequence is padding.
    generator = torch.Generator().manual_seed(0)
    base_logits = torch.randn(2, 4, 3, generator=generator)
    base_logits[1] = base_logits[0]  # both thought copies share the base pass
    talk_logits = [torch.randn(2, 4, 3, generator=generator) for _ in range(2)]
    thought_logprobs = -torch.rand(2, 4, generator=generator)
    labels = torch.tensor([[2, 0, 1, IGNORE_INDEX]] * 2)
    losses = quietstar_loss(
        base_logits,
        talk_logits,
        thought_logprobs,
        labels,
        n_thoughts=2,
        base_loss_weight=0.3,
        policy_loss_weight=10.0,
        clip_negative_rewards=True,
    )

    seq = [2, 0, 1]  # real tokens
    b = base_logits.tolist()
    base_nll_at = {i: nll(b[0][i], seq[i + 1]) for i in range(2)}  # position i predicts x[i+1]; 2 scored positions
    expected_base = sum(base_nll_at.values()) / 2
    t = [lg.tolist() for lg in talk_logits]
    thought_nll_j = []
    rewards = [[0.0] * 4 for _ in range(2)]
    for j in (1, 2):
        terms = []
        for n in range(2):
            for i in range(4):
                if i + j < 3:  # target x[i + j] is a real token
                    value = nll(t[j - 1][n][i], seq[i + j])
                    terms.append(value)
                    rewards[n][i] += base_nll_at[i + j - 1] - value
        thought_nll_j.append(sum(terms) / len(terms))
    expected_thought = sum(thought_nll_j) / 2
    policy_terms = []
    for n in range(2):
        for i in range(2):  # positions with a next-token target
            advantage = max(0.0, rewards[n][i] - (rewards[0][i] + rewards[1][i]) / 2)
            policy_terms.append(-advantage * thought_logprobs[n, i].item())
    expected_policy = sum(policy_terms) / len(policy_terms)
    expected_reward = sum(rewards[n][i] for n in range(2) for i in range(2)) / 4

    assert losses.base_nll.item() == pytest.approx(expected_base, rel=1e-5)
    assert losses.thought_nll.item() == pytest.approx(expected_thought, rel=1e-5)
    assert losses.policy_loss.item() == pytest.approx(expected_policy, rel=1e-5, abs=1e-7)
    assert losses.mean_reward.item() == pytest.approx(expected_reward, rel=1e-5, abs=1e-7)
    assert expected_policy != 0
    expected_loss = 0.3 * expected_base + 0.7 * expected_thought + 10.0 * expected_policy
    assert losses.loss.item() == pytest.approx(expected_loss, rel=1e-5)


def test_advantage_has_zero_mean_per_position_before_clipping():
    rewards = torch.randn(3 * 4, 5)  # B = 3, N = 4
    advantage = reinforce_advantage(rewards, n_thoughts=4, clip_negative=False).view(3, 4, 5)
    torch.testing.assert_close(advantage.sum(dim=1), torch.zeros(3, 5), atol=1e-6, rtol=0)
    clipped = reinforce_advantage(rewards, n_thoughts=4, clip_negative=True).view(3, 4, 5)
    assert torch.equal(clipped, advantage.clamp(min=0)) and (clipped > 0).any()


def test_gradients_reach_meta_embeddings_mixing_head_and_lm_weights():
    model = tiny_model().train()
    torch.manual_seed(0)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 10))
    output = model(input_ids)
    assert output.policy_loss != 0 and output.mean_reward != 0
    output.loss.backward()
    grads = dict(model.named_parameters())
    for name in (
        "thought_embeddings.weight",
        "mixing_head.input.weight",
        "mixing_head.hidden.weight",
        "mixing_head.output.weight",
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "lm_head.weight",
    ):
        grad = grads[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    for part in ("base_loss", "thought_loss", "policy_loss", "mean_reward", "mean_advantage", "mean_mixing_weight"):
        assert getattr(output, part).ndim == 0 and torch.isfinite(getattr(output, part)), part


def test_training_loss_is_the_weighted_sum_of_its_parts():
    model = tiny_model(policy_loss_weight=3.0, base_loss_weight=0.25).train()
    torch.manual_seed(1)
    output = model(torch.randint(0, TINY_VOCAB - 2, (2, 9)))
    expected = 0.25 * output.base_loss + 0.75 * output.thought_loss + 3.0 * output.policy_loss
    torch.testing.assert_close(output.loss.detach(), expected)
