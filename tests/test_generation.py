"""Thinking generation through stock `generate()`: oracle per token (every family), thinking off = the plain model,
cost, cache coherence."""

import pytest
import torch
from tiny import END_ID, START_ID, TINY_VOCAB, tiny_config, tiny_model
from transformers import DynamicCache, MistralConfig, MistralForCausalLM
from transformers.generation.streamers import BaseStreamer

from quietstar import QuietStarConfig

PROMPT_LENGTH, NEW_TOKENS = 6, 5


def left_padded_prompt(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, PROMPT_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # left padding on the second row
    return input_ids, attention_mask


def plain_hidden(model, token_ids: list[int]) -> torch.Tensor:
    """Final hidden state of the last token of a plain causal forward (no cache, no thinking) of one sequence."""
    ids = torch.tensor([token_ids])
    return model.model(inputs_embeds=model.embed_input_ids(ids)).last_hidden_state[0, -1]


def oracle_logits(model, context: list[int], thought: list[int]) -> torch.Tensor:
    """Fresh non-cached forward of context + <start> thought <end>, mixed with the base state of the context; the two
    meta tokens get the lowest finite logit (a thinking model never predicts them)."""
    h_base = plain_hidden(model, context)
    h_thought = plain_hidden(model, context + [START_ID, *thought, END_ID])
    mixed, _ = model.mixing_head.mix(h_base, h_thought)
    logits = model.lm_head(mixed)
    logits[..., [START_ID, END_ID]] = torch.finfo(logits.dtype).min
    return logits


DECODING = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9),
}


ORACLE_CASES = [
    *(("mistral", decoding, temperature) for decoding in DECODING for temperature in (0.0, 1.0)),
    ("llama", "sampling", 1.0),
    ("qwen2", "greedy", 1.0),
    ("qwen3", "sampling", 0.0),
]


@pytest.mark.parametrize(("family", "decoding", "thought_temperature"), ORACLE_CASES)
def test_each_generated_token_matches_fresh_forward_of_context_and_thought(family, decoding, thought_temperature):
    """Each token, thought and mixing weight of cached generation equals a fresh forward of context + thought, so
    every thought was cropped out of the cache before the next token."""
    model = tiny_model(family=family, inference_thought_temperature=thought_temperature).eval()
    model.generation_config.suppress_tokens = [START_ID, END_ID]
    input_ids, attention_mask = left_padded_prompt()
    torch.manual_seed(0)
    out = model.generate_with_thoughts(
        input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, output_logits=True, pad_token_id=0,
        **DECODING[decoding],
    )
    assert out.sequences.shape == (2, PROMPT_LENGTH + NEW_TOKENS)
    assert out.thought_ids.shape == (2, NEW_TOKENS, model.config.n_sampled_thought_tokens)
    assert out.mixing_weights.shape == (2, NEW_TOKENS)
    generated = out.sequences[:, PROMPT_LENGTH:]
    for tokens in (generated, out.thought_ids):
        assert not torch.isin(tokens, torch.tensor([START_ID, END_ID])).any()
    with torch.no_grad():
        for b in range(2):
            real_prompt = input_ids[b][attention_mask[b].bool()].tolist()
            for t in range(NEW_TOKENS):
                context = real_prompt + generated[b, :t].tolist()
                expected = oracle_logits(model, context, out.thought_ids[b, t].tolist())
                torch.testing.assert_close(out.logits[t][b], expected, rtol=1e-4, atol=1e-4)
                # the thought changes the prediction (the test would not notice a skipped thought otherwise)
                assert not torch.allclose(expected, model.lm_head(plain_hidden(model, context)), atol=1e-3)


