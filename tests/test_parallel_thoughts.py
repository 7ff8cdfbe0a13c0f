"""Parallel thoughts against the sequential oracle: a plain causal forward of each prefix followed by its thought."""

import pytest
import torch
from tiny import END_ID, FAMILY_NAMES, START_ID, TINY_VOCAB, plain_model, tiny_config, tiny_model

import quietstar
from quietstar.models.thought_attention import THOUGHT_ATTENTION_FUNCTIONS
from quietstar.ops.thought_attention.naive import naive_thought_attention


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


def without_meta(logits: torch.Tensor) -> torch.Tensor:
    """The logits of every token but the two meta tokens (the last two ids of the tiny vocabulary)."""
    return logits[..., : TINY_VOCAB - 2]


def padded_batch(length: int, thought_tokens: int, seed: int, copies: int | None = None):
    """Two rows (the second right-padded by 2) and random thoughts: (2, L, T-2), or (2, copies, L, T-2)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, length - 2 :] = 0  # right padding on the second row
    shape = (2, length, thought_tokens - 2) if copies is None else (2, copies, length, thought_tokens - 2)
    thought_ids = torch.randint(0, TINY_VOCAB - 2, shape, generator=generator)
    return input_ids, attention_mask, thought_ids


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(("length", "thought_tokens", "n_ahead_talk"), [(7, 3, 1), (9, 5, 3), (6, 6, 2)])
def test_parallel_thoughts_match_sequential_oracle(family, length, thought_tokens, n_ahead_talk):
    model = tiny_model(family=family, n_thought_tokens=thought_tokens, n_ahead_talk=n_ahead_talk).eval()
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
                torch.testing.assert_close(without_meta(logits[b, i]), without_meta(expected), rtol=1e-4, atol=1e-4)
                for j in range(1, n_ahead_talk + 1):
                    if i + j - 1 < valid_length:
                        expected = oracle_talk_logits(model, row, thought, i, j)
                        talk_logits = model.lm_head(passes.talk_hidden[j - 1][b, i])
                        torch.testing.assert_close(talk_logits, expected, rtol=1e-4, atol=1e-4)
                        checked += 1
    assert checked >= length  # every look-ahead depth was exercised on real tokens


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_thoughts_change_the_prediction(family):
    """The oracle test is only meaningful if thinking moves the logits away from the base model's."""
    model = tiny_model(family=family).eval()
    input_ids, _, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=1)
    with torch.no_grad():
        thinking = model(input_ids, thought_ids=thought_ids).logits
        plain = model(input_ids, thinking=False).logits
    assert (thinking - plain).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_at_init_logits_equal_the_plain_model_of_the_family(family):
    torch.manual_seed(0)
    config = tiny_config(family)
    model = quietstar.family_of(family).model_class(config).eval()
    assert torch.count_nonzero(model.mixing_head.output.weight) == 0
    base = plain_model(model, family)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 10))
    with torch.no_grad():
        thinking = model(input_ids).logits
        greedy_weight = model(input_ids).mean_mixing_weight
        expected = base(input_ids).logits
    assert greedy_weight == 0
    torch.testing.assert_close(without_meta(thinking), without_meta(expected), rtol=0, atol=1e-5)
    assert (thinking[..., TINY_VOCAB - 2 :] == torch.finfo(thinking.dtype).min).all()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids, thinking=False).logits, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_thinking_false_config_is_the_plain_model(family):
    model = tiny_model(family=family, thinking=False).eval()
    base = plain_model(model, family)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, base(input_ids).logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_torch_attention_and_the_attention_oracle_give_the_same_model_outputs_and_gradients(family, monkeypatch):
    def oracle(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
        out, _ = naive_thought_attention(query, base_key, base_value, thought_keys, thought_values, key_padding_mask,
                                         scaling)
        return out.transpose(1, 2)

    outputs = {}
    for impl in ("oracle", "torch"):
        with monkeypatch.context() as patch:
            if impl == "oracle":
                patch.setitem(THOUGHT_ATTENTION_FUNCTIONS, "torch", oracle)
            # fp64: with distinct thoughts the policy term (weight 1e6) is live and would amplify fp32 rounding.
            model = tiny_model(family=family, attention_impl="torch").double().train()
            input_ids, attention_mask, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=3, copies=2)
            output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
            output.loss.backward()
        outputs[impl] = (output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert outputs["torch"][0] > 100  # the policy term is part of the comparison
    torch.testing.assert_close(outputs["oracle"][0], outputs["torch"][0], rtol=1e-10, atol=1e-10)
    for name, grad in outputs["oracle"][1].items():
        torch.testing.assert_close(grad, outputs["torch"][1][name], rtol=1e-8, atol=1e-8, msg=name)


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


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_activation_checkpointing_gives_the_same_loss_and_gradients(family):
    results = []
    for checkpointing in (False, True):
        model = tiny_model(family=family).double().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        input_ids, attention_mask, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=5, copies=2)
        output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
        output.loss.backward()
        results.append((output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


def test_thought_sampler_draws_from_the_distribution_and_never_a_masked_token():
    from quietstar.models.lm_head import sample_thought_tokens

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 6, generator=generator), dim=-1)
    # An identity head turns hidden states into logits: row r's logits are log(probs[r]); id 2 is banned.
    hidden = probs.log().unsqueeze(1).expand(3, 100_000, 6)
    torch.manual_seed(0)
    samples, _ = sample_thought_tokens(
        hidden, torch.eye(6), banned_ids=[2], sample_temperature=1.0, logprob_temperature=None, chunk_size=4096
    )
    frequencies = torch.stack([torch.bincount(row, minlength=6) for row in samples]).float() / 100_000
    expected = probs.clone()
    expected[:, 2] = 0
    expected = expected / expected.sum(dim=-1, keepdim=True)
    assert (frequencies[:, 2] == 0).all()
    torch.testing.assert_close(frequencies, expected, atol=5e-3, rtol=0)


