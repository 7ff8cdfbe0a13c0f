"""A tiny saved Quiet-STaR checkpoint with the real Mistral tokenizer (vocabulary 32000 + the two meta tokens)."""

from pathlib import Path

import torch
from tiny import make_thinking, tiny_config

import quietstar


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