def test_thoughts_are_greedy_at_temperature_zero_and_seeded_samples_otherwise():
    input_ids, attention_mask = left_padded_prompt()

    def thoughts(temperature, seed):
        model = tiny_model(inference_thought_temperature=temperature).eval()
        torch.manual_seed(seed)
        kwargs = dict(attention_mask=attention_mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
        return model.generate_with_thoughts(input_ids, **kwargs).thought_ids

    assert torch.equal(thoughts(0.0, 0), thoughts(0.0, 1))
    assert torch.equal(thoughts(1.0, 0), thoughts(1.0, 0))
    assert not torch.equal(thoughts(5.0, 0), thoughts(5.0, 1))


@pytest.mark.parametrize("value", [-0.5, True, "hot"])
def test_inference_thought_temperature_is_validated(value):
    with pytest.raises(ValueError, match="inference_thought_temperature"):
        tiny_config(inference_thought_temperature=value)
    assert QuietStarConfig().inference_thought_temperature == 0.0


@pytest.mark.parametrize("decoding", list(DECODING))
def test_generation_without_thinking_is_token_for_token_mistral(decoding):
    model = tiny_model().eval()
    model.generation_config.suppress_tokens = [START_ID, END_ID]  # as add_thought_tokens sets it
    mistral = MistralForCausalLM(model.config).eval()
    mistral.generation_config.suppress_tokens = [START_ID, END_ID]
    missing, unexpected = mistral.load_state_dict(model.state_dict(), strict=False)
    assert not missing and set(unexpected) <= {k for k in model.state_dict() if k.split(".")[0] in ("mixing_head", "thought_embeddings", "thought_gate")}
    input_ids, attention_mask = left_padded_prompt()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=8, pad_token_id=0, **DECODING[decoding])
    torch.manual_seed(3)
    expected = mistral.generate(input_ids, **kwargs)
    torch.manual_seed(3)
    assert torch.equal(model.generate(input_ids, thinking=False, **kwargs), expected)
    model.config.thinking = False
    torch.manual_seed(3)
    assert torch.equal(model.generate(input_ids, **kwargs), expected)


@pytest.mark.parametrize("listed", [None, [3]])
def test_meta_tokens_are_never_emitted_even_when_most_likely(listed):
    """In either mode, whatever the generation config lists (a model built from a config lists nothing)."""
    model = tiny_model().eval()
    with torch.no_grad():
        model.lm_head.weight[[START_ID, END_ID]] *= 50  # make the meta tokens the model's favourites
    model.generation_config.suppress_tokens = listed
    input_ids, attention_mask = left_padded_prompt()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base_next = model(input_ids, attention_mask=attention_mask, thinking=False).logits[:, -1].argmax(-1)
    assert torch.isin(base_next, torch.tensor([START_ID, END_ID])).all()  # the test can fail
    plain = model.generate(input_ids, thinking=False, **kwargs)[:, PROMPT_LENGTH:]
    out = model.generate_with_thoughts(input_ids, **kwargs)
    for tokens in (plain, out.sequences[:, PROMPT_LENGTH:], out.thought_ids):
        assert not torch.isin(tokens, torch.tensor([START_ID, END_ID])).any()
        assert not torch.isin(tokens, torch.tensor(listed or [])).any()  # the listed tokens stay suppressed
    assert model.generation_config.suppress_tokens == listed  # generate() did not change the model's config


def test_one_generated_token_costs_thought_length_plus_one_single_token_steps():
    model = tiny_model().eval()
    calls = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    input_ids, attention_mask = left_padded_prompt()
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    handle.remove()
    thought_length = model.config.n_thought_tokens
    # prefill: the prompt once, then one thought; every later token: one base step and one thought, 1 token each
    assert calls[0] == PROMPT_LENGTH
    assert calls[1:] == [1] * (thought_length + (NEW_TOKENS - 1) * (thought_length + 1))


def test_streamer_sees_the_generated_tokens():
    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    model = tiny_model().eval()
    input_ids = left_padded_prompt()[0][:1]
    streamer = Collect()
    sequences = model.generate(input_ids, max_new_tokens=NEW_TOKENS, do_sample=False, streamer=streamer, pad_token_id=0)
    assert streamer.ended and streamer.chunks[0] == input_ids[0].tolist()
    assert sum(streamer.chunks[1:], []) == sequences[0, PROMPT_LENGTH:].tolist()


