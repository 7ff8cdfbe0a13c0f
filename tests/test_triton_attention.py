"""The fused Triton thought attention (`quietstar.ops.thought_attention.triton`) against the oracle (`naive.py`).

On CPU the kernels run in Triton's interpreter, which needs TRITON_INTERPRET=1 *before triton.language is first
imported*: `@triton.jit` picks the interpreter when a function is defined (including triton's own standard library,
e.g. `tl.zeros` and `tl.sum`, defined at `import triton.language`), reading the variable through
`triton.knobs.runtime.interpret` at that moment. In this suite `tests/conftest.py` imports quietstar, hence
transformers' Mistral, hence triton, before this module is collected. So when triton is already loaded in compiled
mode and there is no GPU, the CPU tests here are skipped in-process and `test_cpu_suite_in_interpreter_subprocess`
runs this file again in a child process with TRITON_INTERPRET=1 (the variable never leaks into other tests).
When nothing has imported triton yet (or it was imported interpreted), they run in-process.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and "triton.language" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton.language as tl  # noqa: E402
from tiny import FAMILY_NAMES, TINY_VOCAB, tiny_model  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from quietstar.kernels.thought_attention import thought_attention as thought_attention_0_1  # noqa: E402
from quietstar.models.thought_attention import THOUGHT_ATTENTION_FUNCTIONS  # noqa: E402
from quietstar.models.thought_attention import thought_attention as dispatch_thought_attention  # noqa: E402
from quietstar.ops.thought_attention import autotune  # noqa: E402
from quietstar.ops.thought_attention import triton as kernels  # noqa: E402
from quietstar.ops.thought_attention.naive import naive_thought_attention  # noqa: E402

RUNNABLE_HERE = CUDA or (kernels.INTERPRET and isinstance(tl.zeros, InterpretedFunction))
in_process = pytest.mark.skipif(
    not RUNNABLE_HERE,
    reason="triton was imported without TRITON_INTERPRET=1 and there is no GPU: "
    "test_cpu_suite_in_interpreter_subprocess runs these tests",
)

DEVICE = "cuda" if CUDA else "cpu"
N_CPU_TESTS = 40  # tests of this file that run on CPU (in the interpreter subprocess)
# (atol, rtol) against the fp64 oracle evaluated on the same (rounded) inputs
TOLERANCES = {torch.float32: (2e-5, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 5e-2)}


def random_inputs(batch, heads, kv_heads, length, passes, head_dim, dtype, seed, device=DEVICE):
    """[q (B, H, L, d), base_key, base_value (B, Hkv, L, d), thought_keys, thought_values (lists of p tensors
    (B, Hkv, L, d))], leaves requiring grad."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()

    return [
        rand(batch, heads, length, head_dim),
        rand(batch, kv_heads, length, head_dim),
        rand(batch, kv_heads, length, head_dim),
        [rand(batch, kv_heads, length, head_dim) for _ in range(passes)],
        [rand(batch, kv_heads, length, head_dim) for _ in range(passes)],
    ]


def flat(inputs) -> list[torch.Tensor]:
    """[q, base_key, base_value, kt_1..kt_p, vt_1..vt_p]: every tensor that gets a gradient."""
    q, base_key, base_value, thought_keys, thought_values = inputs
    return [q, base_key, base_value, *thought_keys, *thought_values]


def grad_names(passes: int) -> list[str]:
    return ["grad_query", "grad_base_key", "grad_base_value", *(f"grad_thought_keys[{s}]" for s in range(passes)),
            *(f"grad_thought_values[{s}]" for s in range(passes))]


def padding_mask(batch, length, kind, device=DEVICE):
    """(B, L) bool: None, right padding on row 0, or also left padding on the last row ("both")."""
    if kind is None:
        return None
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    mask[0, length - 5 :] = False
    if kind == "both":
        mask[-1, :4] = False
    return mask


