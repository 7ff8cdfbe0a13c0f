"""train.py picks the model family from `model.name_or_path`'s config (or `model.family` for a random model) and
refuses checkpoints of unsupported families with one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import FAMILY_FIELDS
from safetensors import safe_open
from tiny_checkpoint import save_tiny_base_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import quietstar
from quietstar.training.config import ConfigError, ModelConfig, load_config
from quietstar.training.model import build_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
SHORT_RUN = [
    "--data.seq_len=16",
    "--data.synthetic.n_documents=100",
    "--train.max_steps=2",
    "--train.global_batch_size=2",
    "--train.warmup_steps=1",
    "--logging.interval=1",
    "--checkpoint.interval=2",
]


def train(output_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "train.py"), "--output-dir", str(output_dir), *SHORT_RUN, *args]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_training_from_a_base_llama_checkpoint_exports_a_llama_quietstar_model(tmp_path):
    base = tmp_path / "llama-base"
    config = LlamaConfig(
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, **FAMILY_FIELDS["llama"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(base)
    # exported in bfloat16: the cast of the float32 weights made two tensors of the tied table
    result = train(
        tmp_path / "run", f"--model.name_or_path={base}", "--model.architecture={}", "--checkpoint.export_dtype=bfloat16"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == "quietstar_llama"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model) is quietstar.QuietStarLlamaForCausalLM
    assert model.config.rope_parameters["rope_type"] == "llama3" and model.config.tie_word_embeddings
    assert model.config.vocab_size == 32002 and model.config.start_thought_token_id == 32000
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    with safe_open(final / "model.safetensors", "pt") as weights:  # the tied table is stored once, as for the base
        assert "lm_head.weight" not in weights.keys() and "model.embed_tokens.weight" in weights.keys()
    assert AutoTokenizer.from_pretrained(final).padding_side == "left"  # for batched generation from the checkpoint


def test_a_tokenizer_that_pads_on_the_right_is_saved_padding_on_the_left(tmp_path):
    """Checkpoints are for decoder-only generation; some bases (SmolLM2) save right padding."""
    source = quietstar.load_mistral_tokenizer()
    source.padding_side = "right"
    source.init_kwargs["padding_side"] = "right"
    source.save_pretrained(tmp_path / "right")
    assert AutoTokenizer.from_pretrained(tmp_path / "right").padding_side == "right"
    config = load_config(REPO / "configs" / "tiny.yaml", [f"model.tokenizer={tmp_path / 'right'}"])
    tokenizer = load_tokenizer(config.model)
    tokenizer.save_pretrained(tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").padding_side == "left"


@pytest.mark.parametrize(
    ("name_or_path", "message"),
    [
        ("/no/such/dir", "model.name_or_path: no such directory: /no/such/dir (and not a hub id)"),
        ("package:no_such_package_q8", "model.name_or_path package:no_such_package_q8: the Python package "
         "'no_such_package_q8' is not installed"),
    ],
)
def test_a_base_path_that_does_not_exist_is_one_line(tmp_path, name_or_path, message):
    result = train(tmp_path / "run", f"--model.name_or_path={name_or_path}", "--model.architecture={}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"train.py: error: {message}"


def test_a_gguf_file_missing_from_its_directory_is_one_line(tmp_path):
    result = train(
        tmp_path / "run", f"--model.name_or_path={tmp_path}", "--model.gguf_file=model.gguf", "--model.architecture={}",
        "--model.tokenizer=null",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"train.py: error: no GGUF file 'model.gguf' in {tmp_path}"
    )


def test_only_the_trainable_parameters_change(tmp_path):
    """`train.trainable_parameters`: the matching parameters train, every other one keeps its initial value."""
    config = load_config(REPO / "configs" / "tiny.yaml", [])
    initial = build_model(config.model, load_tokenizer(config.model), seed=config.train.seed).state_dict()
    result = train(tmp_path / "run", "--train.trainable_parameters=['mixing_head\\.', 'layers\\.1\\.mlp\\.']")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").state_dict()
    changed = {name for name, value in initial.items() if not torch.equal(trained[name], value)}
    assert changed and all(name.startswith(("mixing_head.", "model.layers.1.mlp.")) for name in changed), changed
    assert any(name.startswith("mixing_head.") for name in changed)
    assert any(name.startswith("model.layers.1.mlp.") for name in changed)


def test_a_trainable_pattern_that_matches_nothing_is_one_line(tmp_path):
    result = train(tmp_path / "run", "--train.trainable_parameters=[mixing_head, no_such_layer]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: train.trainable_parameters.1 'no_such_layer' matches no parameter of the model"
    )


def test_a_random_model_of_another_family_is_built_from_model_family(tmp_path):
    result = train(tmp_path / "run", "--model.family=qwen3", "--model.architecture.head_dim=32")
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert type(model) is quietstar.QuietStarQwen3ForCausalLM and model.config.head_dim == 32


def test_a_checkpoint_of_an_unsupported_family_is_refused_in_one_line(tmp_path):
    base = tmp_path / "gpt2-base"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(base)
    result = train(tmp_path / "run", f"--model.name_or_path={base}", "--model.architecture={}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"train.py: error: model.name_or_path {base}: model_type 'gpt2' is not supported by quietstar "
        "(supported families: mistral, llama, qwen2, qwen3)"
    )
    assert not (tmp_path / "run").exists()


def test_quietstar_field_errors_name_the_config_class_of_the_family_in_use(tmp_path):
    base = save_tiny_base_checkpoint(tmp_path / "llama")
    message = r"^model\.quietstar/model\.architecture: {}\.n_thought_tokens: Value must be greater or equal to 3, got 2\.$"
    too_short = "model.quietstar.n_thought_tokens=2"
    # A local Llama checkpoint: its family is read from its config.json while the config is checked.
    with pytest.raises(ConfigError, match=message.format("QuietStarLlamaConfig")):
        load_config(REPO / "configs" / "tiny.yaml", [f"model.name_or_path={base}", "model.architecture={}", too_short])
    with pytest.raises(ConfigError, match=message.format("QuietStarQwen3Config")):
        load_config(REPO / "configs" / "tiny.yaml", ["model.family=qwen3", too_short])
    # A checkpoint whose config is only read when the model is built (a hub id) is checked there.
    model_config = ModelConfig(name_or_path=str(base), quietstar={"n_thought_tokens": 2})
    with pytest.raises(ConfigError, match=message.format("QuietStarLlamaConfig")):
        build_model(model_config, load_tokenizer(model_config), seed=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.family=gemma", r"model.family must be one of \['mistral', 'llama', 'qwen2', 'qwen3'\], got 'gemma'"),
        ("model.architecture.head_dim_typo=3", r"'model.architecture.head_dim_typo': not a QuietStarConfig field"),
        ("model.quietstar.hidden_size=3", r"'model.quietstar.hidden_size': not a Quiet-STaR field"),
    ],
)
def test_family_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "tiny.yaml", [override])


@pytest.mark.parametrize("name", ["llama3_8b_openwebmath", "qwen3_8b_openwebmath"])
def test_family_configs_carry_the_paper_knobs(name):
    config = load_config(REPO / "configs" / f"{name}.yaml", [])
    paper = load_config(REPO / "configs" / "mistral7b_openwebmath.yaml", [])
    assert config.model.quietstar == paper.model.quietstar and config.train == paper.train
