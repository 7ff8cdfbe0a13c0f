"""The fused Triton thought attention (`quietstar.kernels.thought_attention`) against the dense oracle.

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
from tiny import TINY_VOCAB, tiny_model  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from quietstar.attention_quietstar import dense_thought_attention  # noqa: E402
from quietstar.attention_quietstar import thought_attention as dispatch_thought_attention  # noqa: E402
from quietstar.kernels import thought_attention as kernels  # noqa: E402
from quietstar.kernels.thought_attention_reference import thought_attention_reference  # noqa: E402

RUNNABLE_HERE = CUDA or (kernels.INTERPRET and isinstance(tl.zeros, InterpretedFunction))
in_process = pytest.mark.skipif(
    not RUNNABLE_HERE,
    reason="triton was imported without TRITON_INTERPRET=1 and there is no GPU: "
    "test_cpu_suite_in_interpreter_subprocess runs these tests",
)

DEVICE = "cuda" if CUDA else "cpu"
# (atol, rtol) against the fp64 oracle evaluated on the same (rounded) inputs
TOLERANCES = {torch.float32: (2e-5, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 5e-2)}
GRAD_NAMES = ("dq", "dkb", "dvb", "dkt", "dvt")


def random_inputs(batch, heads, kv_heads, length, passes, head_dim, dtype, seed, device=DEVICE):
    """q (B, H, L, d), kb/vb (B, Hkv, L, d), kt/vt (B, Hkv, p, L, d), leaf tensors requiring grad."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()

    return [
        rand(batch, heads, length, head_dim),
        rand(batch, kv_heads, length, head_dim),
        rand(batch, kv_heads, length, head_dim),
        rand(batch, kv_heads, passes, length, head_dim),
        rand(batch, kv_heads, passes, length, head_dim),
    ]


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
    """Dense oracle output (B, H, L, d) and gradients, in fp64 on the same input values."""
    exact = [t.detach().double().requires_grad_() for t in inputs]
    out = dense_thought_attention(*exact, mask, scaling).transpose(1, 2)
    return out, exact


def check_against_oracle(inputs, mask, scaling, dtype, seed=0):
    out = kernels.thought_attention(*inputs, mask, scaling)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    expected_out, exact = oracle(inputs, mask, scaling)
    expected_grads = torch.autograd.grad(expected_out, exact, grad_out.double())
    atol, rtol = TOLERANCES[dtype]
    assert out.dtype == dtype and out.shape == inputs[0].shape
    torch.testing.assert_close(out.double(), expected_out, atol=atol, rtol=rtol, msg=lambda m: f"out: {m}")
    for name, grad, expected in zip(GRAD_NAMES, grads, expected_grads):
        assert grad.dtype == dtype and grad.shape == expected.shape
        torch.testing.assert_close(grad.double(), expected, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


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
def test_forward_and_gradients_match_dense_oracle(batch, heads, kv_heads, length, passes, head_dim, dtype, padding):
    inputs = random_inputs(batch, heads, kv_heads, length, passes, head_dim, dtype, seed=length + passes)
    check_against_oracle(inputs, padding_mask(batch, length, padding), head_dim**-0.5, dtype)


@in_process
def test_lse_matches_reference_and_reference_matches_dense():
    inputs = random_inputs(2, 4, 2, 21, 3, 16, torch.float32, seed=3)
    mask = padding_mask(2, 21, "both")
    with torch.no_grad():
        out, lse = kernels.thought_attention_forward(*inputs, mask, 0.25)
        ref_out, ref_lse = thought_attention_reference(*inputs, mask, 0.25)
        dense_out = dense_thought_attention(*inputs, mask, 0.25).transpose(1, 2)
    assert lse.shape == (2, 4, 21) and lse.dtype == torch.float32
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ref_out, dense_out, atol=2e-5, rtol=1e-4)


@in_process
def test_strided_layouts_are_used_in_place():
    """q/k/v as (B, L, H, d) buffers viewed as (B, H, L, d) (the model's layout) and a non-contiguous grad_out."""
    batch, heads, kv_heads, length, passes, head_dim = 2, 4, 2, 18, 2, 16
    generator = torch.Generator().manual_seed(7)
    q = torch.randn(batch, length, heads, head_dim, generator=generator).transpose(1, 2).requires_grad_()
    kb, vb = (
        torch.randn(batch, length, kv_heads, head_dim, generator=generator).transpose(1, 2).requires_grad_()
        for _ in range(2)
    )
    kt, vt = (
        torch.randn(batch, kv_heads, passes, length, head_dim, generator=generator).requires_grad_() for _ in range(2)
    )
    inputs = [q, kb, vb, kt, vt]
    mask = padding_mask(batch, length, "right", device="cpu")
    out = kernels.thought_attention(*inputs, mask, 0.3)
    assert out.stride() == q.stride()  # written in the (B, L, H, d) layout of q
    grad_out = torch.randn(batch, heads, head_dim, length, generator=generator).transpose(2, 3)
    grads = torch.autograd.grad(out, inputs, grad_out)
    expected_out, exact = oracle(inputs, mask, 0.3)
    expected_grads = torch.autograd.grad(expected_out, exact, grad_out.double())
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=1e-4)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad.double(), expected, atol=2e-5, rtol=1e-4)


@in_process
def test_dispatch_through_attention_quietstar():
    inputs = random_inputs(1, 4, 2, 13, 2, 16, torch.float32, seed=11)
    mask = padding_mask(1, 13, "right")
    with torch.no_grad():
        triton_out = dispatch_thought_attention(*inputs, mask, 0.25, impl="triton")
        torch_out = dispatch_thought_attention(*inputs, mask, 0.25, impl="torch")
    assert triton_out.shape == (1, 13, 4, 16)  # (B, L, H, d) like the other implementations
    torch.testing.assert_close(triton_out, torch_out, atol=2e-5, rtol=1e-4)


