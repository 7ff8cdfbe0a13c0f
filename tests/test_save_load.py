"""Checkpoints: AutoModelForCausalLM round trip (package route and trust_remote_code route), meta tokens."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from tiny import TINY_VOCAB, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig

import quietstar
from quietstar import QuietStarForCausalLM, add_thought_tokens

QUIETSTAR_FIELDS = (
    "n_thought_tokens", "n_ahead_talk", "n_thoughts", "thought_temperature", "reinforce_temperature",
    "policy_loss_weight", "base_loss_weight", "meta_embedding_scale", "clip_negative_rewards",
    "start_thought_token_id", "end_thought_token_id", "thinking", "attention_impl",
)


def test_round_trip_through_auto_model_keeps_weights_and_config(tmp_path):
    model = tiny_model(n_thought_tokens=4, reinforce_temperature=2.5, n_thoughts=3).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "quietstar" and "AutoModelForCausalLM" in saved["auto_map"]
    assert {"modeling_quietstar.py", "attention_quietstar.py", "configuration_quietstar.py"} <= set(os.listdir(tmp_path))

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is QuietStarForCausalLM
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
        assert torch.equal(model(input_ids).logits, loaded(input_ids).logits)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), quietstar.QuietStarConfig)


def test_trust_remote_code_loads_without_the_package(tmp_path):
    model = tiny_model().eval()
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


def test_mistral_weights_load_into_quietstar_with_only_new_parts_missing(tmp_path):
    from transformers import MistralForCausalLM

    base_config = MistralConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    torch.manual_seed(0)
    MistralForCausalLM(base_config).save_pretrained(tmp_path)
    fields = base_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "sliding_window"):
        fields.pop(key, None)
    config = quietstar.QuietStarConfig(**fields)
    model, info = QuietStarForCausalLM.from_pretrained(tmp_path, config=config, output_loading_info=True)
    assert {k.split(".")[0] for k in info["missing_keys"]} == {"mixing_head", "thought_embeddings"}
    assert torch.count_nonzero(model.mixing_head.output.weight) == 0
