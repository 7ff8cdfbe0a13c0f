"""Tiny Quiet-STaR models for tests (hidden 64, 2 layers, GQA 4/2 heads, vocabulary 96 with meta tokens 94/95).

Every supported family has a tiny config that exercises what sets it apart: Llama with Llama 3 rope scaling and tied
embeddings, Qwen2 with q/k/v biases, Qwen3 with q/k norms and head_dim 32 (not hidden / heads = 16).
"""

import torch
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

import quietstar

TINY_VOCAB = 96
START_ID, END_ID = 94, 95
FAMILY_NAMES = ("mistral", "llama", "qwen2", "qwen3")
PLAIN_MODEL_CLASSES = {
    "mistral": MistralForCausalLM,
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
}
FAMILY_FIELDS = {
    "mistral": {},
    "llama": dict(
        tie_word_embeddings=True,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "qwen2": {},
    "qwen3": dict(head_dim=32),
}


def tiny_config(family: str = "mistral", **overrides) -> quietstar.QuietStarConfigMixin:
    """A 2-layer config of `family` with GQA (4 query heads, 2 KV heads) and meta tokens 94/95."""
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
        **FAMILY_FIELDS[family],
    )
    fields.update(overrides)
    return quietstar.family_of(family).config_class(**fields)


def make_thinking(model: quietstar.QuietStarModelMixin, seed: int = 0) -> quietstar.QuietStarModelMixin:
    """Give a fresh model random meta embeddings and a non-zero mixing head so thoughts change predictions; give
    Qwen2's zero-initialised q/k/v biases random values so they matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.thought_embeddings.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02 / model.config.meta_embedding_scale * 50)
        output = model.mixing_head.output.weight
        output.copy_(torch.randn(output.shape, generator=generator) * 0.5)
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def tiny_model(seed: int = 0, family: str = "mistral", **overrides) -> quietstar.QuietStarModelMixin:
    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    return make_thinking(quietstar.family_of(family).model_class(config), seed)


def plain_model(model: quietstar.QuietStarModelMixin, family: str):
    """The family's plain transformers causal LM with `model`'s weights (the thinking parts left out)."""
    plain = PLAIN_MODEL_CLASSES[family](model.config).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing, missing
    assert all(key.startswith(("mixing_head", "thought_")) for key in unexpected), unexpected
    return plain
