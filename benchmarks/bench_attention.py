"""Microbenchmark of the thought-pass attention (DESIGN.md section 3) against its peers and the roofline.

For every L and number of thought passes p it times, with Mistral 7B's head layout (32 query heads, 8 KV heads,
head dim 128, bf16) on CUDA:

- `triton`: the fused kernel (`quietstar.kernels.thought_attention`)
- `torch`: causal L x L scores concatenated with the L x p thought scores, one softmax (autograd backward)
- `dense`: SDPA over the concatenated keys with an explicit L x L(p+1) mask, the reference implementation's approach
- `flex`: compiled FlexAttention with a mask_mod over the concatenated keys (block mask built outside the timing)
- `sdpa_causal`, `flash_attn`: plain causal attention without thoughts, the speed-of-light peers (p-independent)

`dense` and `flex` need the keys concatenated; that copy is part of their timed call, because every
implementation takes the same separate base and thought tensors.

Reported per (provider, L, p): forward and forward+backward time (median), useful TFLOP/s, achieved bandwidth
over the minimal HBM traffic, peak memory above the inputs (gradients included), and the ratio to the roofline of
DESIGN.md section 3:

    fwd roofline = t(best causal forward at L) + bytes_thought / BW_copy
    bwd roofline = t(best causal backward at L) + 2 * bytes_thought / BW_copy
    bytes_thought = B * L * Hkv * 4 * p * d (bf16: reading kt and vt), BW_copy = measured device-to-device copy

Results go to benchmarks/results/attention_<device>.{json,md} (and .png when matplotlib is importable), tagged with
the device name and the torch/triton versions. Without CUDA (or with --cpu-smoke) it runs tiny fp32 shapes on CPU,
skipping what needs CUDA with a message (`triton` runs on CPU only under TRITON_INTERPRET=1).

    python benchmarks/bench_attention.py                    # full sweep on a GPU
    python benchmarks/bench_attention.py --cpu-smoke        # seconds on CPU
"""

import argparse
import datetime
import importlib.util
import json
import math
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from quietstar.attention_quietstar import dense_thought_attention, torch_thought_attention
from quietstar.kernels import thought_attention as kernels

PROVIDERS = ("triton", "torch", "dense", "flex", "sdpa_causal", "flash_attn")
CAUSAL_PEERS = ("sdpa_causal", "flash_attn")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny fp32 shapes on CPU (automatic without CUDA)")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths L (default 256..4096)")
    parser.add_argument("--passes", type=int, nargs="+", help="thought passes p (default 1 4 8 16)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, help="query heads (default 32; 4 in smoke mode)")
    parser.add_argument("--kv-heads", type=int, help="key/value heads (default 8; 2 in smoke mode)")
    parser.add_argument("--head-dim", type=int, help="head dim (default 128; 16 in smoke mode)")
    parser.add_argument("--dtype", choices=DTYPES, help="default bf16 (fp32 in smoke mode)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.cpu_smoke = args.cpu_smoke or not torch.cuda.is_available()
    smoke = args.cpu_smoke
    defaults = dict(
        lengths=[32, 64] if smoke else [256, 512, 1024, 2048, 4096],
        passes=[1, 4] if smoke else [1, 4, 8, 16],
        heads=4 if smoke else 32,
        kv_heads=2 if smoke else 8,
        head_dim=16 if smoke else 128,
        dtype="fp32" if smoke else "bf16",
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# ------------------------------------------------------------------------------------------------ cost model


def useful_flops(batch, heads, length, passes, head_dim, causal_only=False) -> float:
    """Forward FLOPs of the useful work: QK^T and PV over the causal pairs (+ the L x p thought pairs)."""
    pairs = length * (length + 1) / 2 + (0 if causal_only else length * passes)
    return 4.0 * batch * heads * head_dim * pairs


def minimal_bytes(batch, heads, kv_heads, length, passes, head_dim, element, causal_only=False) -> tuple[float, float]:
    """Least HBM traffic (forward, backward) in bytes: every input read once, every output written once."""
    q = batch * heads * length * head_dim * element
    kv = 2 * batch * kv_heads * length * head_dim * element
    thought = 0 if causal_only else 2 * batch * kv_heads * passes * length * head_dim * element
    lse = 4 * batch * heads * length
    forward = q + kv + thought + q + lse  # read q, k, v, kt, vt; write o and the LSE
    backward = 3 * q + lse + kv + thought + q + kv + thought  # read q, o, dO, LSE, k, v, kt, vt; write the grads
    return forward, backward


# ------------------------------------------------------------------------------------------------- timing


def bench_ms(fn, cuda: bool, inputs=()) -> float:
    """Median wall time of fn() in ms (triton's do_bench on CUDA, a perf_counter loop on CPU)."""
    if cuda:
        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=list(inputs), return_mode="median")
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, cuda: bool) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of a 1 GiB (CUDA) or 64 MiB (CPU) buffer."""
    numel = (1 << 29) if cuda else (1 << 24)
    src = torch.empty(numel, dtype=torch.float16 if cuda else torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), cuda)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


# ------------------------------------------------------------------------------------------------ providers


def flex_provider(batch, heads, kv_heads, length, passes, device):
    """Compiled FlexAttention over [base, pass 1, ..., pass p] keys with the thought mask as a mask_mod."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        causal = (kv_idx < length) & (kv_idx <= q_idx)
        same_position = (kv_idx >= length) & ((kv_idx % length) == q_idx)
        return causal | same_position

    block_mask = create_block_mask(mask_mod, None, None, length, length * (passes + 1), device=device)
    # every (L, p) is a new static shape: allow one compiled graph per point of the sweep instead of dynamo's
    # default 8, after which it would silently fall back to the unfused eager path
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, kb, vb, kt, vt, scaling):
        keys = torch.cat([kb, kt.flatten(2, 3)], dim=2)
        values = torch.cat([vb, vt.flatten(2, 3)], dim=2)
        return compiled(q, keys, values, block_mask=block_mask, scale=scaling, enable_gqa=heads != kv_heads)

    return run


