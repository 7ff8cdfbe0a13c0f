"""Tokenizer and model set-up: a base checkpoint of a supported family (meta tokens added), a quietstar checkpoint,
or a random tiny model."""

from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..families import config_from_base, family_of
from ..file_checks import check_weight_files
from ..meta_tokens import END_OF_THOUGHT, START_OF_THOUGHT, add_thought_tokens
from ..thinking_model import QuietStarModelMixin
from ..tokenizer import forget_load_options, load_mistral_tokenizer
from .config import BUILTIN_MISTRAL_TOKENIZER, ConfigError, ModelConfig, check_model_fields
from .parallel import World, apply_fsdp, materialize_from_rank0


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer named by `model.tokenizer` (default: the one stored with `model.name_or_path`), with the
    thought meta tokens already added (so a random-initialised model gets its final vocabulary size); pad = EOS."""
    if config.tokenizer == BUILTIN_MISTRAL_TOKENIZER:
        tokenizer = load_mistral_tokenizer()
    else:
        tokenizer = forget_load_options(AutoTokenizer.from_pretrained(config.tokenizer or config.name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_special_tokens({"additional_special_tokens": [START_OF_THOUGHT, END_OF_THOUGHT]})
    return tokenizer


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> QuietStarModelMixin:
    """A float32 Quiet-STaR model of the right family on the CPU, with the meta tokens in `tokenizer` and the model.

    - `name_or_path` is a quietstar checkpoint: loaded as is (trained meta embeddings and mixing head kept), with
      the `model.quietstar` fields overriding its config.
    - `name_or_path` is a base checkpoint: its family is read from its config (a `ConfigError` names an unsupported
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
    else:
        if Path(config.name_or_path).is_dir():
            check_weight_files(config.name_or_path)  # a truncated model.safetensors is named, not a bare header error
        base_config = AutoConfig.from_pretrained(config.name_or_path)
        try:
            family = family_of(base_config.model_type, f"model.name_or_path {config.name_or_path}")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        check_model_fields(config, family)  # loading with overrides would not check them
        if base_config.model_type == family.model_type:
            model = family.model_class.from_pretrained(config.name_or_path, dtype=torch.float32, **config.quietstar)
        else:
            model_config = config_from_base(base_config, **config.quietstar, dtype=torch.float32)
            model = family.model_class.from_pretrained(config.name_or_path, config=model_config, dtype=torch.float32)
    add_thought_tokens(model, tokenizer)
    return model


def setup_model(
    config: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    *,
    seed: int,
    param_dtype: str,
    activation_checkpointing: bool,
    reshard_after_forward: bool,
) -> QuietStarModelMixin:
    """The model ready to train on `world.device`: built, activation-checkpointed and (under torchrun) sharded.

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
    model.train()
    if activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if world.distributed:
        apply_fsdp(model, world, param_dtype, reshard_after_forward)
        materialize_from_rank0(model, full_state_dict, world)
    else:
        model.to(world.device)
    return model
