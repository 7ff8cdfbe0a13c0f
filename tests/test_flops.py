"""The FLOP count of a Quiet-STaR training step (the MFU estimate) against a plain causal-LM step's."""

import pytest

from quietstar import QuietStarConfig
from quietstar.training.flops import quietstar_step_flops


def plain_step_flops(config: QuietStarConfig, batch: int, length: int) -> float:
    """Forward + backward FLOPs (3 x the forward's matmuls, 2 per multiply-add) of a plain causal-LM step on `batch`
    x `length` tokens: every token through each layer's projections and MLP and the LM head, and causal attention
    (QK^T and PV over (L + 1) / 2 keys per query on average)."""
    hidden, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
    query_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    layer_weights = hidden * (query_width + 2 * kv_width) + query_width * hidden + 3 * hidden * config.intermediate_size
    tokens = batch * length
    matmuls = 2 * tokens * (config.num_hidden_layers * layer_weights + hidden * config.vocab_size)
    attention = 2 * 2 * tokens * (length + 1) / 2 * query_width * config.num_hidden_layers
    return 3 * (matmuls + attention)


def test_flops_count_every_pass():
    config = QuietStarConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=32002, n_thought_tokens=11, n_ahead_talk=4, n_thoughts=2,
    )
    ratio = quietstar_step_flops(config, 8, 256) / plain_step_flops(config, 8, 256)
    passes = (config.n_thought_tokens + config.n_ahead_talk) * config.n_thoughts
    assert 0.95 * passes < ratio < 1.05 * passes
    assert plain_step_flops(config, 1, 1) == pytest.approx(6 * 7.24e9, rel=0.02)  # ~6 N per token for Mistral 7B