def sdpa_causal_provider(heads, kv_heads):
    """Plain causal SDPA on the base keys only (flash backend where available); K/V expanded outside the timing."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, kb, vb, kt, vt, scaling):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                          SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, kb, vb, is_causal=True, scale=scaling)

    def prepare(inputs):
        q, kb, vb, kt, vt = inputs
        groups = heads // kv_heads
        kb = kb.detach().repeat_interleave(groups, 1).requires_grad_()
        vb = vb.detach().repeat_interleave(groups, 1).requires_grad_()
        return [q, kb, vb, kt, vt]

    return run, prepare


def flash_attn_provider():
    """flash-attn's causal kernel on the base keys only, in its (B, L, H, d) layout (GQA native)."""
    from flash_attn import flash_attn_func

    def run(q, kb, vb, kt, vt, scaling):
        return flash_attn_func(q, kb, vb, softmax_scale=scaling, causal=True)

    def prepare(inputs):
        q, kb, vb, kt, vt = inputs
        return [t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, kb, vb)] + [kt, vt]

    return run, prepare


def unavailable_reason(provider: str, cuda: bool) -> str | None:
    """Why a provider cannot run here, or None."""
    if provider == "triton" and not cuda and not kernels.INTERPRET:
        return "triton needs CUDA (or TRITON_INTERPRET=1 set before triton is imported, for a slow CPU run)"
    if provider == "flex" and not cuda:
        return "flex needs CUDA: compiled FlexAttention has no backward on CPU"
    if provider == "flash_attn" and not cuda:
        return "flash_attn needs CUDA"
    if provider == "flash_attn" and importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not installed"
    return None


def make_provider(provider, args, length, passes, device):
    """(fn(q, kb, vb, kt, vt, scaling) -> output, prepare(inputs) -> inputs) for one (L, p)."""
    same = (lambda inputs: inputs)
    if provider == "triton":
        return (lambda q, kb, vb, kt, vt, s: kernels.thought_attention(q, kb, vb, kt, vt, None, s)), same
    if provider == "torch":
        return (lambda q, kb, vb, kt, vt, s: torch_thought_attention(q, kb, vb, kt, vt, None, s)), same
    if provider == "dense":
        return (lambda q, kb, vb, kt, vt, s: dense_thought_attention(q, kb, vb, kt, vt, None, s)), same
    if provider == "flex":
        return flex_provider(args.batch, args.heads, args.kv_heads, length, passes, device), same
    if provider == "sdpa_causal":
        return sdpa_causal_provider(args.heads, args.kv_heads)
    return flash_attn_provider()