def oracle(inputs, mask, scaling):
    """The oracle's output (B, H, L, d), computed in fp64, and the flat fp64 leaves it was computed from."""
    q, base_key, base_value, thought_keys, thought_values = inputs
    passes = len(thought_keys)
    exact = [t.detach().double().requires_grad_() for t in flat(inputs)]
    out, _ = naive_thought_attention(
        exact[0], exact[1], exact[2], exact[3 : 3 + passes], exact[3 + passes :], mask, scaling
    )
    return out, exact


def check_against_oracle(inputs, mask, scaling, dtype, seed=0):
    out = kernels.thought_attention(*inputs, mask, scaling)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out)
    grads = torch.autograd.grad(out, flat(inputs), grad_out)
    expected_out, exact = oracle(inputs, mask, scaling)
    expected_grads = torch.autograd.grad(expected_out, exact, grad_out.double())
    atol, rtol = TOLERANCES[dtype]
    assert out.dtype == dtype and out.shape == inputs[0].shape
    torch.testing.assert_close(out.double(), expected_out, atol=atol, rtol=rtol, msg=lambda m: f"out: {m}")
    assert len(grads) == len(expected_grads) == 3 + 2 * len(inputs[3])
    for name, grad, expected in zip(grad_names(len(inputs[3])), grads, expected_grads):
        assert grad.dtype == dtype and grad.shape == expected.shape
        torch.testing.assert_close(grad.double(), expected, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def detached(inputs):
    q, base_key, base_value, thought_keys, thought_values = inputs
    return [q.detach(), base_key.detach(), base_value.detach(), [t.detach() for t in thought_keys],
            [t.detach() for t in thought_values]]


CPU_CASES = [
    # (batch, heads, kv_heads, length, passes, head_dim, dtype, padding)
    pytest.param(1, 2, 2, 16, 1, 16, torch.float32, None, id="fp32-L16-p1-noGQA"),
    pytest.param(2, 4, 2, 37, 3, 16, torch.float32, "right", id="fp32-B2-L37-p3-GQA2-rightpad"),
    pytest.param(1, 4, 1, 23, 33, 16, torch.float32, "both", id="fp32-L23-p33-GQA4-leftrightpad"),
    pytest.param(1, 2, 1, 45, 2, 64, torch.float32, None, id="fp32-L45-d64"),
    pytest.param(1, 1, 1, 19, 2, 128, torch.float32, "right", id="fp32-L19-d128-rightpad"),
    pytest.param(2, 4, 2, 37, 4, 32, torch.float16, "right", id="fp16-B2-L37-p4-GQA2-rightpad"),
    pytest.param(1, 4, 1, 29, 16, 16, torch.float16, None, id="fp16-L29-p16-GQA4"),
    pytest.param(1, 2, 1, 33, 1, 64, torch.float16, "both", id="fp16-L33-p1-d64-pad"),
]


@in_process
@pytest.mark.parametrize(("batch", "heads", "kv_heads", "length", "passes", "head_dim", "dtype", "padding"), CPU_CASES)
def test_forward_and_gradients_match_the_oracle(batch, heads, kv_heads, length, passes, head_dim, dtype, padding):
    inputs = random_inputs(batch, heads, kv_heads, length, passes, head_dim, dtype, seed=length + passes)
    check_against_oracle(inputs, padding_mask(batch, length, padding), head_dim**-0.5, dtype)


@in_process
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic-dq-kernel", "fused-atomic-dq"])
@pytest.mark.parametrize("splits", ["split", "no-split"])
def test_backward_paths_match_the_oracle(monkeypatch, deterministic, splits):
    """Both dQ paths (separate kernel / atomics in the dK/dV kernel) and both dK/dV grids (head split or not)."""
    if splits == "no-split":
        monkeypatch.setattr(autotune, "DKV_TARGET_PROGRAMS", 0)
    assert autotune.dkv_splits(2, 2, 2, 21) == (1 if splits == "no-split" else 2)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        inputs = random_inputs(2, 4, 2, 21, 2, 16, torch.float32, seed=5)
        check_against_oracle(inputs, padding_mask(2, 21, "both"), 0.25, torch.float32)
    finally:
        torch.use_deterministic_algorithms(previous)


def test_dkv_splits_divide_the_group_and_stop_at_enough_programs():
    """Mistral (8 KV heads, G = 4): B = 1 needs the head split for ~2 programs per SM, B = 8 does not."""
    assert autotune.dkv_splits(batch=1, kv_heads=8, groups=4, length=2048) == 2
    assert autotune.dkv_splits(batch=1, kv_heads=8, groups=4, length=4096) == 1
    assert autotune.dkv_splits(batch=8, kv_heads=8, groups=4, length=2048) == 1
    assert autotune.dkv_splits(batch=1, kv_heads=1, groups=6, length=256) == 6
    assert autotune.dkv_splits(batch=1, kv_heads=4, groups=6, length=2048) == 3  # divisors of G only


@in_process
def test_forward_output_and_lse_match_the_oracle():
    inputs = detached(random_inputs(2, 4, 2, 21, 3, 16, torch.float32, seed=3))
    mask = padding_mask(2, 21, "both")
    out, lse = kernels.thought_attention_forward(*inputs, mask, 0.25)
    ref_out, ref_lse = naive_thought_attention(*inputs, mask, 0.25)
    assert lse.shape == (2, 4, 21) and lse.dtype == torch.float32
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-4)


