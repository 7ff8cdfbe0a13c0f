"""What differs between families: unsupported families and attention features are refused, meta tokens are added
correctly to tied and padded vocabularies (Llama 3.2 / Qwen style)."""

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import FAMILY_FIELDS, tiny_config
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config

import quietstar
from quietstar import add_thought_tokens


def test_a_checkpoint_of_an_unsupported_family_is_refused_naming_its_model_type(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported by quietstar \(supported families: "
                       r"mistral, llama, qwen2, qwen3\)"):
        quietstar.from_base(str(tmp_path))


def test_family_is_found_from_base_and_quietstar_model_types():
    assert quietstar.family_of("qwen3").model_class is quietstar.QuietStarQwen3ForCausalLM
    assert quietstar.family_of("quietstar_llama").config_class is quietstar.QuietStarLlamaConfig
    assert quietstar.family_of("quietstar").base_model_type == "mistral"


@pytest.mark.parametrize(
    ("family", "fields", "message"),
    [
        ("mistral", dict(sliding_window=4096), r"QuietStarConfig.sliding_window=4096: sliding-window attention"),
        ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1), r"QuietStarQwen2Config"),
        ("qwen3", dict(use_sliding_window=True, sliding_window=16, max_window_layers=0), r"QuietStarQwen3Config"),
    ],
)
def test_sliding_window_layers_are_refused_at_construction(family, fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(family, **fields)


def test_config_from_base_copies_the_architecture_and_drops_mistral_sliding_window():
    base = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    config = quietstar.config_from_base(base, n_thoughts=4)
    assert isinstance(config, quietstar.QuietStarQwen2Config) and config.model_type == "quietstar_qwen2"
    assert (config.hidden_size, config.tie_word_embeddings, config.n_thoughts) == (64, True, 4)


@pytest.mark.parametrize("tied", [True, False])
def test_add_thought_tokens_to_a_padded_vocabulary_keeps_every_existing_row(tied):
    """Qwen-style: the embedding table (32064 rows) is larger than the tokenizer (32000), so the meta tokens take
    padding rows and nothing is resized; with tied embeddings the LM head follows the embedding table."""
    tokenizer = quietstar.load_mistral_tokenizer()
    config = tiny_config(
        "qwen2", vocab_size=32064, start_thought_token_id=None, end_thought_token_id=None, tie_word_embeddings=tied
    )
    torch.manual_seed(0)
    model = quietstar.QuietStarQwen2ForCausalLM(config)
    embeddings_before = model.get_input_embeddings().weight.detach().clone()
    lm_head_before = model.lm_head.weight.detach().clone()

    start_id, end_id = add_thought_tokens(model, tokenizer)

    assert (start_id, end_id) == (32000, 32001) and model.config.vocab_size == 32064
    embeddings = model.get_input_embeddings().weight
    unchanged = torch.ones(32064, dtype=torch.bool)
    unchanged[[start_id, end_id]] = False
    assert torch.equal(embeddings[unchanged], embeddings_before[unchanged])
    dash = tokenizer.encode("---", add_special_tokens=False)[0]
    torch.testing.assert_close(embeddings[[start_id, end_id]], embeddings_before[dash].expand(2, -1))
    torch.testing.assert_close(model.thought_embeddings(), embeddings_before[dash].expand(2, -1))
    assert (model.lm_head.weight.data_ptr() == embeddings.data_ptr()) == tied
    if not tied:
        assert torch.equal(model.lm_head.weight, lm_head_before)


def test_llama_tied_embeddings_stay_tied_and_train():
    tokenizer = quietstar.load_mistral_tokenizer()
    config = tiny_config("llama", vocab_size=32000, start_thought_token_id=None, end_thought_token_id=None)
    assert FAMILY_FIELDS["llama"]["tie_word_embeddings"]
    model = quietstar.QuietStarLlamaForCausalLM(config)
    add_thought_tokens(model, tokenizer)
    assert model.config.vocab_size == 32002
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    output = model.train()(torch.randint(0, 32000, (1, 8)))
    output.loss.backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def save_tiny_llama_base(directory) -> None:
    fields = dict(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, **FAMILY_FIELDS["llama"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**fields)).save_pretrained(directory)


@pytest.mark.parametrize(
    ("where", "gguf_file", "message"),
    [
        ("/no/such/dir", None, "no such directory: /no/such/dir"),
        ("base", "missing.gguf", "no GGUF file 'missing.gguf' in {tmp_path}/base"),
        ("empty", None, "{tmp_path}/empty is not a model directory: it has no config.json"),
        ("base/model.safetensors", None, "{tmp_path}/base/model.safetensors is a file, not a model directory"),
        ("no-such-hub-model", None, "no such directory: {cwd}/no-such-hub-model, and no hub model 'no-such-hub-model' "
         "could be loaded: "),
    ],
)
def test_a_base_that_cannot_be_read_is_named_in_one_line(tmp_path, monkeypatch, where, gguf_file, message):
    save_tiny_llama_base(tmp_path / "base")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    source = where if where.startswith("/") or where.startswith("no-such") else str(tmp_path / where)
    with pytest.raises(quietstar.CheckpointError) as raised:
        quietstar.from_base(source, gguf_file=gguf_file)
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith(message.format(tmp_path=tmp_path.resolve(), cwd=tmp_path))


def test_from_base_says_in_one_line_which_parts_are_new_instead_of_a_missing_table(tmp_path, caplog, capfd):
    save_tiny_llama_base(tmp_path)
    with caplog.at_level(logging.INFO, logger="quietstar"):
        quietstar.from_base(str(tmp_path))
    assert "MISSING" not in capfd.readouterr().err  # transformers' load report would list the mixing head
    said = [record.getMessage() for record in caplog.records if record.name == "quietstar.families"]
    assert said == [f"{tmp_path}: {quietstar.NEW_PARTS_MESSAGE}"]
    assert "mixing head" in said[0] and "thought embeddings" in said[0]


def test_from_base_refuses_a_base_that_lacks_a_base_weight(tmp_path):
    save_tiny_llama_base(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(quietstar.CheckpointError, match=r"weights do not match the quietstar_llama layout \(missing "
                       r"\['model.layers.1.mlp.up_proj.weight'\]"):
        quietstar.from_base(str(tmp_path))


def test_installed_package_directory_is_found_without_importing_and_a_missing_one_is_named():
    assert quietstar.installed_package_directory("quietstar") == Path(quietstar.__file__).parent
    with pytest.raises(FileNotFoundError, match=r"^the Python package 'no_such_package_q8' is not installed$"):
        quietstar.installed_package_directory("no_such_package_q8")
