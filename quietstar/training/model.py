"""Tokenizer and model set-up: a base Mistral (meta tokens added), a quietstar checkpoint, or a random tiny model."""


import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..configuration_quietstar import QuietStarConfig
from ..meta_tokens import END_OF_THOUGHT, START_OF_THOUGHT, add_thought_tokens
from ..modeling_quietstar import QuietStarForCausalLM
from ..tokenizer import load_mistral_tokenizer
from .config import BUILTIN_MISTRAL_TOKENIZER, ModelConfig
from .parallel import World, apply_fsdp, materialize_from_rank0

# Fields of a base checkpoint's config that must not carry over into a QuietStarConfig.
_BASE_CONFIG_DROP = ("model_type", "architectures", "transformers_version", "sliding_window")


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer named by `model.tokenizer` (default: the one stored with `model.name_or_path`), with the
    thought meta tokens already added (so a random-initialised model gets its final vocabulary size); pad = EOS."""
    if config.tokenizer == BUILTIN_MISTRAL_TOKENIZER:
        tokenizer = load_mistral_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_special_tokens({"additional_special_tokens": [START_OF_THOUGHT, END_OF_THOUGHT]})
    return tokenizer


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> QuietStarForCausalLM:
    """A float32 `QuietStarForCausalLM` on the CPU with the meta tokens in `tokenizer` and the model.

    - `name_or_path` is a quietstar checkpoint: loaded as is (trained meta embeddings and mixing head kept), with
      the `model.quietstar` fields overriding its config.
    - `name_or_path` is another (Mistral) checkpoint: its weights and config plus the `model.quietstar` fields;
      the meta tokens are added (embeddings from "---", mixing head at zero).
    - `name_or_path` is None: random initialisation (seeded) from `model.architecture` and `model.quietstar`, with
      the tokenizer's vocabulary and special-token ids.
    """
    if config.name_or_path is None:
        model_config = QuietStarConfig(
            **config.architecture,
            **config.quietstar,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = QuietStarForCausalLM(model_config)
    else:
        base_config = AutoConfig.from_pretrained(config.name_or_path)
        if base_config.model_type == QuietStarConfig.model_type:
            model = QuietStarForCausalLM.from_pretrained(config.name_or_path, dtype=torch.float32, **config.quietstar)
        else:
            fields = {k: v for k, v in base_config.to_dict().items() if k not in _BASE_CONFIG_DROP}
            model_config = QuietStarConfig(**{**fields, **config.quietstar, "dtype": torch.float32})
            model = QuietStarForCausalLM.from_pretrained(config.name_or_path, config=model_config, dtype=torch.float32)
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
) -> QuietStarForCausalLM:
    """The model ready to train on `world.device`: built, activation-checkpointed and (under torchrun) sharded.

    Under torchrun only rank 0 builds (loads) the real model; the other ranks build the same architecture on the meta
    device, all ranks shard it, and rank 0's weights are broadcast shard by shard (`materialize_from_rank0`).
    """
    if world.distributed:
        model = build_model(config, tokenizer, seed) if world.is_main else None
        payload = [model.config.to_dict() if world.is_main else None]
        dist.broadcast_object_list(payload, src=0)
        full_state_dict = model.state_dict() if world.is_main else {}
        model_config = QuietStarConfig.from_dict(payload[0])
        generation_config = model.generation_config if world.is_main else None
        with torch.device("meta"):
            sharded = QuietStarForCausalLM(model_config)
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
