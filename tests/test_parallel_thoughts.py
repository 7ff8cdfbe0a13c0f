"""Parallel thoughts against the sequential oracle: a plain causal forward of each prefix followed by its thought."""

import pytest
import torch
from tiny import END_ID, START_ID, TINY_VOCAB, tiny_config, tiny_model
from transformers import MistralForCausalLM

from quietstar import QuietStarForCausalLM


def sequential_hidden(model, token_ids: list[int]) -> torch.Tensor:
    """Final (post-norm) hidden states (len, H) of a plain causal forward of one sequence (meta tokens embedded)."""
    ids = torch.tensor([token_ids])
    return model.model(inputs_embeds=model.embed_input_ids(ids)).last_hidden_state[0]


def oracle_talk_logits(model, row: list[int], thought: list[int], i: int, j: int) -> torch.Tensor:
    """Mixed logits for x[i + j] from position i: think after x[0..i], then read x[i+1..i+j-1] (teacher forcing)."""
    plain = sequential_hidden(model, row[: i + j])
    with_thought = sequential_hidden(model, row[: i + 1] + [START_ID, *thought, END_ID] + row[i + 1 : i + j])
    h_base, h_thought = plain[i + j - 1], with_thought[-1]
    weight = model.mixing_head(h_base, h_thought)
    return model.lm_head((1 - weight) * h_base + weight * h_thought)


def padded_batch(length: int, thought_tokens: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, length - 2 :] = 0  # right padding on the second row
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, length, thought_tokens - 2), generator=generator)
    return input_ids, attention_mask, thought_ids


@pytest.mark.parametrize(("length", "thought_tokens", "n_ahead_talk"), [(7, 3, 1), (9, 5, 3), (6, 6, 2)])
def test_parallel_thoughts_match_sequential_oracle(length, thought_tokens, n_ahead_talk):
    model = tiny_model(n_thought_tokens=thought_tokens, n_ahead_talk=n_ahead_talk).eval()
    input_ids, attention_mask, thought_ids = padded_batch(length, thought_tokens, seed=length)
    with torch.no_grad():
        logits = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids).logits
        passes = model.run_parallel_thoughts(
            input_ids, attention_mask=attention_mask, thought_ids=thought_ids, n_ahead_talk=n_ahead_talk
        )
        assert torch.equal(passes.thought_ids, thought_ids)
        checked = 0
        for b in range(2):
            row = input_ids[b].tolist()
            valid_length = int(attention_mask[b].sum())
            for i in range(valid_length):
                thought = thought_ids[b, i].tolist()
                expected = oracle_talk_logits(model, row, thought, i, 1)
                torch.testing.assert_close(logits[b, i], expected, rtol=1e-4, atol=1e-4)
                for j in range(1, n_ahead_talk + 1):
                    if i + j - 1 < valid_length:
                        expected = oracle_talk_logits(model, row, thought, i, j)
                        torch.testing.assert_close(passes.talk_logits[j - 1][b, i], expected, rtol=1e-4, atol=1e-4)
                        checked += 1
    assert checked >= length  # every look-ahead depth was exercised on real tokens


def test_thoughts_change_the_prediction():
    """The oracle test is only meaningful if thinking moves the logits away from the base model's."""
    model = tiny_model().eval()
    input_ids, _, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=1)
    with torch.no_grad():
        thinking = model(input_ids, thought_ids=thought_ids).logits
        plain = model(input_ids, thinking=False).logits
    assert (thinking - plain).abs().max() > 1e-2


def test_at_init_logits_equal_the_base_mistral_model():
    torch.manual_seed(0)
    config = tiny_config()
    model = QuietStarForCausalLM(config).eval()
    assert torch.count_nonzero(model.mixing_head.output.weight) == 0
    base = MistralForCausalLM(config).eval()
    missing, unexpected = base.load_state_dict(model.state_dict(), strict=False)
    assert not missing and set(unexpected) == {k for k in model.state_dict() if k.startswith(("mixing_head", "thought_"))}
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 10))
    with torch.no_grad():
        thinking = model(input_ids).logits
        greedy_weight = model(input_ids).mean_mixing_weight
        expected = base(input_ids).logits
    assert greedy_weight == 0
    torch.testing.assert_close(thinking, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(input_ids, thinking=False).logits, expected)


def test_thinking_false_config_is_the_base_model():
    model = tiny_model(thinking=False).eval()
    base = MistralForCausalLM(model.config).eval()
    base.load_state_dict(model.state_dict(), strict=False)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 6))
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, base(input_ids).logits)


def test_dense_and_torch_attention_give_the_same_model_outputs_and_gradients():
    outputs = {}
    for impl in ("dense", "torch"):
        model = tiny_model(attention_impl=impl).train()
        input_ids, attention_mask, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=3)
        output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
        output.loss.backward()
        outputs[impl] = (output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outputs["dense"][0], outputs["torch"][0], rtol=1e-5, atol=1e-5)
    for name, grad in outputs["dense"][1].items():
        torch.testing.assert_close(grad, outputs["torch"][1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_greedy_eval_thoughts_are_deterministic_and_training_samples():
    model = tiny_model().eval()
    input_ids = torch.randint(0, TINY_VOCAB - 2, (1, 6))
    with torch.no_grad():
        first = model.run_parallel_thoughts(input_ids).thought_ids
        second = model.run_parallel_thoughts(input_ids).thought_ids
        assert torch.equal(first, second)
        assert not torch.isin(first, torch.tensor([START_ID, END_ID])).any()
        model.train()
        torch.manual_seed(0)
        samples = model.run_parallel_thoughts(input_ids, n_thoughts=8).thought_ids
    assert not torch.isin(samples, torch.tensor([START_ID, END_ID])).any()
    assert len({tuple(t) for t in samples[:, 0].tolist()}) > 1  # the 8 thoughts of one position differ


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        input_ids, attention_mask, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=5)
        output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
        output.loss.backward()
        results.append((output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


def test_thought_sampler_draws_from_the_distribution_and_never_a_masked_token():
    from quietstar.modeling_quietstar import _sample_categorical

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 6, generator=generator), dim=-1)
    probs[:, 2] = 0  # a masked token
    probs = probs / probs.sum(dim=-1, keepdim=True)
    torch.manual_seed(0)
    samples = _sample_categorical(probs.unsqueeze(1).expand(3, 100_000, 6))
    frequencies = torch.stack([torch.bincount(row, minlength=6) for row in samples]).float() / 100_000
    assert (frequencies[:, 2] == 0).all()
    torch.testing.assert_close(frequencies, probs, atol=5e-3, rtol=0)