def measure(provider, args, length, passes, device, cuda) -> dict:
    """Time one provider at one (L, p); errors (e.g. out of memory) are recorded, not raised."""
    dtype = DTYPES[args.dtype]
    generator = torch.Generator(device=device).manual_seed(0)
    shape_q = (args.batch, args.heads, length, args.head_dim)
    shape_kv = (args.batch, args.kv_heads, length, args.head_dim)
    shape_t = (args.batch, args.kv_heads, passes, length, args.head_dim)
    row = dict(provider=provider, L=length, p=0 if provider in CAUSAL_PEERS else passes)
    try:
        inputs = [
            torch.randn(shape, generator=generator, device=device, dtype=dtype).requires_grad_()
            for shape in (shape_q, shape_kv, shape_kv, shape_t, shape_t)
        ]
        fn, prepare = make_provider(provider, args, length, passes, device)
        inputs = prepare(inputs)
        scaling = args.head_dim**-0.5
        with torch.no_grad():
            out = fn(*inputs, scaling)
        grad_out = torch.randn_like(out)

        def forward():
            with torch.no_grad():
                fn(*inputs, scaling)

        def forward_backward():
            fn(*inputs, scaling).backward(grad_out)

        row["fwd_ms"] = bench_ms(forward, cuda)
        row["fwdbwd_ms"] = bench_ms(forward_backward, cuda, inputs)
        row["bwd_ms"] = row["fwdbwd_ms"] - row["fwd_ms"]
        if cuda:
            for tensor in inputs:
                tensor.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            forward_backward()
            torch.cuda.synchronize()
            row["peak_mem_MiB"] = (torch.cuda.max_memory_allocated() - baseline) / 2**20
        else:
            row["peak_mem_MiB"] = None
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as error:  # a failing peer must not stop the sweep
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        if cuda:
            torch.cuda.empty_cache()
    if "error" in row:
        return row

    causal_only = provider in CAUSAL_PEERS
    element = torch.empty((), dtype=dtype).element_size()
    flops = useful_flops(args.batch, args.heads, length, passes, args.head_dim, causal_only)
    fwd_bytes, bwd_bytes = minimal_bytes(
        args.batch, args.heads, args.kv_heads, length, passes, args.head_dim, element, causal_only
    )
    row["fwd_tflops"] = flops / (row["fwd_ms"] * 1e-3) / 1e12
    row["fwdbwd_tflops"] = 3.5 * flops / (row["fwdbwd_ms"] * 1e-3) / 1e12  # backward = 2.5x forward FLOPs
    row["fwd_GBps"] = fwd_bytes / (row["fwd_ms"] * 1e-3) / 1e9
    row["fwdbwd_GBps"] = (fwd_bytes + bwd_bytes) / (row["fwdbwd_ms"] * 1e-3) / 1e9
    return row


# --------------------------------------------------------------------------------------------- roofline, report


