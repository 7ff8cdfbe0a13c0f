"""Each part of the Quiet-STaR loss against a hand computation, and gradients reaching every trained part."""

import math

import pytest
import torch
from reference_lm_head import unfused_sample_thought_tokens, unfused_weighted_linear_cross_entropy
from tiny import TINY_VOCAB, tiny_model

from quietstar.models.loss import (
    IGNORE_INDEX,
    complete_windows,
    look_ahead_scores,
    quietstar_loss,
    reinforce_advantage,
)


def nll(logits_row, target):
    """-log softmax(logits_row)[target], written out."""
    return -(logits_row[target] - math.log(sum(math.exp(v) for v in logits_row)))


def hand_losses(base_logits, talk_logits, thought_logprobs, rows, n_thoughts, base_weight, policy_weight):
    """The Quiet-STaR loss written out position by position, with plain Python numbers.

    `rows[r]` are the real tokens of row r (B' = len(rows) rows, right padding after them). A reward and a REINFORCE
    term exist only where all A targets x[i+1..i+A] are real tokens; the NLL terms use every real target.
    """
    n_ahead = len(talk_logits)
    b = base_logits.tolist()
    t = [lg.tolist() for lg in talk_logits]
    base_nll = {(r, i): nll(b[r][i], row[i + 1]) for r, row in enumerate(rows) for i in range(len(row) - 1)}
    thought_nll_j = []
    for j in range(1, n_ahead + 1):
        terms = [nll(t[j - 1][r][i], row[i + j]) for r, row in enumerate(rows) for i in range(len(row) - j)]
        thought_nll_j.append(sum(terms) / len(terms))
    rewards = {}
    for r, row in enumerate(rows):
        for i in range(len(row) - n_ahead):  # complete windows only
            rewards[r, i] = sum(base_nll[r, i + j - 1] - nll(t[j - 1][r][i], row[i + j]) for j in range(1, n_ahead + 1))
    policy_terms, advantages = [], []
    for (r, i), reward in rewards.items():
        group = [rewards[g, i] for g in range(r - r % n_thoughts, r - r % n_thoughts + n_thoughts)]
        advantage = max(0.0, reward - sum(group) / n_thoughts)
        advantages.append(advantage)
        policy_terms.append(-advantage * thought_logprobs[r, i].item())
    base = sum(base_nll.values()) / len(base_nll)
    thought = sum(thought_nll_j) / n_ahead
    policy = sum(policy_terms) / len(policy_terms)
    return {
        "base_nll": base,
        "thought_nll": thought,
        "policy_loss": policy,
        "mean_reward": sum(rewards.values()) / len(rewards),
        "mean_advantage": sum(advantages) / len(advantages),
        "loss": base_weight * base + (1 - base_weight) * thought + policy_weight * policy,
        "rewarded": sorted(rewards),
    }


@pytest.mark.parametrize(
    ("rows", "length", "n_ahead"),
    [
        ([[2, 0, 1, 2, 0]] * 2, 5, 2),  # no padding: the last A positions have incomplete windows
        ([[2, 0, 1, 2, 0, 1, 1]] * 2 + [[1, 2, 0]] * 2, 7, 3),  # second sequence padded, its only window cut short
        ([[2, 0, 1, 2, 0, 1, 1, 0]] * 2 + [[1, 2, 0, 0, 2]] * 2, 8, 2),  # padding after a short row
    ],
)
def test_loss_parts_match_a_hand_computation_over_complete_windows(rows, length, n_ahead):
    # B = len(rows) / 2 sequences, N = 2 thoughts, V = 3; each row is right-padded to `length` with -100 labels.
    generator = torch.Generator().manual_seed(length)
    n_rows, hidden_size = len(rows), 4
    lm_head = torch.randn(3, hidden_size, generator=generator, dtype=torch.float64)
    base_hidden = torch.randn(n_rows, length, hidden_size, generator=generator, dtype=torch.float64)
    base_hidden[1::2] = base_hidden[0::2]  # the thought copies of one sequence share the base pass
    talk_hidden = [torch.randn(n_rows, length, hidden_size, generator=generator, dtype=torch.float64) for _ in range(n_ahead)]
    thought_logprobs = -torch.rand(n_rows, length, generator=generator, dtype=torch.float64)
    labels = torch.full((n_rows, length), IGNORE_INDEX)
    for r, row in enumerate(rows):
        labels[r, : len(row)] = torch.tensor(row)
    scores = look_ahead_scores(base_hidden, talk_hidden, labels, lm_head, base_loss_weight=0.3)
    losses = quietstar_loss(scores, thought_logprobs, n_thoughts=2, policy_loss_weight=10.0, clip_negative_rewards=True)
    expected = hand_losses(
        base_hidden @ lm_head.T, [h @ lm_head.T for h in talk_hidden], thought_logprobs, rows, 2, 0.3, 10.0
    )
    assert sorted(map(tuple, scores.rewarded.nonzero().tolist())) == expected["rewarded"]
    for part in ("base_nll", "thought_nll", "policy_loss", "mean_reward", "mean_advantage", "loss"):
        assert getattr(losses, part).item() == pytest.approx(expected[part], rel=1e-9, abs=1e-12), part
    assert expected["policy_loss"] != 0


