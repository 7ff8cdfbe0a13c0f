"""Checkpoints: AutoModelForCausalLM round trip (package route and trust_remote_code route), meta tokens."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny import FAMILY_FIELDS, FAMILY_NAMES, PLAIN_MODEL_CLASSES, TINY_VOCAB, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

import quietstar
from quietstar import QuietStarForCausalLM, add_thought_tokens

QUIETSTAR_FIELDS = (
    "n_thought_tokens", "n_ahead_talk", "n_thoughts", "thought_temperature", "reinforce_temperature",
    "policy_loss_weight", "base_loss_weight", "meta_embedding_scale", "clip_negative_rewards",
    "start_thought_token_id", "end_thought_token_id", "thinking", "attention_impl", "lm_head_chunk_size",
)
SHARED_CODE_FILES = {
    "modeling_quietstar.py", "configuration_quietstar.py", "thought_attention.py", "cached_thinking.py",
    "loss.py", "lm_head.py", "thinking_parts.py", "parallel_thoughts.py",
}


def family_code_files(family: str) -> set[str]:
    """The modeling files a checkpoint of `family` carries for trust_remote_code: its own two plus the shared ones."""
    return {f"modeling_quietstar_{family}.py", f"configuration_quietstar_{family}.py"} | SHARED_CODE_FILES


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_round_trip_through_auto_model_keeps_weights_and_config(tmp_path, family):
    model = tiny_model(family=family, n_thought_tokens=4, reinforce_temperature=2.5, n_thoughts=3).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == quietstar.family_of(family).model_type and "AutoModelForCausalLM" in saved["auto_map"]
    assert {name for name in os.listdir(tmp_path) if name.endswith(".py")} == family_code_files(family)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is quietstar.family_of(family).model_class
    for field in QUIETSTAR_FIELDS:
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, reloaded[name]), name
    assert torch.count_nonzero(loaded.mixing_head.output.weight) > 0  # not re-zeroed on load
    assert torch.count_nonzero(loaded.thought_embeddings.weight) > 0  # not re-initialised on load
    input_ids = torch.randint(0, TINY_VOCAB - 2, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, rtol=1e-6, atol=1e-6)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), quietstar.family_of(family).config_class)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_trust_remote_code_loads_without_the_package(tmp_path, family):
    model = tiny_model(family=family).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (1, 7))
    with torch.no_grad():
        expected = model(input_ids).logits
    torch.save({"input_ids": input_ids, "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["quietstar"] = None  # the package is not importable in this process
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        data = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model(data["input_ids"]).logits
        torch.testing.assert_close(logits, data["logits"], rtol=0, atol=1e-6)
        print("remote code ok")
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


def test_add_thought_tokens_to_a_real_tokenizer_keeps_existing_rows(mistral_tokenizer, tmp_path):
    tokenizer = quietstar.load_mistral_tokenizer()
    torch.manual_seed(0)
    config = quietstar.QuietStarConfig(
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )
    model = QuietStarForCausalLM(config)
    embeddings_before = model.get_input_embeddings().weight.detach().clone()
    lm_head_before = model.lm_head.weight.detach().clone()
    others_before = {n: p.detach().clone() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n}

    start_id, end_id = add_thought_tokens(model, tokenizer)

    assert (start_id, end_id) == (32000, 32001)
    assert tokenizer.convert_ids_to_tokens([start_id, end_id]) == ["<|startofthought|>", "<|endofthought|>"]
    assert (model.config.start_thought_token_id, model.config.end_thought_token_id) == (32000, 32001)
    assert model.config.vocab_size == 32002
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(embeddings[:32000], embeddings_before)
    assert torch.equal(model.lm_head.weight[:32000], lm_head_before)
    dash = tokenizer.encode("---", add_special_tokens=False)[0]
    assert dash == 11940  # "▁---", the reference's initialisation token
    torch.testing.assert_close(model.thought_embeddings(), embeddings_before[dash].expand(2, -1))
    for name, value in others_before.items():
        assert torch.equal(dict(model.named_parameters())[name], value), name
    assert {32000, 32001} <= set(model.generation_config.suppress_tokens)
    assert add_thought_tokens(model, tokenizer) == (32000, 32001)  # idempotent
    assert len(tokenizer) == 32002 and model.config.vocab_size == 32002

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.thought_embeddings.weight, model.thought_embeddings.weight)
    assert loaded.generation_config.suppress_tokens == model.generation_config.suppress_tokens


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_from_base_loads_a_plain_checkpoint_of_each_family(tmp_path, family):
    """One call turns a base checkpoint into the family's thinking model; only the new parts are initialised."""
    fields = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, **FAMILY_FIELDS[family],
    )
    plain_class = PLAIN_MODEL_CLASSES[family]
    torch.manual_seed(0)
    plain = plain_class(plain_class.config_class(**fields)).eval()
    plain.save_pretrained(tmp_path)
    model = quietstar.from_base(str(tmp_path), n_thought_tokens=4, n_thoughts=3)
    assert type(model) is quietstar.family_of(family).model_class
    assert (model.config.n_thought_tokens, model.config.n_thoughts) == (4, 3)
    assert torch.count_nonzero(model.mixing_head.output.weight) == 0
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    input_ids = torch.randint(0, TINY_VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(input_ids, thinking=False).logits, plain(input_ids).logits, rtol=1e-6, atol=1e-6
        )