@in_process
@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda t: [t[0][..., :8].contiguous(), *(x[..., :8].contiguous() for x in t[1:])], ValueError, "head dim 8"),
        (lambda t: [t[0].half(), *t[1:]], ValueError, "share one dtype"),
        (lambda t: [*t[:3], t[3][:, :, :0], t[4][:, :, :0]], ValueError, "at least one thought pass"),
        (lambda t: [t[0][:, :3], *t[1:]], ValueError, "multiple of key/value heads"),
        (lambda t: [t[0], t[1], t[2], t[3][:, :, :, :5], t[4]], ValueError, r"kt and vt must be"),
    ],
    ids=["head-dim", "dtype", "no-pass", "gqa", "shape"],
)
def test_unsupported_inputs_raise_clear_errors(change, error, match):
    inputs = [t.detach() for t in random_inputs(1, 4, 2, 6, 2, 16, torch.float32, seed=0)]
    with pytest.raises(error, match=match):
        kernels.thought_attention(*change(inputs))


@in_process
def test_cpu_tensors_without_the_interpreter_raise(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    inputs = [t.detach().cpu() for t in random_inputs(1, 2, 1, 6, 1, 16, torch.float32, seed=0)]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.thought_attention(*inputs)
    mask = torch.ones(1, 6)
    with pytest.raises(ValueError, match="key_padding_mask must be a bool"):
        kernels.thought_attention(*inputs, mask)


@in_process
def test_interpreter_enabled_after_triton_import_raises(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", True)
    monkeypatch.setattr(kernels.tl, "zeros", kernels.tl.zeros.fn)  # what a compiled-mode triton.language holds
    inputs = [t.detach() for t in random_inputs(1, 2, 1, 6, 1, 16, torch.float32, seed=0)]
    with pytest.raises(RuntimeError, match="before the first import of triton"):
        kernels.thought_attention(*inputs)


@in_process
def test_model_forward_and_backward_with_triton_match_torch():
    """A tiny QuietStarForCausalLM training step (GQA 4/2, right padding, thought passes p = 1..4): triton vs torch."""
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 8), generator=generator)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, -3:] = 0
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, 8, 1), generator=generator)
    results = {}
    for impl in ("torch", "triton"):
        model = tiny_model(
            seed=2, attention_impl=impl, n_thought_tokens=3, n_ahead_talk=2, n_thoughts=1, policy_loss_weight=1.0
        ).train()
        output = model(input_ids, attention_mask=attention_mask, thought_ids=thought_ids)
        output.loss.backward()
        results[impl] = (output.loss.detach(), output.logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-5, rtol=1e-5)
    for name, grad in results["torch"][2].items():
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient"
        torch.testing.assert_close(
            results["triton"][2][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


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
    assert passed and int(passed.group(1)) >= 19, report  # every CPU test of this file ran


# ------------------------------------------------------------------------------------------------------ GPU only


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).pow(2).mean().sqrt() / expected.double().pow(2).mean().sqrt()).item()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("batch", "length", "passes", "padding"),
    [(2, 256, 1, "right"), (1, 1024, 8, None), (1, 2048, 16, "both"), (1, 4096, 4, None), (1, 4096, 16, None)],
)
def test_cuda_bf16_mistral_shapes(batch, length, passes, padding):
    """bf16 at Mistral 7B's head layout (32 query heads, 8 KV heads, d = 128) against an fp32 reference.

    Criterion as in FlashAttention's tests: the kernel's error is at most 3x that of the `torch` implementation
    run in bf16 (plus a small floor), and its relative RMS error is below 1e-2.
    """
    inputs = random_inputs(batch, 32, 8, length, passes, 128, torch.bfloat16, seed=length + passes)
    mask = padding_mask(batch, length, padding)
    scaling = 128**-0.5
    grad_out = torch.randn(batch, 32, length, 128, device=DEVICE, dtype=torch.bfloat16)

    exact = [t.detach().float().requires_grad_() for t in inputs]
    ref_out, _ = thought_attention_reference(*exact, mask, scaling)
    ref = [ref_out, *torch.autograd.grad(ref_out, exact, grad_out.float())]
    del exact, ref_out
    torch_out = dispatch_thought_attention(*inputs, mask, scaling, impl="torch").transpose(1, 2)
    low = [torch_out, *torch.autograd.grad(torch_out, inputs, grad_out)]
    del torch_out
    tri_out = kernels.thought_attention(*inputs, mask, scaling)
    tri = [tri_out, *torch.autograd.grad(tri_out, inputs, grad_out)]

    for name, t, lo, r in zip(("out", *GRAD_NAMES), tri, low, ref):
        tri_err = (t.float() - r).abs().max().item()
        low_err = (lo.float() - r).abs().max().item()
        assert tri_err <= 3 * low_err + 1e-3, f"{name}: triton error {tri_err:.3g}, torch bf16 error {low_err:.3g}"
        assert relative_rms(t, r) < 1e-2, name


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_dtypes_and_head_dims_match_dense(dtype, head_dim):
    inputs = random_inputs(2, 8, 2, 333, 5, head_dim, dtype, seed=head_dim)
    mask = padding_mask(2, 333, "both")
    out = kernels.thought_attention(*inputs, mask, head_dim**-0.5)
    grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
    expected_out, exact = oracle(inputs, mask, head_dim**-0.5)
    expected_grads = torch.autograd.grad(expected_out, exact, torch.ones_like(expected_out))
    for name, actual, expected in zip(("out", *GRAD_NAMES), (out, *grads), (expected_out, *expected_grads)):
        assert relative_rms(actual, expected) < 1e-2, name