def test_complete_windows_drop_short_and_padded_windows():
    labels = torch.tensor([[5, 6, 7, 8, IGNORE_INDEX, IGNORE_INDEX], [5, IGNORE_INDEX, 7, 8, 9, 10]])
    # Row 1: position 0's window holds an ignored label; position 1 (itself ignored) has a complete window.
    expected = torch.tensor([[True, True, False, False, False, False], [False, True, True, True, False, False]])
    assert torch.equal(complete_windows(labels, 2), expected)


def test_padding_positions_get_no_reward_even_before_real_tokens():
    """Left padding: the pad position's window is real, but the position itself thinks about nothing."""
    generator = torch.Generator().manual_seed(0)
    lm_head = torch.randn(5, 4, generator=generator)
    hidden = [torch.randn(2, 6, 4, generator=generator) for _ in range(3)]
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4, 0]] * 2)
    attention_mask = torch.tensor([[0, 1, 1, 1, 1, 1]] * 2)
    without_mask = look_ahead_scores(hidden[0], hidden[1:], labels, lm_head, base_loss_weight=0.5)
    with_mask = look_ahead_scores(hidden[0], hidden[1:], labels, lm_head, attention_mask, base_loss_weight=0.5)
    assert without_mask.rewarded[:, 0].all() and not with_mask.rewarded[:, 0].any()
    assert torch.equal(with_mask.rewarded[:, 1:], without_mask.rewarded[:, 1:])
    assert (with_mask.rewards[:, 0] == 0).all()


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


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 2e-5), (torch.float64, 1e-10)])
def test_chunked_lm_head_paths_match_the_unfused_computation(monkeypatch, dtype, tolerance):
    """Loss parts and gradients of a padded N = 2 training forward: chunked (3 rows per chunk) vs full logits."""
    import quietstar.models.loss as losses_module
    import quietstar.models.thinking_parts as thinking_parts_module

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 9), generator=generator)
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[0, :2] = 0  # left padding
    attention_mask[1, -3:] = 0  # right padding
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, 2, 9, 3), generator=generator)

    def run():
        model = tiny_model(policy_loss_weight=50.0, lm_head_chunk_size=3).to(dtype).train()
        output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
        output.loss.backward()
        parts = {name: getattr(output, name) for name in ("loss", "base_loss", "thought_loss", "policy_loss", "mean_reward")}
        return parts, {name: p.grad for name, p in model.named_parameters()}

    chunked_parts, chunked_grads = run()
    monkeypatch.setattr(losses_module, "weighted_linear_cross_entropy", unfused_weighted_linear_cross_entropy)
    monkeypatch.setattr(thinking_parts_module, "sample_thought_tokens", unfused_sample_thought_tokens)
    unfused_parts, unfused_grads = run()
    assert chunked_parts["policy_loss"] != 0
    for name, value in unfused_parts.items():
        torch.testing.assert_close(chunked_parts[name], value, rtol=tolerance, atol=tolerance, msg=name)
    for name, grad in unfused_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=tolerance, atol=tolerance, msg=name)


def test_chunk_size_does_not_change_the_loss():
    results = []
    for chunk_size in (1, 7, 4096):
        model = tiny_model(lm_head_chunk_size=chunk_size).double().train()
        torch.manual_seed(3)
        results.append(model(torch.randint(0, TINY_VOCAB - 2, (2, 8))).loss.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0], results[2], rtol=1e-12, atol=1e-12)



def rewards_of(model, input_ids, thought_ids, autocast=False):
    """(B * N, L) rewards of a training forward of `model` with the given thoughts (N = 2, A = 3)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        passes = model.run_parallel_thoughts(input_ids, thought_ids=thought_ids, n_thoughts=2, n_ahead_talk=3)
        scores = look_ahead_scores(
            passes.base_hidden,
            passes.talk_hidden,
            input_ids.repeat_interleave(2, dim=0),
            model.lm_head.weight,
            base_loss_weight=0.5,
            chunk_size=5,
        )
    assert scores.rewards.dtype == torch.float32 and passes.talk_hidden[0].dtype == torch.float32
    return scores.rewards


@pytest.mark.parametrize("setting", ["bfloat16 parameters", "autocast"])
def test_bfloat16_rewards_agree_with_float32_rewards(setting, monkeypatch):
    """The same model and thoughts in bf16 and in fp32 (the oracle): every reward agrees to 5% of the largest one.

    The tolerance is meaningful: with the head multiplying in bf16 instead (as it did), the same check fails.
    """
    import quietstar.models.lm_head as head_module

    model = tiny_model(n_thought_tokens=4, n_ahead_talk=3).train()
    with torch.no_grad():  # mixing weights w of order 1e-3, as after some training
        model.mixing_head.output.weight.normal_(std=2e-3, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 24), generator=generator)
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, 2, 24, 2), generator=generator)
    reference = rewards_of(model, input_ids, thought_ids)
    tolerance = 0.05 * reference.abs().max()
    assert tolerance > 1e-6

    def bf16_rewards():
        if setting == "autocast":
            return rewards_of(model, input_ids, thought_ids, autocast=True)
        return rewards_of(model.to(torch.bfloat16), input_ids, thought_ids)

    torch.testing.assert_close(bf16_rewards(), reference, rtol=0, atol=tolerance)
    model.float()
    monkeypatch.setattr(head_module, "_matmul_dtype", lambda hidden, weight: torch.bfloat16)
    assert (bf16_rewards() - reference).abs().max() > tolerance