def test_prefill_with_cache_returns_all_mixed_logits_and_a_cache_of_real_tokens():
    model = tiny_model().eval()
    input_ids, attention_mask = left_padded_prompt()
    with torch.no_grad():
        parallel = model(input_ids, attention_mask=attention_mask, use_cache=False)
        prefill = model(input_ids, attention_mask=attention_mask, use_cache=True)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes; thinking's default
        plain = model(input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, thinking=False)
    assert parallel.past_key_values is None
    torch.testing.assert_close(prefill.logits, parallel.logits, rtol=1e-6, atol=1e-6)
    assert torch.equal(prefill.thought_ids, parallel.thought_ids)
    cache, plain_cache = prefill.past_key_values, plain.past_key_values
    assert cache.get_seq_length() == PROMPT_LENGTH
    for layer, plain_layer in zip(cache.layers, plain_cache.layers):
        torch.testing.assert_close(layer.keys, plain_layer.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.values, plain_layer.values, rtol=1e-5, atol=1e-6)


def test_chunks_on_a_cache_agree_with_one_parallel_forward():
    """Prefill part of a sequence, then feed the rest as one chunk and as single tokens: same logits as no cache."""
    model = tiny_model().eval()
    input_ids, attention_mask = left_padded_prompt()
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, use_cache=False)
        split = 3
        prefill = model(input_ids[:, :split], attention_mask=attention_mask[:, :split], use_cache=True)
        chunk = model(input_ids[:, split:], attention_mask=attention_mask, past_key_values=prefill.past_key_values)
        assert chunk.past_key_values.get_seq_length() == PROMPT_LENGTH
        torch.testing.assert_close(chunk.logits, full.logits[:, split:], rtol=1e-4, atol=1e-5)
        assert torch.equal(chunk.thought_ids, full.thought_ids[:, split:])
        last = model(input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
        torch.testing.assert_close(last.logits, full.logits[:, -1:], rtol=1e-4, atol=1e-5)
        picked = model(input_ids, attention_mask=attention_mask, logits_to_keep=torch.tensor([1, 4]), use_cache=False)
        torch.testing.assert_close(picked.logits, full.logits[:, [1, 4]], rtol=1e-4, atol=1e-5)


def test_forced_thoughts_on_the_cache_match_the_parallel_path():
    model = tiny_model().eval()
    input_ids, attention_mask = left_padded_prompt()
    generator = torch.Generator().manual_seed(5)
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, PROMPT_LENGTH, model.config.n_sampled_thought_tokens), generator=generator)
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids, use_cache=False)
        cache = model(input_ids[:, :2], attention_mask=attention_mask[:, :2], thought_ids=thought_ids[:, :2]).past_key_values
        rest = model(input_ids[:, 2:], attention_mask=attention_mask, past_key_values=cache, thought_ids=thought_ids[:, 2:])
    torch.testing.assert_close(rest.logits, full.logits[:, 2:], rtol=1e-4, atol=1e-5)
    assert torch.equal(rest.thought_ids, thought_ids[:, 2:])


def test_bad_generation_requests_raise_clear_errors():
    model = tiny_model().eval()
    input_ids = left_padded_prompt()[0]
    with pytest.raises(ValueError, match="croppable"):
        sliding = MistralConfig(**{**tiny_config().to_diff_dict(), "model_type": "mistral", "sliding_window": 4})
        model(input_ids, past_key_values=DynamicCache(config=sliding))
    with pytest.raises(ValueError, match="beam search"):
        model.generate_with_thoughts(input_ids, num_beams=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="thinking"):
        model.generate_with_thoughts(input_ids, thinking=False, max_new_tokens=2)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids, logits_to_keep=torch.tensor([[0]]))
    model.train()
    with pytest.raises(ValueError, match="past_key_values"):
        model(input_ids, past_key_values=DynamicCache())