@in_process
def test_strided_layouts_and_scattered_passes_are_used_in_place():
    """q/k/v and every pass as (B, L, H, d) buffers viewed as (B, H, L, d) (the model's layout), each pass its own
    allocation, and a non-contiguous grad_out: the passes are read and their gradients written through pointer
    tables, without a copy."""
    batch, heads, kv_heads, length, passes, head_dim = 2, 4, 2, 18, 3, 16
    generator = torch.Generator().manual_seed(7)

    def bl_hd(h):
        return torch.randn(batch, length, h, head_dim, generator=generator).transpose(1, 2).requires_grad_()

    inputs = [bl_hd(heads), bl_hd(kv_heads), bl_hd(kv_heads), [bl_hd(kv_heads) for _ in range(passes)],
              [bl_hd(kv_heads) for _ in range(passes)]]
    mask = padding_mask(batch, length, "right", device="cpu")
    out = kernels.thought_attention(*inputs, mask, 0.3)
    assert out.stride() == inputs[0].stride()  # written in the (B, L, H, d) layout of q
    grad_out = torch.randn(batch, heads, head_dim, length, generator=generator).transpose(2, 3)
    grads = torch.autograd.grad(out, flat(inputs), grad_out)
    for grad, tensor in zip(grads, flat(inputs)):
        assert grad.stride() == tensor.stride()  # each pass's gradient allocated like the pass itself
    expected_out, exact = oracle(inputs, mask, 0.3)
    expected_grads = torch.autograd.grad(expected_out, exact, grad_out.double())
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=1e-4)
    for name, grad, expected in zip(grad_names(passes), grads, expected_grads):
        torch.testing.assert_close(grad.double(), expected, atol=2e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@in_process
def test_passes_with_different_strides_are_made_contiguous():
    inputs = random_inputs(1, 4, 2, 12, 2, 16, torch.float32, seed=9)
    transposed = torch.randn(1, 12, 2, 16).transpose(1, 2).requires_grad_()  # same shape, other strides
    assert kernels.layout(transposed) != kernels.layout(inputs[3][0])
    inputs[3] = [inputs[3][0], transposed]
    check_against_oracle(inputs, None, 0.25, torch.float32)


@in_process
def test_batch_offsets_beyond_int32_use_int64(tmp_path):
    """base_key and a thought pass whose batch 2 starts past 2^31 elements (views of a sparse file mapped into memory,
    so
    only the touched pages exist): with int32 offsets, batch * stride would wrap and read other rows."""
    batch, heads, length, head_dim, stride_b = 3, 2, 8, 16, 2**30 + 64
    block = length * head_dim  # one (Hkv = 1, L, d) slice
    numel = (batch - 1) * stride_b + 2 * block
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as handle:
        handle.truncate(numel * 2)
    try:
        storage = torch.from_file(str(path), shared=True, size=numel, dtype=torch.float16)
    except RuntimeError as error:
        pytest.skip(f"cannot map a sparse {numel * 2 / 2**30:.1f} GiB file here: {error}")
    shape, strides = (batch, 1, length, head_dim), (stride_b, block, head_dim, 1)
    base_key_far = storage.as_strided(shape, strides)
    thought_key_far = storage.as_strided(shape, strides, storage_offset=block)
    inputs = random_inputs(batch, heads, 1, length, 2, head_dim, torch.float16, seed=4)
    q, base_key, base_value, thought_keys, thought_values = detached(inputs)
    base_key_far.copy_(base_key)
    thought_key_far.copy_(thought_keys[1])
    assert 2 * base_key_far.stride(0) >= 2**31 and kernels.layout(thought_key_far) != kernels.layout(thought_keys[0])
    out, lse = kernels.thought_attention_forward(
        q, base_key_far, base_value, [thought_key_far], [thought_values[1]], None, 0.25
    )
    ref_out, ref_lse = naive_thought_attention(
        q, base_key, base_value, [thought_keys[1]], [thought_values[1]], None, 0.25
    )
    torch.testing.assert_close(out.float(), ref_out.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)


def test_int32_spans_inside_one_batch_element_are_checked():
    huge = torch.empty_strided((1, 3, 2**16, 16), (0, 2**30, 16, 1), device="meta")
    with pytest.raises(ValueError, match="spans .* elements"):
        kernels._check_int32_spans([huge])
    kernels._check_int32_spans([torch.empty(1, 2, 8, 16)])


def test_autotune_keys_are_bucketed_and_cached():
    assert autotune.buckets(300, 5) == dict(l_bucket=512, p_bucket=8)
    assert autotune.buckets(512, 8) == dict(l_bucket=512, p_bucket=8)
    for name, kernel in kernels.KERNELS.items():
        assert "l_bucket" in kernel.keys and "seq_len" not in kernel.keys and "n_passes" not in kernel.keys, name
        assert kernel.cache_results or kernels.INTERPRET, name  # the interpreter never caches tunings


@in_process
def test_dispatch_through_attention_quietstar():
    inputs = detached(random_inputs(1, 4, 2, 13, 2, 16, torch.float32, seed=11))
    mask = padding_mask(1, 13, "right")
    triton_out = dispatch_thought_attention(*inputs, mask, 0.25, impl="triton")
    torch_out = dispatch_thought_attention(*inputs, mask, 0.25, impl="torch")
    assert triton_out.shape == (1, 13, 4, 16)  # (B, L, H, d) like the other implementations
    torch.testing.assert_close(triton_out, torch_out, atol=2e-5, rtol=1e-4)


@in_process
def test_the_0_1_import_path_keeps_its_positional_signature_and_checks():
    """Checkpoints saved by quietstar 0.1 call `quietstar.kernels.thought_attention.thought_attention(q, kb, vb, kt,
    vt, key_padding_mask, scaling)` (positional) from their remote code and expect (B, H, L, d) and checked
    arguments."""
    inputs = random_inputs(1, 4, 2, 11, 2, 16, torch.float32, seed=13)
    q, base_key, base_value, thought_keys, thought_values = inputs
    mask = padding_mask(1, 11, "right")
    out = thought_attention_0_1(q, base_key, base_value, thought_keys, thought_values, mask, 0.25)
    expected, exact = oracle(inputs, mask, 0.25)
    assert out.shape == (1, 4, 11, 16)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
    grads = torch.autograd.grad(out, flat(inputs), torch.ones_like(out))
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected, exact, torch.ones_like(expected))):
        torch.testing.assert_close(grad.double(), expected_grad, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        thought_attention_0_1(q[:, :3], base_key, base_value, thought_keys, thought_values)


@in_process
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: [x[..., :8].contiguous() for x in t[:3]] + [[x[..., :8].contiguous() for x in t[3]],
                                                              [x[..., :8].contiguous() for x in t[4]]],
         "head dim 8 is not supported by the Triton kernel"),
        (lambda t: [t[0].half(), *t[1:]], "needs one dtype among"),
        (lambda t: [t[0].double(), t[1].double(), t[2].double(), [x.double() for x in t[3]],
                    [x.double() for x in t[4]]], "needs one dtype among"),
        (lambda t: [t[0][:, :, :5], *t[1:]], "query's B, L, d"),
    ],
    ids=["head-dim", "mixed-dtype", "fp64", "length"],
)
def test_what_the_kernel_cannot_run_raises_clear_errors(change, match):
    inputs = detached(random_inputs(1, 4, 2, 6, 2, 16, torch.float32, seed=0))
    with pytest.raises(ValueError, match=match):
        kernels.thought_attention(*change(inputs))


