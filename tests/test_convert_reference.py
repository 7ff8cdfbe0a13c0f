"""Converting checkpoints of the original Quiet-STaR code (`quietstar.tools.convert_reference`).

The fixture builds a tiny checkpoint in the reference layout from its documented facts only (a Mistral config with
`max_thoughts` and head flags, vocab 32002, `<|startthought|>`/`<|endthought|>` at 32000/32001, random Mistral
tensors plus `start_embedding`/`end_embedding` (2, H) and `talk_head.0.{0,2,4}`). The main test recomputes the
reference's thought-mixed logits independently with plain transformers Mistral and compares them with the
converted model's.
"""

import json
import logging
import os
import re
import shutil
import stat
from importlib.resources import files

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM

import quietstar.tools.convert_reference as convert_module
from quietstar import END_OF_THOUGHT, START_OF_THOUGHT, QuietStarConfig, QuietStarForCausalLM, load_mistral_tokenizer
from quietstar.errors import UserError
from quietstar.tools.convert_reference import convert_reference_checkpoint, main

HIDDEN = 64
VOCAB = 32002
START_ID, END_ID = 32000, 32001
N_THOUGHT_TOKENS = 7  # the released "8-ahead" model: start, 5 sampled tokens, end
REFERENCE_SCALE = 100.0  # the reference feeds 100 * start_embedding[0] / end_embedding[0]

TINY_MISTRAL = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    sliding_window=4096,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
# What the reference's config.json adds to Mistral's (transformers 4.37 style).
REFERENCE_EXTRA_FIELDS = dict(
    architectures=["MistralForCausalLM"],
    model_type="mistral",
    torch_dtype="float32",
    transformers_version="4.37.0.dev0",
    max_thoughts=10,
    merged_talk_heads=True,
    merged_lm_and_talk_heads=False,
    merged_lm_and_think_heads=True,
    use_concat_talk_head=True,
    use_shallow_think=True,
    use_shallow_talk=False,
    use_complex_think_head=False,
    use_complex_talk_head=True,
    use_weighted_talk_head=True,
)


