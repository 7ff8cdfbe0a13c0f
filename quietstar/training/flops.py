"""FLOP counts of a training step, for the MFU estimate.

Counts matmul FLOPs (2 per multiply-add) of the forward and multiplies by 3 for forward + backward (activation
recomputation is not counted, as usual for MFU). A Quiet-STaR step over B sequences of length L runs T + A passes
(T = n_thought_tokens, A = n_ahead_talk, base pass included) over B * N rows (N = n_thoughts); every pass costs a
plain forward's dense layers, a causal attention over the L base positions plus p diagonal thought keys (pass p),
and the LM head runs once for the base pass, once per sampled thought token and once per look-ahead target.
"""

import torch

from ..models.configuration_quietstar import QuietStarConfigMixin

# Dense bf16 peak FLOP/s per device (vendor spec sheets), matched against the device name.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def _layer_matmul_flops_per_token(config: QuietStarConfigMixin) -> float:
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = 2 * config.num_key_value_heads * head_dim
    return 2 * (hidden * (q_out + kv_out) + q_out * hidden + 3 * hidden * inner)


def _attention_flops(config: QuietStarConfigMixin, rows: int, length: int, extra_keys: int) -> float:
    """QK^T and PV over a causal L x L block plus `extra_keys` keys per query, all layers."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    keys_per_query = (length + 1) / 2 + extra_keys
    return 4 * rows * length * keys_per_query * config.num_attention_heads * head_dim * config.num_hidden_layers


def quietstar_step_flops(config: QuietStarConfigMixin, batch: int, length: int) -> float:
    """Forward + backward FLOPs of a Quiet-STaR training step on `batch` sequences of `length` tokens."""
    rows = batch * config.n_thoughts
    tokens = rows * length
    n_passes = config.n_thought_tokens + config.n_ahead_talk
    dense = n_passes * tokens * config.num_hidden_layers * _layer_matmul_flops_per_token(config)
    attention = sum(_attention_flops(config, rows, length, p) for p in range(n_passes))
    head_calls = 1 + config.n_sampled_thought_tokens + config.n_ahead_talk
    head = head_calls * 2 * tokens * config.hidden_size * config.vocab_size
    hidden = config.hidden_size
    mixing = config.n_ahead_talk * 2 * tokens * (2 * hidden * hidden + hidden * hidden + hidden)
    return 3 * (dense + attention + head + mixing)


def peak_flops_per_device(device: torch.device, override: float | None) -> float | None:
    """Peak FLOP/s of one device: `override` if given, else looked up by CUDA device name; None when unknown."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)