def add_roofline(results, args, bandwidth) -> list[dict]:
    """Roofline per (L, p) from the best causal peer, and each thought provider's ratio to it."""
    element = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    rooflines = []
    for length in args.lengths:
        peers = [r for r in results if r["L"] == length and r["provider"] in CAUSAL_PEERS and "error" not in r]
        if not peers:
            continue
        causal_fwd = min(r["fwd_ms"] for r in peers)
        causal_bwd = min(r["bwd_ms"] for r in peers)
        for passes in args.passes:
            thought_bytes = args.batch * length * args.kv_heads * 2 * passes * args.head_dim * element
            roof = dict(
                L=length,
                p=passes,
                causal_fwd_ms=causal_fwd,
                causal_bwd_ms=causal_bwd,
                thought_bytes=thought_bytes,
                fwd_ms=causal_fwd + thought_bytes / bandwidth * 1e3,
                bwd_ms=causal_bwd + 2 * thought_bytes / bandwidth * 1e3,
            )
            rooflines.append(roof)
            for row in results:
                if row["L"] == length and row["p"] == passes and "error" not in row:
                    row["fwd_vs_roofline"] = row["fwd_ms"] / roof["fwd_ms"]
                    row["bwd_vs_roofline"] = row["bwd_ms"] / roof["bwd_ms"]
    return rooflines


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown_report(report) -> str:
    meta = report["meta"]
    lines = [
        f"# Thought-pass attention benchmark ({meta['device']})",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, flash-attn {meta['flash_attn'] or 'not installed'}; "
        f"{meta['timestamp']}; mode {meta['mode']}",
        f"B={meta['batch']}, H={meta['heads']}, Hkv={meta['kv_heads']}, d={meta['head_dim']}, {meta['dtype']}; "
        f"copy bandwidth {meta['copy_bandwidth_GBps']:.0f} GB/s",
        "",
        "Times are medians in ms; TFLOP/s count useful work only (fwd+bwd = 3.5x forward FLOPs); GB/s is the",
        "minimal HBM traffic over the time; roofline ratios follow DESIGN.md section 3 (targets: fwd <= 1.25, "
        "bwd <= 1.5). Causal peers have p = 0 (no thoughts).",
        "",
    ]
    for provider, reason in report["skipped"].items():
        lines.append(f"- skipped `{provider}`: {reason}")
    lines += [
        "",
        "| L | p | provider | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd GB/s | peak MiB "
        "| fwd / roof | bwd / roof |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        if "error" in row:
            lines.append(f"| {row['L']} | {row['p']} | {row['provider']} | {row['error']} |  |  |  |  |  |  |  |")
            continue
        cells = [row["L"], row["p"], row["provider"], row["fwd_ms"], row["fwdbwd_ms"], row["fwd_tflops"],
                 row["fwdbwd_tflops"], row["fwd_GBps"], row["peak_mem_MiB"], row.get("fwd_vs_roofline"),
                 row.get("bwd_vs_roofline")]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if report["roofline"]:
        lines += ["", "| L | p | causal fwd ms | causal bwd ms | thought MB | roofline fwd ms | roofline bwd ms |",
                  "|---|---|---|---|---|---|---|"]
        for roof in report["roofline"]:
            cells = [roof["L"], roof["p"], roof["causal_fwd_ms"], roof["causal_bwd_ms"], roof["thought_bytes"] / 1e6,
                     roof["fwd_ms"], roof["bwd_ms"]]
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report, path: Path) -> bool:
    """fwd+bwd time against L, one panel per p; False when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = sorted({r["p"] for r in report["results"] if r["p"]})
    fig, axes = plt.subplots(1, len(passes), figsize=(4.5 * len(passes), 4), squeeze=False)
    for ax, p in zip(axes[0], passes):
        for provider in PROVIDERS:
            rows = [r for r in report["results"] if r["provider"] == provider and r["p"] in (p, 0) and "error" not in r]
            if rows:
                ax.plot([r["L"] for r in rows], [r["fwdbwd_ms"] for r in rows], marker="o", label=provider)
        roofs = [r for r in report["roofline"] if r["p"] == p]
        if roofs:
            ax.plot([r["L"] for r in roofs], [r["fwd_ms"] + r["bwd_ms"] for r in roofs], "k--", label="roofline")
        ax.set(title=f"p = {p}", xlabel="L", ylabel="fwd+bwd ms", xscale="log", yscale="log")
        ax.legend(fontsize=7)
    fig.suptitle(f"thought attention, {report['meta']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv=None) -> dict:
    args = parse_args(argv)
    cuda = not args.cpu_smoke
    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    flash_attn_version = None
    if importlib.util.find_spec("flash_attn") is not None:
        import flash_attn

        flash_attn_version = flash_attn.__version__

    skipped = {p: reason for p in args.providers if (reason := unavailable_reason(p, cuda))}
    for provider, reason in skipped.items():
        print(f"skipping {provider}: {reason}")
    active = [p for p in args.providers if p not in skipped]

    bandwidth = copy_bandwidth(device, cuda)
    results = []
    for length in args.lengths:
        for provider in active:
            for passes in [args.passes[0]] if provider in CAUSAL_PEERS else args.passes:
                row = measure(provider, args, length, passes, device, cuda)
                results.append(row)
                print(json.dumps(row))
    rooflines = add_roofline(results, args, bandwidth)

    report = dict(
        meta=dict(
            device=device_name,
            torch=torch.__version__,
            triton=triton.__version__,
            flash_attn=flash_attn_version,
            timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            mode="cpu-smoke" if args.cpu_smoke else "cuda",
            batch=args.batch,
            heads=args.heads,
            kv_heads=args.kv_heads,
            head_dim=args.head_dim,
            dtype=args.dtype,
            lengths=args.lengths,
            passes=args.passes,
            copy_bandwidth_GBps=bandwidth / 1e9,
        ),
        skipped=skipped,
        results=results,
        roofline=rooflines,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"attention_{device_slug(device_name)}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown_report(report)
    stem.with_suffix(".md").write_text(table)
    if not plot(report, stem.with_suffix(".png")):
        print("matplotlib is not installed: no plot")
    print(table)
    return report


if __name__ == "__main__":
    main()