@pytest.fixture(scope="module")
def reference_tensors() -> dict[str, torch.Tensor]:
    """Random tensors with the reference's names and shapes; the mixing head is far from zero so w matters."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape, scale):
        return torch.randn(*shape, generator=generator) * scale

    torch.manual_seed(0)
    tensors = dict(MistralForCausalLM(MistralConfig(**TINY_MISTRAL, initializer_range=0.1)).state_dict())
    tensors["start_embedding"] = randn(2, HIDDEN, scale=0.01)
    tensors["end_embedding"] = randn(2, HIDDEN, scale=0.01)
    tensors["talk_head.0.0.weight"] = randn(HIDDEN, 2 * HIDDEN, scale=(2 * HIDDEN) ** -0.5)
    tensors["talk_head.0.0.bias"] = randn(HIDDEN, scale=0.1)
    tensors["talk_head.0.2.weight"] = randn(HIDDEN, HIDDEN, scale=HIDDEN**-0.5)
    tensors["talk_head.0.2.bias"] = randn(HIDDEN, scale=0.1)
    tensors["talk_head.0.4.weight"] = randn(1, HIDDEN, scale=HIDDEN**-0.5)
    return tensors


@pytest.fixture(scope="module")
def reference_tokenizer_dir(tmp_path_factory):
    """Mistral's tokenizer with the reference's meta tokens at 32000/32001 and no pad token, as saved by it."""
    tokenizer = load_mistral_tokenizer()
    tokenizer.pad_token = None
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|startthought|>", "<|endthought|>"]})
    assert tokenizer.convert_tokens_to_ids(["<|startthought|>", "<|endthought|>"]) == [START_ID, END_ID]
    directory = tmp_path_factory.mktemp("reference_tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


def write_reference_checkpoint(directory, tensors, tokenizer_dir, weights="safetensors", config_overrides=None):
    """Write a checkpoint in the reference layout: config.json, weights (one file or two shards), tokenizer."""
    directory.mkdir(parents=True)
    config = {**TINY_MISTRAL, **REFERENCE_EXTRA_FIELDS, **(config_overrides or {})}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for path in tokenizer_dir.iterdir():
        shutil.copy(path, directory / path.name)

    safetensors = weights.startswith("safetensors")
    names = sorted(tensors)
    if weights.endswith("sharded"):
        prefix, suffix = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
        shards = {f"{prefix}-0000{k + 1}-of-00002.{suffix}": names[k::2] for k in range(2)}
        weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
        total_size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        index_name = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
        (directory / index_name).write_text(json.dumps(index))
    else:
        shards = {"model.safetensors" if safetensors else "pytorch_model.bin": names}
    for shard, shard_names in shards.items():
        shard_tensors = {name: tensors[name].contiguous() for name in shard_names}
        if safetensors:
            save_file(shard_tensors, directory / shard, metadata={"format": "pt"})
        else:
            torch.save(shard_tensors, directory / shard)
    return directory


@torch.no_grad()
def reference_mixed_logits(tensors, input_ids, thought_ids):
    """The reference's eval-time logits, computed from its equations one position at a time.

    For position i: run plain Mistral on the embeddings of x[0..i], 100 * start_embedding[0], the thought tokens,
    100 * end_embedding[0] (RoPE positions 0, 1, ...); h_base is the post-norm hidden state at i, h_thought the one
    at the end token; w = talk_head([h_base ; h_thought]); logits = lm_head((1 - w) * h_base + w * h_thought).
    """
    mistral = MistralForCausalLM(MistralConfig(**TINY_MISTRAL, attn_implementation="eager")).eval()
    mistral.load_state_dict({k: v for k, v in tensors.items() if k.startswith(("model.", "lm_head."))}, strict=True)
    embed = mistral.model.embed_tokens
    start = REFERENCE_SCALE * tensors["start_embedding"][0]
    end = REFERENCE_SCALE * tensors["end_embedding"][0]
    batch, length = input_ids.shape
    logits = torch.empty(batch, length, VOCAB)
    weights = torch.empty(batch, length)
    for b in range(batch):
        for i in range(length):
            sequence = torch.cat([embed(input_ids[b, : i + 1]), start[None], embed(thought_ids[b, i]), end[None]])
            hidden = mistral.model(inputs_embeds=sequence[None]).last_hidden_state[0]
            h_base, h_thought = hidden[i], hidden[-1]
            x = torch.cat([h_base, h_thought])
            x = torch.relu(tensors["talk_head.0.0.weight"] @ x + tensors["talk_head.0.0.bias"])
            x = torch.relu(tensors["talk_head.0.2.weight"] @ x + tensors["talk_head.0.2.bias"])
            w = tensors["talk_head.0.4.weight"] @ x
            logits[b, i] = tensors["lm_head.weight"] @ ((1 - w) * h_base + w * h_thought)
            weights[b, i] = w
    return logits, weights


@pytest.mark.parametrize("weights", ["safetensors", "safetensors-sharded", "bin", "bin-sharded"])
def test_converted_logits_match_reference_equations(tmp_path, reference_tensors, reference_tokenizer_dir, weights):
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, reference_tokenizer_dir, weights)
    dst = convert_reference_checkpoint(src, tmp_path / "converted", n_thought_tokens=N_THOUGHT_TOKENS)

    model = AutoModelForCausalLM.from_pretrained(dst).eval()
    assert isinstance(model, QuietStarForCausalLM) and isinstance(model.config, QuietStarConfig)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 32000, (2, 5), generator=generator)
    thought_ids = torch.randint(3, 32000, (2, 5, N_THOUGHT_TOKENS - 2), generator=generator)
    with torch.no_grad():
        output = model(input_ids, thought_ids=thought_ids)
    expected_logits, expected_weights = reference_mixed_logits(reference_tensors, input_ids, thought_ids)

    assert expected_weights.abs().min() > 1e-3, "the mixing weight must matter for this test to mean anything"
    torch.testing.assert_close(output.mean_mixing_weight, expected_weights.mean(), rtol=0, atol=1e-5)
    # Thinking mode masks the meta tokens (the last two ids) out of the returned logits; the rest is the reference's.
    torch.testing.assert_close(output.logits[..., :START_ID], expected_logits[..., :START_ID], rtol=0, atol=2e-5)


def test_converted_checkpoint_contents(tmp_path, reference_tensors, reference_tokenizer_dir):
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, reference_tokenizer_dir)
    dst = convert_reference_checkpoint(src, tmp_path / "converted")
    model = AutoModelForCausalLM.from_pretrained(dst)

    # The fed meta embeddings are bit-identical to the reference's 100 * row 0; the stored values copy over.
    fed = model.thought_embeddings()
    assert torch.equal(fed[0], REFERENCE_SCALE * reference_tensors["start_embedding"][0])
    assert torch.equal(fed[1], REFERENCE_SCALE * reference_tensors["end_embedding"][0])
    head = model.mixing_head
    pairs = [
        (head.input.weight, "talk_head.0.0.weight"),
        (head.input.bias, "talk_head.0.0.bias"),
        (head.hidden.weight, "talk_head.0.2.weight"),
        (head.hidden.bias, "talk_head.0.2.bias"),
        (head.output.weight, "talk_head.0.4.weight"),
    ]
    for ours, theirs in pairs:
        assert torch.equal(ours, reference_tensors[theirs]), theirs
    assert torch.equal(model.lm_head.weight, reference_tensors["lm_head.weight"])

    config = model.config
    assert config.model_type == "quietstar"
    assert (config.n_thought_tokens, config.meta_embedding_scale) == (N_THOUGHT_TOKENS, 100.0)
    assert (config.start_thought_token_id, config.end_thought_token_id) == (START_ID, END_ID)
    assert config.sliding_window is None and config.vocab_size == VOCAB
    saved_config = json.loads((dst / "config.json").read_text())
    assert not set(saved_config) & {"max_thoughts", "merged_talk_heads", "use_weighted_talk_head", "torch_dtype"}
    assert {START_ID, END_ID} <= set(model.generation_config.suppress_tokens)

    tokenizer = AutoTokenizer.from_pretrained(dst)
    assert tokenizer.convert_tokens_to_ids([START_OF_THOUGHT, END_OF_THOUGHT]) == [START_ID, END_ID]
    assert "<|startthought|>" not in tokenizer.get_vocab() and "<|endthought|>" not in tokenizer.get_vocab()
    assert tokenizer(f"a{START_OF_THOUGHT}b{END_OF_THOUGHT}").input_ids.count(START_ID) == 1
    assert tokenizer.pad_token == tokenizer.eos_token
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "reference"]  # no staging left over


def test_cli(tmp_path, reference_tensors, reference_tokenizer_dir, capsys):
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, reference_tokenizer_dir)
    main([str(src), str(tmp_path / "converted"), "--n-thought-tokens", "5"])
    assert "converted" in capsys.readouterr().out
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["n_thought_tokens"] == 5

    with pytest.raises(SystemExit) as exit_info:
        main([str(src), str(tmp_path / "converted")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m quietstar.tools.convert_reference: error: DST {tmp_path / 'converted'} already exists; pass "
        "overwrite=True (--overwrite) to replace it\n"
    )


def assert_nothing_written(tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference"]


@pytest.mark.parametrize("name", ["talk_head.0.2.bias", "end_embedding", "model.layers.1.mlp.up_proj.weight"])
def test_missing_tensor(tmp_path, reference_tensors, reference_tokenizer_dir, name):
    tensors = {k: v for k, v in reference_tensors.items() if k != name}
    src = write_reference_checkpoint(tmp_path / "reference", tensors, reference_tokenizer_dir, "bin-sharded")
    with pytest.raises(UserError, match=f"missing tensors: {name}"):
        convert_reference_checkpoint(src, tmp_path / "converted")
    assert_nothing_written(tmp_path)


def test_wrong_shape_and_unexpected_tensor(tmp_path, reference_tensors, reference_tokenizer_dir):
    tensors = dict(reference_tensors, start_embedding=torch.zeros(1, HIDDEN), think_head=torch.zeros(3))
    src = write_reference_checkpoint(tmp_path / "reference", tensors, reference_tokenizer_dir)
    with pytest.raises(UserError) as error:
        convert_reference_checkpoint(src, tmp_path / "converted")
    assert f"start_embedding: expected (2, {HIDDEN}), got (1, {HIDDEN})" in str(error.value)
    assert "not in the reference layout: think_head" in str(error.value)
    assert_nothing_written(tmp_path)


def test_missing_meta_tokens_in_tokenizer(tmp_path, reference_tensors):
    plain_tokenizer_dir = tmp_path / "plain_tokenizer"
    load_mistral_tokenizer().save_pretrained(plain_tokenizer_dir)
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, plain_tokenizer_dir)
    shutil.rmtree(plain_tokenizer_dir)
    with pytest.raises(UserError, match=r"lacks the reference's meta tokens.*<\|startthought\|>"):
        convert_reference_checkpoint(src, tmp_path / "converted")
    assert_nothing_written(tmp_path)


def test_unsupported_head_flag_and_not_mistral(tmp_path, reference_tensors, reference_tokenizer_dir):
    src = write_reference_checkpoint(
        tmp_path / "reference",
        reference_tensors,
        reference_tokenizer_dir,
        config_overrides={"use_weighted_talk_head": False},
    )
    with pytest.raises(UserError, match="use_weighted_talk_head=False is not supported"):
        convert_reference_checkpoint(src, tmp_path / "converted")
    (src / "config.json").write_text(json.dumps({**TINY_MISTRAL, **REFERENCE_EXTRA_FIELDS, "model_type": "llama"}))
    with pytest.raises(UserError, match="model_type must be 'mistral'"):
        convert_reference_checkpoint(src, tmp_path / "converted")
    assert_nothing_written(tmp_path)


def test_failure_while_writing_leaves_nothing(tmp_path, reference_tensors, reference_tokenizer_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, reference_tokenizer_dir)
    monkeypatch.setattr(convert_module, "_save_renamed_tokenizer", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_reference_checkpoint(src, tmp_path / "converted")
    assert_nothing_written(tmp_path)


def test_existing_destination(tmp_path, reference_tensors, reference_tokenizer_dir):
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, reference_tokenizer_dir)
    dst = tmp_path / "converted"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        convert_reference_checkpoint(src, dst)
    assert (dst / "stale.txt").exists()
    with pytest.raises(UserError, match="must differ from SRC"):
        convert_reference_checkpoint(src, src, overwrite=True)

    convert_reference_checkpoint(src, dst, overwrite=True)
    assert not (dst / "stale.txt").exists() and (dst / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "reference"]


# The tokenizer_config.json that transformers 4.37 (the reference's version) writes beside a bare tokenizer.model.
SENTENCEPIECE_TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "added_tokens_decoder": {
        str(i): {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for i, token in ((0, "<unk>"), (1, "<s>"), (2, "</s>"), (START_ID, "<|startthought|>"), (END_ID, "<|endthought|>"))
    },
    "additional_special_tokens": ["<|startthought|>", "<|endthought|>"],
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "legacy": True,
    "pad_token": None,
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
}


@pytest.fixture(scope="module")
def sentencepiece_tokenizer_dir(tmp_path_factory):
    """Only SentencePiece files: tokenizer.model, tokenizer_config.json and special_tokens_map.json (no tokenizer.json)."""
    directory = tmp_path_factory.mktemp("sentencepiece_tokenizer")
    shutil.copy(files("quietstar") / "assets" / "mistral_tokenizer" / "tokenizer.model", directory / "tokenizer.model")
    (directory / "tokenizer_config.json").write_text(json.dumps(SENTENCEPIECE_TOKENIZER_CONFIG))
    special = {"additional_special_tokens": ["<|startthought|>", "<|endthought|>"], "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    return directory


def assert_mistral_ids_and_meta_tokens(dst):
    tokenizer = AutoTokenizer.from_pretrained(dst)
    expected = load_mistral_tokenizer()
    text = "Let x = 3.\nThen 2x = 6, naïve 🙂"
    assert tokenizer(text).input_ids == expected(text).input_ids
    assert tokenizer("Let").input_ids == [1, 3169]
    assert tokenizer.convert_tokens_to_ids([START_OF_THOUGHT, END_OF_THOUGHT]) == [START_ID, END_ID]
    assert tokenizer.pad_token == tokenizer.eos_token
    assert "local_files_only" not in json.loads((dst / "tokenizer_config.json").read_text())


def test_sentencepiece_only_tokenizer_keeps_mistral_ids(tmp_path, reference_tensors, sentencepiece_tokenizer_dir):
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, sentencepiece_tokenizer_dir)
    assert not (src / "tokenizer.json").exists()
    dst = convert_reference_checkpoint(src, tmp_path / "converted")
    assert_mistral_ids_and_meta_tokens(dst)


def test_tokenizer_with_other_ids_is_refused(tmp_path, reference_tensors, sentencepiece_tokenizer_dir, monkeypatch):
    """What plain AutoTokenizer makes of a bare tokenizer.model beside a Mistral config ("Let" -> 8779) is refused."""
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, sentencepiece_tokenizer_dir)
    monkeypatch.setattr(convert_module, "load_sentencepiece_tokenizer", AutoTokenizer.from_pretrained)
    with pytest.raises(UserError) as error:
        convert_reference_checkpoint(src, tmp_path / "converted")
    assert f"the tokenizer of {src} does not give Mistral 7B v0.1's token ids" in str(error.value)
    assert "token 1 of 'Let x = 12." in str(error.value)
    assert str(error.value).endswith("is 8779 ('Let') instead of 3169 ('▁Let')")
    assert_nothing_written(tmp_path)


def test_source_without_tokenizer_uses_the_bundled_one(tmp_path, reference_tensors, caplog):
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, empty)
    shutil.rmtree(empty)
    with caplog.at_level(logging.WARNING, logger="quietstar.tools.convert_reference"):
        dst = convert_reference_checkpoint(src, tmp_path / "converted")
    assert any(
        "has no tokenizer files" in record.getMessage() and "bundled Mistral 7B v0.1 tokenizer" in record.getMessage()
        for record in caplog.records
    )
    assert_mistral_ids_and_meta_tokens(dst)
    model = AutoModelForCausalLM.from_pretrained(dst)
    assert (model.config.start_thought_token_id, model.config.end_thought_token_id) == (START_ID, END_ID)


def test_destination_gets_the_usual_permissions(tmp_path, reference_tensors, reference_tokenizer_dir):
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, reference_tokenizer_dir)
    previous = os.umask(0o022)
    try:
        dst = convert_reference_checkpoint(src, tmp_path / "converted")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o755
    assert stat.S_IMODE((dst / "config.json").stat().st_mode) == 0o644


def test_truncated_weights_are_named(tmp_path, reference_tensors, reference_tokenizer_dir):
    src = write_reference_checkpoint(tmp_path / "reference", reference_tensors, reference_tokenizer_dir)
    weights = src / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as file:
        file.truncate(size - 100)
    with pytest.raises(UserError, match=rf"^{re.escape(str(weights))} is truncated or damaged \({size - 100} bytes\): [^\n]+$"):
        convert_reference_checkpoint(src, tmp_path / "converted")
    assert_nothing_written(tmp_path)