def test_per_copy_thought_ids_reach_their_copies_and_give_a_policy_term():
    model = tiny_model().train()
    input_ids, attention_mask, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=7, copies=2)
    passes = model.run_parallel_thoughts(input_ids, attention_mask=attention_mask, thought_ids=thought_ids, n_thoughts=2)
    assert torch.equal(passes.thought_ids.view(2, 2, 8, -1), thought_ids)  # row b * N + n holds copy n of row b
    output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
    assert output.policy_loss != 0 and output.mean_advantage > 0


def test_shared_thought_ids_with_several_copies_are_refused_in_training():
    model = tiny_model().train()
    input_ids, _, thought_ids = padded_batch(8, model.config.n_thought_tokens, seed=7)
    with pytest.raises(ValueError, match="same thought.*REINFORCE term would do nothing.*\\(2, 2, 8, 3\\)"):
        model(input_ids, thought_ids=thought_ids)
    with pytest.raises(ValueError, match="thought_ids must have shape"):
        model(input_ids, thought_ids=thought_ids[:, :4])
    model_one_copy = tiny_model(n_thoughts=1).train()
    assert torch.isfinite(model_one_copy(input_ids, thought_ids=thought_ids).loss)


def make_meta_tokens_most_likely(model):
    """Give the LM head a bias of +100 on both meta tokens, so they are the most likely output everywhere."""
    meta = [model.config.start_thought_token_id, model.config.end_thought_token_id]
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[meta] = 100.0
    model.lm_head = head
    return model.eval()


@pytest.mark.parametrize("with_add_thought_tokens", [False, True])
def test_meta_tokens_never_leak_into_returned_distributions(with_add_thought_tokens):
    """Parallel, cached and generated paths mask the meta tokens themselves, whatever the generation config says."""
    if with_add_thought_tokens:
        from quietstar import add_thought_tokens
        from quietstar.tokenizer import load_mistral_tokenizer

        tokenizer = load_mistral_tokenizer()
        model = tiny_model(vocab_size=32000, start_thought_token_id=None, end_thought_token_id=None)
        add_thought_tokens(model, tokenizer)
        assert model.generation_config.suppress_tokens
    else:
        model = tiny_model()
        assert not model.generation_config.suppress_tokens  # a model built from a config suppresses nothing
    model = make_meta_tokens_most_likely(model)
    meta = torch.tensor([model.config.start_thought_token_id, model.config.end_thought_token_id])
    input_ids = torch.randint(0, 90, (2, 7))
    with torch.no_grad():
        assert torch.isin(model(input_ids, thinking=False).logits.argmax(-1), meta).all()  # the test would catch a leak
        parallel = model(input_ids).logits
        cached = model(input_ids, use_cache=True, logits_to_keep=1).logits
        generated = model.generate(input_ids, max_new_tokens=3, do_sample=False, pad_token_id=0, suppress_tokens=None)
    for logits in (parallel, cached):
        assert torch.isfinite(logits).all()
        assert (logits[..., meta] == torch.finfo(logits.dtype).min).all()
        assert not torch.isin(logits.argmax(-1), meta).any()
    assert not torch.isin(generated[:, input_ids.shape[1] :], meta).any()
