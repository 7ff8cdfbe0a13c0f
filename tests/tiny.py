"""Tiny Quiet-STaR models for tests (hidden 64, 2 layers, GQA 4/2 heads, vocabulary 96 with meta tokens 94/95)."""

import torch

import quietstar

TINY_VOCAB = 96
START_ID, END_ID = 94, 95


def tiny_config(**overrides) -> quietstar.QuietStarConfig:
    """A 2-layer Mistral-shaped config with GQA (4 query heads, 2 KV heads) and meta tokens 94/95."""
    fields = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        start_thought_token_id=START_ID,
        end_thought_token_id=END_ID,
        n_thought_tokens=5,
        n_ahead_talk=3,
        n_thoughts=2,
        attention_impl="torch",
    )
    fields.update(overrides)
    return quietstar.QuietStarConfig(**fields)


def make_thinking(model: quietstar.QuietStarForCausalLM, seed: int = 0) -> quietstar.QuietStarForCausalLM:
    """Give a fresh model random meta embeddings and a non-zero mixing head so thoughts change predictions."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.thought_embeddings.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02 / model.config.meta_embedding_scale * 50)
        output = model.mixing_head.output.weight
        output.copy_(torch.randn(output.shape, generator=generator) * 0.5)
    return model


def tiny_model(seed: int = 0, **overrides) -> quietstar.QuietStarForCausalLM:
    torch.manual_seed(seed)
    return make_thinking(quietstar.QuietStarForCausalLM(tiny_config(**overrides)), seed)
