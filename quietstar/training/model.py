"""Tokenizer and model set-up: a base checkpoint of a supported family (meta tokens added), a quietstar checkpoint,
or a random tiny model."""

import re

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..families import family_of, from_base, installed_package_directory
from ..checkpoint_files import check_base_source
from ..meta_tokens import add_thought_tokens, add_thought_tokens_to_tokenizer
from ..models.modeling_quietstar import QuietStarModelMixin
from ..tokenizer import forget_load_options, load_mistral_tokenizer
from .config import BUILTIN_MISTRAL_TOKENIZER, INSTALLED_PACKAGE_PREFIX, ConfigError, ModelConfig, check_model_fields
from .parallel import World, apply_fsdp, materialize_from_rank0


def model_source(config: ModelConfig) -> str:
    """`model.name_or_path` (set) as a directory or hub id, `package:<name>` resolved to the package's directory.

    Raises `CheckpointError` naming the path when there is nothing to load there (a missing directory, a directory
    without `config.json` or without `model.gguf_file`, a damaged weights file) and `ConfigError` for a missing
    package.
    """
    source = config.name_or_path
    if source.startswith(INSTALLED_PACKAGE_PREFIX):
        try:
            source = str(installed_package_directory(source[len(INSTALLED_PACKAGE_PREFIX):]))
        except FileNotFoundError as error:
            raise ConfigError(f"model.name_or_path {config.name_or_path}: {error}") from None
    check_base_source(source, config.gguf_file)
    return source


def _hub_error(config: ModelConfig, error: OSError) -> ConfigError:
    """One line for a `model.name_or_path` that is no directory and no loadable hub model."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"model.name_or_path {config.name_or_path}: no such directory, and no hub model could be loaded: {reason}")


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer named by `model.tokenizer` (default: the one stored with `model.name_or_path`, or in
    `model.gguf_file`), with the thought meta tokens already added (so a random-initialised model gets its final
    vocabulary size); pad = EOS when the tokenizer has no pad token.

    Padding is on the left, for decoder-only generation: the tokenizer is saved with every checkpoint, and a batch of
    prompts padded on the right would generate after its padding (some bases, SmolLM2 among them, save right padding).
    """
    if config.tokenizer == BUILTIN_MISTRAL_TOKENIZER:
        tokenizer = load_mistral_tokenizer()
    else:
        try:
            if config.tokenizer is None:
                source = model_source(config)
                tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=config.gguf_file)
            else:
                tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        except OSError as error:
            if config.tokenizer is not None:
                raise ConfigError(f"model.tokenizer {config.tokenizer}: cannot be loaded: {str(error).strip().splitlines()[0]}") from None
            raise _hub_error(config, error) from None
        forget_load_options(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # what save_pretrained writes to tokenizer_config.json
    add_thought_tokens_to_tokenizer(tokenizer)
    return tokenizer


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> QuietStarModelMixin:
    """A float32 Quiet-STaR model of the right family on the CPU, with the meta tokens in `tokenizer` and the model.

    - `name_or_path` is a quietstar checkpoint: loaded as is (trained meta embeddings and mixing head kept), with
      the `model.quietstar` fields overriding its config.
    - `name_or_path` is a base checkpoint (safetensors, or `gguf_file` in it, dequantised): its family is read from its config (a `ConfigError` names an unsupported
      `model_type`); its weights and config plus the `model.quietstar` fields; the meta tokens are added
      (embeddings from "---", mixing head at zero).
    - `name_or_path` is None: random initialisation (seeded) of `model.family` from `model.architecture` and
      `model.quietstar`, with the tokenizer's vocabulary and special-token ids.
    """
    if config.name_or_path is None:
        family = family_of(config.family)
        model_config = family.config_class(
            **config.architecture,
            **config.quietstar,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = family.model_class(model_config)
    elif config.gguf_file is not None:
        try:  # the family and its field checks come from the GGUF's own config, read by `from_base`
            model = from_base(model_source(config), gguf_file=config.gguf_file, dtype=torch.float32, **config.quietstar)
        except ValueError as error:
            raise ConfigError(f"model.name_or_path {config.name_or_path} (model.gguf_file {config.gguf_file}): {error}") from None
    else:
        source = model_source(config)
        try:
            base_config = AutoConfig.from_pretrained(source)
        except OSError as error:
            raise _hub_error(config, error) from None
        try:
            family = family_of(base_config.model_type, f"model.name_or_path {config.name_or_path}")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        check_model_fields(config, family)  # loading with overrides would not check them
        if base_config.model_type == family.model_type:
            model = family.model_class.from_pretrained(source, dtype=torch.float32, **config.quietstar)
        else:
            model = from_base(source, dtype=torch.float32, **config.quietstar)
    add_thought_tokens(model, tokenizer)
    return model


def freeze_parameters(model: torch.nn.Module, trainable_patterns: list[str]) -> int:
    """Freeze every parameter whose name matches none of `trainable_patterns` (`re.search`); return how many train.

    Raises `ConfigError` naming a pattern (`train.trainable_parameters.<i>`) that matches no parameter.
    """
    names = [name for name, _ in model.named_parameters()]
    for i, pattern in enumerate(trainable_patterns):
        if not any(re.search(pattern, name) for name in names):
            raise ConfigError(f"train.trainable_parameters.{i} {pattern!r} matches no parameter of the model")
    trainable = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(re.search(pattern, name) for pattern in trainable_patterns))
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable


def setup_model(
    config: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    *,
    seed: int,
    param_dtype: str,
    activation_checkpointing: bool,
    reshard_after_forward: bool,
    trainable_parameters: list[str] | None = None,
) -> QuietStarModelMixin:
    """The model ready to train on `world.device`: built, activation-checkpointed and (under torchrun) sharded; only
    the parameters matching `trainable_parameters` (all when None) train.

    Under torchrun only rank 0 builds (loads) the real model; the other ranks build the same architecture on the meta
    device, all ranks shard it, and rank 0's weights are broadcast shard by shard (`materialize_from_rank0`).
    """
    if world.distributed:
        model = build_model(config, tokenizer, seed) if world.is_main else None
        payload = [model.config.to_dict() if world.is_main else None]
        dist.broadcast_object_list(payload, src=0)
        full_state_dict = model.state_dict() if world.is_main else {}
        family = family_of(payload[0]["model_type"])
        model_config = family.config_class.from_dict(payload[0])
        generation_config = model.generation_config if world.is_main else None
        with torch.device("meta"):
            sharded = family.model_class(model_config)
        if generation_config is not None:
            sharded.generation_config = generation_config
        model = sharded
    else:
        model = build_model(config, tokenizer, seed)
    if trainable_parameters is not None:
        freeze_parameters(model, trainable_parameters)
    model.train()
    if activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if world.distributed:
        apply_fsdp(model, world, param_dtype, reshard_after_forward)
        materialize_from_rank0(model, full_state_dict, world)
    else:
        model.to(world.device)
    return model
