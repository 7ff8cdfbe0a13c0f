"""The model layer's thought attention (the `torch` implementation and the dispatcher's checks) against the oracle,
`quietstar.ops.thought_attention.naive`: forward, and backward through autograd on the oracle."""

import pytest
import torch

from quietstar.models import thought_attention as attention_quietstar
from quietstar.models.thought_attention import ATTENTION_IMPLEMENTATIONS, resolve_attention_impl, thought_attention
from quietstar.ops.thought_attention.naive import naive_thought_attention

# (atol, rtol) of an implementation against the oracle on the same inputs, by input dtype
TOLERANCES = {torch.float64: (1e-10, 1e-8), torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 0.0)}


def random_inputs(batch, heads, kv_heads, length, passes, head_dim, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_()

    query = rand(batch, heads, length, head_dim)
    base_key, base_value = rand(batch, kv_heads, length, head_dim), rand(batch, kv_heads, length, head_dim)
    thought_keys = [rand(batch, kv_heads, length, head_dim) for _ in range(passes)]
    thought_values = [rand(batch, kv_heads, length, head_dim) for _ in range(passes)]
    return query, base_key, base_value, thought_keys, thought_values


def leaves(inputs):
    """The differentiable tensors of `random_inputs`, the per-pass lists flattened."""
    query, base_key, base_value, thought_keys, thought_values = inputs
    return [query, base_key, base_value, *thought_keys, *thought_values]


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
                keys = torch.cat([base_key[b, kv, visible], *(key[b, kv, i, None] for key in thought_keys)])
                values = torch.cat([base_value[b, kv, visible], *(value[b, kv, i, None] for value in thought_values)])
                probs = torch.softmax(keys @ query[b, h, i] * scaling, dim=0)
                out[b, h, i] = probs @ values
    return out.transpose(1, 2)


def oracle(inputs, key_padding_mask, scaling):
    """The naive oracle in the model layer's output layout (B, L, H, d)."""
    return naive_thought_attention(*inputs, key_padding_mask, scaling)[0].transpose(1, 2)


def assert_matches_oracle(inputs, key_padding_mask, scaling, impl="torch"):
    """Output and the gradient of every input of `impl` against autograd on the oracle, same inputs and dO."""
    out = thought_attention(*inputs, key_padding_mask, scaling, impl)
    expected = oracle(inputs, key_padding_mask, scaling)
    grad_out = torch.cos(torch.arange(out.numel(), dtype=torch.float64)).reshape(out.shape).to(out.dtype)
    grads = torch.autograd.grad(out, leaves(inputs), grad_out)
    expected_grads = torch.autograd.grad(expected, leaves(inputs), grad_out)
    atol, rtol = TOLERANCES[out.dtype]
    assert out.dtype == inputs[0].dtype and out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    for index, (grad, expected_grad) in enumerate(zip(grads, expected_grads)):
        torch.testing.assert_close(grad, expected_grad, atol=atol, rtol=rtol, msg=lambda m, i=index: f"input {i}: {m}")


def two_sided_padding(length):
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, -2:] = False  # right padding
    mask[0, :1] = False  # left padding
    return mask


@pytest.mark.parametrize(
    ("heads", "kv_heads", "length", "passes", "padded"),
    [(4, 2, 7, 1, False), (4, 4, 5, 3, True), (6, 2, 9, 4, True)],
)
def test_torch_matches_the_oracle_forward_and_gradients(heads, kv_heads, length, passes, padded):
    inputs = random_inputs(2, heads, kv_heads, length, passes, 8, seed=length)
    assert_matches_oracle(inputs, two_sided_padding(length) if padded else None, 0.3)


@pytest.mark.parametrize("padded", [False, True])
def test_oracle_is_the_row_by_row_definition(padded):
    inputs = random_inputs(2, 6, 2, 9, 3, 8, seed=4)
    mask = two_sided_padding(9) if padded else None
    with torch.no_grad():
        out, lse = naive_thought_attention(*inputs, mask, 0.3)
        torch.testing.assert_close(out.transpose(1, 2), explicit_loop(*inputs, mask, 0.3))
        assert lse.shape == (2, 6, 9) and torch.isfinite(lse).all()  # every row sees at least its thought keys


def test_fp32_default_scaling_and_shape():
    inputs = random_inputs(1, 4, 2, 6, 2, 16, seed=0, dtype=torch.float32)
    out = thought_attention(*inputs, None)
    assert out.shape == (1, 6, 4, 16)
    assert_matches_oracle(inputs, None, 16**-0.5)
    torch.testing.assert_close(out, thought_attention(*inputs, None, 16**-0.5), atol=0, rtol=0)


