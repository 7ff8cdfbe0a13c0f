"""The `torch` thought attention against the `dense` oracle (explicit mask over concatenated keys)."""

import pytest
import torch

from quietstar.attention_quietstar import resolve_attention_impl, thought_attention


def random_inputs(batch, heads, kv_heads, length, passes, head_dim, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_()

    query = rand(batch, heads, length, head_dim)
    base_key, base_value = rand(batch, kv_heads, length, head_dim), rand(batch, kv_heads, length, head_dim)
    thought_keys = rand(batch, kv_heads, passes, length, head_dim)
    thought_values = rand(batch, kv_heads, passes, length, head_dim)
    return query, base_key, base_value, thought_keys, thought_values


def explicit_loop(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
    """Row-by-row definition: softmax over {base keys j <= i, not padding} and {thought keys of row i}."""
    batch, heads, length, _ = query.shape
    groups = heads // base_key.shape[1]
    out = torch.empty_like(query)
    for b in range(batch):
        for h in range(heads):
            kv = h // groups
            for i in range(length):
                visible = [j for j in range(i + 1) if key_padding_mask is None or key_padding_mask[b, j]]
                keys = torch.cat([base_key[b, kv, visible], thought_keys[b, kv, :, i]])
                values = torch.cat([base_value[b, kv, visible], thought_values[b, kv, :, i]])
                probs = torch.softmax(keys @ query[b, h, i] * scaling, dim=0)
                out[b, h, i] = probs @ values
    return out.transpose(1, 2)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "length", "passes", "padded"),
    [(4, 2, 7, 1, False), (4, 4, 5, 3, True), (6, 2, 9, 4, True)],
)
def test_torch_matches_dense_forward_and_gradients(heads, kv_heads, length, passes, padded):
    inputs = random_inputs(2, heads, kv_heads, length, passes, 8, seed=length)
    mask = None
    if padded:
        mask = torch.ones(2, length, dtype=torch.bool)
        mask[1, -2:] = False  # right padding
        mask[0, :1] = False  # left padding
    results = {}
    for impl in ("dense", "torch"):
        out = thought_attention(*inputs, mask, 0.3, impl)
        grad_out = torch.ones_like(out).mul_(torch.arange(out.shape[-1], dtype=out.dtype))
        grads = torch.autograd.grad(out, inputs, grad_out)
        results[impl] = (out, grads)
    torch.testing.assert_close(results["torch"][0], results["dense"][0])
    for grad_torch, grad_dense in zip(results["torch"][1], results["dense"][1]):
        torch.testing.assert_close(grad_torch, grad_dense)
    with torch.no_grad():
        torch.testing.assert_close(results["torch"][0], explicit_loop(*inputs, mask, 0.3))


def test_fp32_default_scaling_and_shape():
    inputs = random_inputs(1, 4, 2, 6, 2, 16, seed=0, dtype=torch.float32)
    out = thought_attention(*inputs, None)
    assert out.shape == (1, 6, 4, 16)
    torch.testing.assert_close(out, thought_attention(*inputs, None, 16**-0.5, "dense"), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named():
    inputs = random_inputs(1, 3, 2, 4, 1, 8, seed=0)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        thought_attention(*inputs, None)
    with pytest.raises(ValueError, match="unknown thought attention implementation 'flash'"):
        thought_attention(*random_inputs(1, 4, 2, 4, 1, 8, seed=0), None, impl="flash")


def test_auto_resolves_by_device():
    assert resolve_attention_impl("auto", torch.device("cpu")) == "torch"
    assert resolve_attention_impl("auto", torch.device("cuda")) == "triton"
    assert resolve_attention_impl("dense", torch.device("cuda")) == "dense"
