"""Tiny saved checkpoints with the real Mistral tokenizer: Quiet-STaR (vocabulary 32000 + the two meta tokens) and
plain base models (vocabulary 32000)."""

import dataclasses
from pathlib import Path

import torch
from tiny import PLAIN_MODEL_CLASSES, make_thinking, tiny_config

import quietstar

QUIETSTAR_FIELDS = {field.name for field in dataclasses.fields(quietstar.QuietStarConfigMixin)}


def save_tiny_checkpoint(directory: Path, seed: int = 0, **overrides) -> Path:
    """Save a 2-layer hidden-64 thinking model and its tokenizer (meta tokens added) to `directory`; return it."""
    tokenizer = quietstar.load_mistral_tokenizer()
    fields = dict(vocab_size=len(tokenizer), start_thought_token_id=None, end_thought_token_id=None, n_thoughts=1)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = quietstar.QuietStarForCausalLM(tiny_config(**fields))
    quietstar.add_thought_tokens(model, tokenizer)
    make_thinking(model, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def save_tiny_base_checkpoint(directory: Path, family: str = "llama", seed: int = 0) -> Path:
    """Save a plain 2-layer hidden-64 causal LM of `family` (no Quiet-STaR parts, a base model as found on the hub)
    with the Mistral tokenizer (no meta tokens) to `directory`; return it."""
    tokenizer = quietstar.load_mistral_tokenizer()
    fields = {
        key: value
        for key, value in tiny_config(family).to_dict().items()
        if key not in QUIETSTAR_FIELDS and key not in ("model_type", "architectures", "transformers_version")
    }
    fields.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = PLAIN_MODEL_CLASSES[family](PLAIN_MODEL_CLASSES[family].config_class(**fields))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)