@in_process
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: [*t[:3], [], []], "same number"),
        (lambda t: [*t[:3], t[3], t[4][:1]], "same number"),
        (lambda t: [t[0][:, :3], *t[1:]], "multiple of key/value heads"),
        (lambda t: [*t[:3], [t[3][0], t[3][1][:, :, :5]], t[4]], r"thought_keys\[1\] must be"),
        (lambda t: [*t[:3], torch.stack(t[3], 2), t[4]], "sequences"),
        (lambda t: [t[0].half(), *t[1:]], "one floating dtype"),
    ],
    ids=["no-pass", "pass-count", "gqa", "shape", "stacked", "dtype"],
)
def test_bad_arguments_are_named_by_the_dispatcher_before_the_kernel(change, match):
    inputs = detached(random_inputs(1, 4, 2, 6, 2, 16, torch.float32, seed=0))
    with pytest.raises(ValueError, match=match):
        dispatch_thought_attention(*change(inputs), None, impl="triton")


@in_process
def test_cpu_tensors_without_the_interpreter_raise(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    inputs = detached(random_inputs(1, 2, 1, 6, 1, 16, torch.float32, seed=0, device="cpu"))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.thought_attention(*inputs)
    mask = torch.ones(1, 6)
    with pytest.raises(ValueError, match="key_padding_mask must be a bool"):
        dispatch_thought_attention(*inputs, mask, impl="triton")


@in_process
def test_interpreter_enabled_after_triton_import_raises(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", True)
    monkeypatch.setattr(kernels.tl, "zeros", kernels.tl.zeros.fn)  # what a compiled-mode triton.language holds
    inputs = detached(random_inputs(1, 2, 1, 6, 1, 16, torch.float32, seed=0))
    with pytest.raises(RuntimeError, match="before the first import of triton"):
        kernels.thought_attention(*inputs)


@in_process
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_model_forward_and_backward_with_triton_match_torch(family):
    """A tiny training step of each family (GQA 4/2, right padding, thought passes p = 1..4): triton vs torch."""
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 8), generator=generator)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, -3:] = 0
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, 8, 1), generator=generator)
    results = {}
    for impl in ("torch", "triton"):
        model = tiny_model(
            seed=2, family=family, attention_impl=impl, n_thought_tokens=3, n_ahead_talk=2, n_thoughts=1, policy_loss_weight=1.0
        ).train()
        output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
        output.loss.backward()
        results[impl] = (output.loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    for name, grad in results["torch"][1].items():
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient"
        torch.testing.assert_close(
            results["triton"][1][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


@in_process
def test_model_under_autocast_runs_the_kernel_in_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast RoPE's fp32 tables leave q and k in fp32 while v is bf16; the thought passes cast all
    three to bf16 (as SDPA does), so the kernel gets one dtype, and the step is as accurate as with the oracle in
    place of the attention under the same autocast (its matrix products run in bf16 there), both measured against
    the fp32 step (the `torch` implementation merges in fp32 and is more accurate than either, so it is no
    yardstick here)."""

    def oracle(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
        return naive_thought_attention(query, base_key, base_value, thought_keys, thought_values, key_padding_mask,
                                       scaling)[0].transpose(1, 2)

    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 8), generator=generator)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[0, -2:] = 0
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, 8, 1), generator=generator)
    results = {}
    for impl, autocast in (("torch", False), ("oracle", True), ("triton", True)):
        model = tiny_model(seed=2, attention_impl="torch" if impl == "oracle" else impl, n_thought_tokens=3,
                           n_ahead_talk=2, n_thoughts=1, policy_loss_weight=1.0).train()
        with monkeypatch.context() as patch, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if impl == "oracle":
                patch.setitem(THOUGHT_ATTENTION_FUNCTIONS, "torch", oracle)
            output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
            output.loss.backward()
        results[impl, autocast] = (output.loss.detach().float(), {n: p.grad for n, p in model.named_parameters()})
    reference_loss, reference_grads = results["torch", False]
    torch.testing.assert_close(results["triton", True][0], reference_loss, atol=2e-2, rtol=2e-2)
    for name, reference in reference_grads.items():
        assert reference is not None and reference.abs().sum() > 0, f"{name} gets no gradient"
        oracle_error = relative_rms(results["oracle", True][1][name], reference)
        triton_error = relative_rms(results["triton", True][1][name], reference)
        assert triton_error <= 1.5 * oracle_error + 5e-3, (name, triton_error, oracle_error)


@pytest.mark.skipif(RUNNABLE_HERE, reason="the kernel tests run in this process")
def test_cpu_suite_in_interpreter_subprocess():
    """Run this file's CPU tests in a child process that sets TRITON_INTERPRET=1 before importing triton."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not cuda", __file__],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= N_CPU_TESTS, report  # every CPU test of this file ran


# ------------------------------------------------------------------------------------------------------ GPU only


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).pow(2).mean().sqrt() / expected.double().pow(2).mean().sqrt()).item()


def assert_as_accurate_as_torch(inputs, mask, scaling, deterministic: bool, seed: int = 0) -> None:
    """The kernel's output and every gradient against an fp32 reference, next to the `torch` implementation run in
    the inputs' dtype (bf16 or fp16), with the dQ path chosen by `deterministic`.

    Criterion as in FlashAttention's tests: the kernel's max error is at most 3x that of the `torch` implementation
    in the same dtype (plus a 1e-3 floor), and its relative RMS error is below 1e-2.
    """
    passes = len(inputs[3])
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(seed)).to(inputs[0])
    names = ["out", *grad_names(passes)]

    exact = [t.detach().float().requires_grad_() for t in flat(inputs)]
    ref_out, _ = naive_thought_attention(
        exact[0], exact[1], exact[2], exact[3 : 3 + passes], exact[3 + passes :], mask, scaling
    )
    ref = [ref_out, *torch.autograd.grad(ref_out, exact, grad_out.float())]
    del exact, ref_out
    torch_out = dispatch_thought_attention(*inputs, mask, scaling, impl="torch").transpose(1, 2)
    low = [torch_out, *torch.autograd.grad(torch_out, flat(inputs), grad_out)]
    del torch_out
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        tri_out = kernels.thought_attention(*inputs, mask, scaling)
        tri = [tri_out, *torch.autograd.grad(tri_out, flat(inputs), grad_out)]
    finally:
        torch.use_deterministic_algorithms(previous)

    for name, t, lo, r in zip(names, tri, low, ref):
        assert t.dtype == inputs[0].dtype and t.shape == r.shape, name
        tri_err = (t.float() - r).abs().max().item()
        low_err = (lo.float() - r).abs().max().item()
        assert tri_err <= 3 * low_err + 1e-3, f"{name}: triton error {tri_err:.3g}, torch low-precision error {low_err:.3g}"
        assert relative_rms(t, r) < 1e-2, f"{name}: relative RMS error {relative_rms(t, r):.3g}"


