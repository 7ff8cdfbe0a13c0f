"""QuietStarConfig defaults and validation, and clear errors for bad model inputs."""

import json
import logging

import pytest
import torch
from tiny import TINY_VOCAB, tiny_config, tiny_model

from quietstar import QuietStarConfig, QuietStarForCausalLM


def test_defaults_are_the_reference_settings():
    config = QuietStarConfig()
    assert config.model_type == "quietstar"
    assert (config.n_thought_tokens, config.n_ahead_talk, config.n_thoughts) == (11, 4, 2)
    assert (config.thought_temperature, config.reinforce_temperature) == (1.0, 3.0)
    assert (config.policy_loss_weight, config.base_loss_weight, config.meta_embedding_scale) == (1e6, 0.5, 100.0)
    assert config.clip_negative_rewards is True and config.thinking is True
    assert config.attention_impl == "auto" and config.sliding_window is None
    assert config.n_sampled_thought_tokens == 9


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(n_thought_tokens=7, reinforce_temperature=2.0, thinking=False, attention_impl="triton")
    config.save_pretrained(tmp_path)
    loaded = QuietStarConfig.from_pretrained(tmp_path)
    for field in ("n_thought_tokens", "reinforce_temperature", "thinking", "attention_impl", "start_thought_token_id"):
        assert getattr(loaded, field) == getattr(config, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_thought_tokens", 2),
        ("n_thought_tokens", 4.0),
        ("n_ahead_talk", 0),
        ("n_thoughts", 0),
        ("thought_temperature", 0.0),
        ("reinforce_temperature", -1.0),
        ("policy_loss_weight", -1.0),
        ("base_loss_weight", 1.5),
        ("meta_embedding_scale", 0),
        ("clip_negative_rewards", "yes"),
        ("thinking", 1),
        ("attention_impl", "flash"),
        ("start_thought_token_id", TINY_VOCAB),
        ("end_thought_token_id", -1),
    ],
)
def test_invalid_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"QuietStarConfig.{field}"):
        tiny_config(**{field: value})


def test_a_saved_dense_attention_loads_as_torch_with_one_warning(tmp_path, caplog):
    # quietstar 0.1 offered attention_impl="dense" (the explicit-mask oracle); its configs still load.
    config = tiny_config(n_thought_tokens=5)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "attention_impl": "dense"}))
    with caplog.at_level(logging.WARNING):
        loaded = QuietStarConfig.from_pretrained(tmp_path)
    assert (loaded.attention_impl, loaded.n_thought_tokens) == ("torch", 5)
    warnings = [r.getMessage() for r in caplog.records if "attention_impl" in r.getMessage()]
    assert warnings == ["QuietStarConfig.attention_impl 'dense' is no longer an option; using 'torch' (same results)"]


def test_equal_meta_token_ids_are_rejected():
    with pytest.raises(ValueError, match="must differ"):
        tiny_config(start_thought_token_id=5, end_thought_token_id=5)


def test_thinking_without_meta_tokens_says_how_to_add_them():
    model = QuietStarForCausalLM(tiny_config(start_thought_token_id=None, end_thought_token_id=None))
    with pytest.raises(ValueError, match="add_thought_tokens"):
        model(torch.zeros(1, 6, dtype=torch.long))
    assert model(torch.zeros(1, 6, dtype=torch.long), thinking=False).logits.shape == (1, 6, TINY_VOCAB)


def test_sequences_too_short_for_the_look_ahead():
    model = tiny_model(n_ahead_talk=4).train()
    with pytest.raises(ValueError, match="too short for n_ahead_talk=4"):
        model(torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("bad_id", [TINY_VOCAB, -1])
def test_token_ids_out_of_range(bad_id):
    model = tiny_model().eval()
    input_ids = torch.zeros(1, 6, dtype=torch.long)
    input_ids[0, 3] = bad_id
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=96\)"):
        model(input_ids)
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(input_ids, thinking=False)


def test_thought_ids_of_the_wrong_shape_or_range():
    model = tiny_model().eval()
    input_ids = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"thought_ids must have shape .* = \(2, 6, 3\)"):
        model(input_ids, thought_ids=torch.zeros(2, 6, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        model(input_ids, thought_ids=torch.full((2, 6, 3), TINY_VOCAB))