def test_bad_arguments_are_named():
    inputs = random_inputs(1, 3, 2, 4, 1, 8, seed=0)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        thought_attention(*inputs, None)
    good = random_inputs(1, 4, 2, 4, 2, 8, seed=0)
    query, base_key, base_value, thought_keys, thought_values = good
    for impl in ("flash", "dense"):
        with pytest.raises(ValueError, match=f"unknown thought attention implementation '{impl}'"):
            thought_attention(*good, None, impl=impl)
    with pytest.raises(ValueError, match="same number"):
        thought_attention(query, base_key, base_value, thought_keys, thought_values[:1], None)
    with pytest.raises(ValueError, match="same number"):
        thought_attention(query, base_key, base_value, [], [], None)
    with pytest.raises(ValueError, match="sequences"):
        thought_attention(query, base_key, base_value, torch.stack(thought_keys), thought_values, None)
    with pytest.raises(ValueError, match=r"thought_values\[1\] must be \(B, Hkv, L, d\)"):
        thought_attention(query, base_key, base_value, thought_keys, [thought_values[0], base_value[:, :, :3]], None)
    with pytest.raises(ValueError, match="base_value must be"):
        thought_attention(query, base_key, base_value[..., :4], thought_keys, thought_values, None)
    with pytest.raises(ValueError, match="one floating dtype"):
        thought_attention(query.float(), base_key, base_value, thought_keys, thought_values, None)
    with pytest.raises(ValueError, match="key_padding_mask must be a bool"):
        thought_attention(*good, torch.ones(1, 4))
    with pytest.raises(ValueError, match="key_padding_mask must be a bool"):
        thought_attention(*good, torch.ones(1, 5, dtype=torch.bool))
    for impl in ("torch", "triton"):  # checked before any implementation runs
        with pytest.raises(ValueError, match="multiple of key/value heads"):
            thought_attention(*inputs, None, impl=impl)


def test_torch_keeps_each_pass_once_and_no_length_squared_tensor_for_backward():
    """Beyond its inputs, one call saves only the output and two (B, H, L) fp32 log-sum-exps: no L x L scores or
    probabilities, and no copy of q or of the passes' K/V per pass (which would add up to a P^2 term over a step)."""
    batch, heads, length, head_dim = 1, 4, 16, 8

    def saved_bytes(passes, length):
        inputs = random_inputs(batch, heads, 2, length, passes, head_dim, seed=0, dtype=torch.float32)
        storages = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            thought_attention(*inputs, None, impl="torch")
        input_ptrs = {t.untyped_storage().data_ptr() for t in leaves(inputs)}
        return sum(n for ptr, n in storages.items() if ptr not in input_ptrs)

    output, log_sum_exp = batch * heads * length * head_dim * 4, batch * heads * length * 4
    assert saved_bytes(1, length) == output + 2 * log_sum_exp
    assert saved_bytes(9, length) == saved_bytes(1, length)
    assert saved_bytes(1, 4 * length) == 4 * saved_bytes(1, length)  # linear in L


def test_plain_torch_base_path_matches_the_oracle(monkeypatch):
    """Off CPU the base part runs in plain torch with the fused kernel's contract; run that path here against the
    oracle, forward and backward, with GQA and left/right padding."""
    monkeypatch.setattr(attention_quietstar, "_fused_base_forward", attention_quietstar._math_base_forward)
    monkeypatch.setattr(attention_quietstar, "_fused_base_backward", attention_quietstar._math_base_backward)
    inputs = random_inputs(2, 6, 2, 9, 3, 8, seed=1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2], mask[1, -3:] = False, False
    for key_padding_mask in (None, mask):
        assert_matches_oracle(inputs, key_padding_mask, 0.3)


def test_bfloat16_inputs_merge_in_float32():
    """bf16 q/K/V: the output and gradients are within bf16 rounding of the oracle, which computes in fp32 on the
    same (rounded) inputs."""
    inputs = random_inputs(1, 6, 2, 40, 4, 16, seed=2, dtype=torch.bfloat16)
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, :3] = False
    out = thought_attention(*inputs, mask, 0.25, "torch")
    assert out.dtype == torch.bfloat16
    as_double = [t.detach().double() for t in inputs[:3]], [[t.detach().double() for t in ts] for ts in inputs[3:]]
    exact = oracle((*as_double[0], *as_double[1]), mask, 0.25)
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1.6e-2)
    assert_matches_oracle(inputs, mask, 0.25)


def test_auto_resolves_by_device():
    assert ATTENTION_IMPLEMENTATIONS == ("auto", "torch", "triton")
    assert resolve_attention_impl("auto", torch.device("cpu")) == "torch"
    assert resolve_attention_impl("auto", torch.device("cuda")) == "triton"
    assert resolve_attention_impl("torch", torch.device("cuda")) == "torch"