@in_process
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "deterministic"])
def test_low_precision_criterion_in_interpreter(deterministic):
    """The criterion of the CUDA sweep below, at a tiny bf16 shape (GQA, odd L, padding, d = 64) that the
    interpreter runs on CPU."""
    inputs = random_inputs(2, 4, 2, 19, 3, 64, torch.bfloat16, seed=19)
    assert_as_accurate_as_torch(inputs, padding_mask(2, 19, "both"), 64**-0.5, deterministic)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("batch", "length", "passes", "padding"),
    [(2, 256, 1, "right"), (1, 1024, 8, None), (1, 2048, 16, "both"), (1, 4096, 4, None), (1, 4096, 16, None)],
)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "deterministic"])
def test_cuda_bf16_mistral_shapes(batch, length, passes, padding, deterministic):
    """bf16 at Mistral 7B's head layout (32 query heads, 8 KV heads, d = 128) against an fp32 reference."""
    inputs = random_inputs(batch, 32, 8, length, passes, 128, torch.bfloat16, seed=length + passes)
    assert_as_accurate_as_torch(inputs, padding_mask(batch, length, padding), 128**-0.5, deterministic)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "length", "passes", "padding"),
    [
        pytest.param(2, 8, 2, 333, 16, "both", id="B2-GQA4-L333-p16-leftrightpad"),
        pytest.param(1, 32, 8, 1027, 5, "right", id="B1-GQA4-L1027-p5-rightpad"),
        pytest.param(3, 6, 6, 77, 1, "both", id="B3-noGQA-L77-p1-leftrightpad"),
    ],
)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "deterministic"])
def test_cuda_kernel_sweep_against_torch(batch, heads, kv_heads, length, passes, padding, head_dim, dtype,
                                         deterministic):
    """Forward and backward over both low-precision dtypes, d = 64 and 128, GQA and not, p up to 16, odd L and
    padding on both sides, through both dQ paths (fp32 atomics in the dK/dV kernel, or the separate dQ kernel)."""
    inputs = random_inputs(batch, heads, kv_heads, length, passes, head_dim, dtype, seed=length + head_dim)
    assert_as_accurate_as_torch(inputs, padding_mask(batch, length, padding), head_dim**-0.5, deterministic,
                                seed=passes)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_dtypes_and_head_dims_match_the_oracle(dtype, head_dim):
    """fp32 runs with tf32 products on CUDA, hence the relative-RMS criterion for every dtype."""
    inputs = random_inputs(2, 8, 2, 333, 5, head_dim, dtype, seed=head_dim)
    mask = padding_mask(2, 333, "both")
    out = kernels.thought_attention(*inputs, mask, head_dim**-0.5)
    grads = torch.autograd.grad(out, flat(inputs), torch.ones_like(out))
    expected_out, exact = oracle(inputs, mask, head_dim**-0.5)
    expected_grads = torch.autograd.grad(expected_out, exact, torch.ones_like(expected_out))
    for name, actual, expected in zip(["out", *grad_names(5)], (out, *grads), (expected_out, *expected_grads)):
        assert relative_rms(actual, expected) < 1e-2, name


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "length", "passes", "head_dim", "dtype", "padding"),
    [
        pytest.param(1, 32, 8, 1024, 4, 128, torch.bfloat16, None, id="bf16-mistral-L1024-p4"),
        pytest.param(2, 8, 2, 333, 16, 64, torch.float16, "both", id="fp16-d64-GQA4-L333-p16-pad"),
    ],
)
def test_cuda_deterministic_backward_is_bitwise_reproducible(batch, heads, kv_heads, length, passes, head_dim, dtype,
                                                             padding):
    inputs = random_inputs(batch, heads, kv_heads, length, passes, head_dim, dtype, seed=1)
    mask = padding_mask(batch, length, padding)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        runs = []
        for _ in range(2):
            out = kernels.thought_attention(*inputs, mask, head_dim**-0.5)
            runs.append([out, *torch.autograd.grad(out, flat(inputs), torch.ones_like(out))])
    finally:
        torch.use_deterministic_algorithms(previous)
    for name, first, second in zip(["out", *grad_names(passes)], *runs):
        assert torch.equal(first, second), name
