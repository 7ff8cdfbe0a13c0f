"""Microbenchmark of the thought-pass attention against the fastest peers available and the roofline.

For every batch size B, length L and number of thought passes p it times, with the preset's head layout
(`mistral-7b`: 32 query heads, 8 KV heads, d = 128, bf16; `tiny`: 4/2 heads, d = 16, fp32, for CPU):

thought attention (same inputs: q, base K/V, and the p passes' K/V as lists of per-pass tensors)
- `triton`: the fused kernel (`quietstar.ops.thought_attention.triton`)
- `torch`: causal L x L scores concatenated with the L x p thought scores, one softmax (autograd backward)
- `dense`: the reference implementation's approach, SDPA over the concatenated keys with an explicit
  L x L(p+1) mask; K/V are repeated to the query heads so that a memory-efficient masked SDPA backend can run
  instead of the math path (the concatenation and repeat are part of the timed call)
- `flex`: compiled FlexAttention with a mask_mod over the concatenated keys (block mask built outside the timing)
causal peers without thoughts (p = 0), the speed of light for the base part:
- `sdpa_cudnn`: SDPA with the cuDNN backend first (`sdpa_kernel(..., set_priority=True)`), then flash/efficient
- `fa3`: FlashAttention-3 (`flash_attn_interface`) when installed; `fa2`: flash-attn 2 when installed
- `sdpa` (CPU only): SDPA with its default CPU backend

Timing: forward alone, and backward alone (`torch.autograd.grad(out, inputs, grad_out, retain_graph=True)` on one
stored forward, not a difference of medians). On CUDA, shapes whose forward is expected below about 1 ms are timed
with CUDA graphs (`triton.testing.do_bench_cudagraph`) so that host overhead does not dominate; a call that cannot be
captured falls back to `do_bench`, and the row says which timer ran. Medians in ms.

Roofline (docs/design.md, 'Attention'; targets: forward within 1.25x, backward within 1.5x), with the fastest
causal peer measured in the same run at the same B and L:

    fwd roofline = t(fastest causal peer forward) + bytes_thought / BW_copy
    bwd roofline = t(fastest causal peer backward) + 2 * bytes_thought / BW_copy
    bytes_thought = 2 * B * L * Hkv * p * d * element size (reading the thought keys and values);
    BW_copy = measured device copy

Per training step: a step runs the passes p = 1..P one after another, so the aggregate sums forward + backward
over p = 1..P, interpolating linearly in p between the measured p (exact when --passes lists 1..P).

Output: a markdown table on the console, and attention_<device>.{json,md} (+ .png when matplotlib is importable)
in --out-dir (default benchmark_runs/, ignored by git; `--out-dir benchmarks/results` for the committed copy). The
JSON is rewritten after every measured row, with "complete": false until the sweep has ended.

    python benchmarks/bench_attention.py --preset mistral-7b          # full sweep on a GPU
    python benchmarks/bench_attention.py                              # tiny CPU run (the default without CUDA)
"""

import argparse
import datetime
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from quietstar.models.thought_attention import torch_thought_attention
from common import device_slug
from quietstar.ops.thought_attention import triton as kernels

THOUGHT_PROVIDERS = ("triton", "torch", "dense", "flex")
CAUSAL_PEERS = ("sdpa_cudnn", "fa3", "fa2", "sdpa")
PROVIDERS = THOUGHT_PROVIDERS + CAUSAL_PEERS
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRESETS = {
    "tiny": dict(heads=4, kv_heads=2, head_dim=16, dtype="fp32", lengths=[16, 32], passes=[1, 3], batches=[1, 2]),
    "mistral-7b": dict(heads=32, kv_heads=8, head_dim=128, dtype="bf16", lengths=[256, 512, 1024, 2048, 4096],
                       passes=[1, 2, 4, 8, 16], batches=[1, 8]),
}
DEFAULT_OUT_DIR = Path(__file__).resolve().parents[1] / "benchmark_runs"
CUDA_GRAPH_BELOW_FLOPS = 2e11  # forward FLOPs under which a call is expected to take well under 1 ms on H100


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mistral-7b" if cuda else "tiny")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if cuda else "cpu")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths L (default: the preset's)")
    parser.add_argument("--passes", type=int, nargs="+", help="thought passes p (default: the preset's)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: the preset's)")
    parser.add_argument("--max-passes", type=int, help="P of the per-step aggregate (default: the largest p)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: no CUDA device is available")
    preset = PRESETS[args.preset]
    for name in ("lengths", "passes", "batches"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    args.heads, args.kv_heads, args.head_dim, args.dtype = (
        preset[k] for k in ("heads", "kv_heads", "head_dim", "dtype")
    )
    args.max_passes = args.max_passes or max(args.passes)
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
    forward = q + kv + thought + q + lse  # read q, k, v, thought K/V; write o and the LSE
    backward = 3 * q + lse + kv + thought + q + kv + thought  # read q, o, dO, LSE, k, v, thought K/V; write the grads
    return forward, backward


# ------------------------------------------------------------------------------------------------- timing


def bench_ms(fn, cuda: bool, graph: bool) -> tuple[float, str]:
    """(median ms of fn(), timer name): CUDA graphs when asked and capturable, else do_bench; perf_counter on CPU."""
    if not cuda:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times), "perf_counter"
    if graph:
        try:
            return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"), "cudagraph"
        except Exception:  # not capturable (e.g. a host-to-device copy inside): time it without graphs
            torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"), "do_bench"


def copy_bandwidth(device: torch.device, cuda: bool) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of a 1 GiB (CUDA) or 64 MiB (CPU) buffer."""
    numel = (1 << 29) if cuda else (1 << 24)
    src = torch.empty(numel, dtype=torch.float16 if cuda else torch.float32, device=device)
    dst = torch.empty_like(src)
    ms, _ = bench_ms(lambda: dst.copy_(src), cuda, graph=False)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


# ------------------------------------------------------------------------------------------------ providers


def dense_repeated(q, base_key, base_value, thought_keys, thought_values, scaling):
    """Reference approach: concatenated keys, K/V repeated to the query heads, explicit additive mask, SDPA."""
    length = q.shape[2]
    groups = q.shape[1] // base_key.shape[1]
    keys = torch.cat([base_key, *thought_keys], dim=2).repeat_interleave(groups, 1)
    values = torch.cat([base_value, *thought_values], dim=2).repeat_interleave(groups, 1)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    same = torch.eye(length, dtype=torch.bool, device=q.device).repeat(1, len(thought_keys))
    allowed = torch.cat([causal, same], dim=1)
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=scaling)


def flex_provider(heads, kv_heads, length, passes, device):
    """Compiled FlexAttention over [base, pass 1, ..., pass p] keys with the thought mask as a mask_mod."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        causal = (kv_idx < length) & (kv_idx <= q_idx)
        same_position = (kv_idx >= length) & ((kv_idx % length) == q_idx)
        return causal | same_position

    block_mask = create_block_mask(mask_mod, None, None, length, length * (passes + 1), device=device)
    # every (L, p) is a new static shape: allow one compiled graph per point of the sweep instead of dynamo's
    # default 8, after which it would silently fall back to the unfused eager path
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 128)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, base_key, base_value, thought_keys, thought_values, scaling):
        keys, values = torch.cat([base_key, *thought_keys], dim=2), torch.cat([base_value, *thought_values], dim=2)
        return compiled(q, keys, values, block_mask=block_mask, scale=scaling, enable_gqa=heads != kv_heads)

    return run


def sdpa_cudnn(q, base_key, base_value, thought_keys, thought_values, scaling):
    """Causal SDPA on the base keys, cuDNN first, then flash and memory-efficient (GQA natively)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    with sdpa_kernel(order, set_priority=True):
        return F.scaled_dot_product_attention(q, base_key, base_value, is_causal=True, scale=scaling,
                                              enable_gqa=q.shape[1] != base_key.shape[1])


def sdpa_default(q, base_key, base_value, thought_keys, thought_values, scaling):
    return F.scaled_dot_product_attention(q, base_key, base_value, is_causal=True, scale=scaling,
                                          enable_gqa=q.shape[1] != base_key.shape[1])


def flash_provider(module: str):
    """flash-attn's causal kernel on the base keys only, in its (B, L, H, d) layout (GQA native)."""
    flash_attn_func = importlib.import_module(module).flash_attn_func

    def run(q, base_key, base_value, thought_keys, thought_values, scaling):
        out = flash_attn_func(q, base_key, base_value, softmax_scale=scaling, causal=True)
        return out[0] if isinstance(out, tuple) else out  # FA3 returns (out, lse)

    return run


def unavailable_reason(provider: str, cuda: bool) -> str | None:
    """Why a provider cannot run here, or None."""
    if provider == "triton" and not cuda and not kernels.INTERPRET:
        return "triton needs CUDA (or TRITON_INTERPRET=1 set before triton is imported, for a slow CPU run)"
    if provider == "flex" and not cuda:
        return "flex needs CUDA: compiled FlexAttention has no backward on CPU"
    if provider in ("sdpa_cudnn", "fa3", "fa2") and not cuda:
        return f"{provider} needs CUDA"
    if provider == "sdpa" and cuda:
        return "sdpa (default CPU backend) is the CPU peer; on CUDA sdpa_cudnn is measured"
    module = {"fa3": "flash_attn_interface", "fa2": "flash_attn"}.get(provider)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    return None


def make_provider(provider, args, length, passes, device):
    """(fn(q, base_key, base_value, thought_keys, thought_values, scaling) -> (B, H, L, d) or (B, L, H, d), layout
    of q/k/v: "bhld" or "blhd")."""
    if provider in ("triton", "torch"):
        implementation = kernels.thought_attention if provider == "triton" else torch_thought_attention

        def run(q, base_key, base_value, thought_keys, thought_values, scaling):
            return implementation(q, base_key, base_value, thought_keys, thought_values, None, scaling)

        return run, "bhld"
    if provider == "dense":
        return dense_repeated, "bhld"
    if provider == "flex":
        return flex_provider(args.heads, args.kv_heads, length, passes, device), "bhld"
    if provider == "sdpa_cudnn":
        return sdpa_cudnn, "bhld"
    if provider == "sdpa":
        return sdpa_default, "bhld"
    return flash_provider("flash_attn_interface" if provider == "fa3" else "flash_attn"), "blhd"


def measure(provider, args, batch, length, passes, device, cuda) -> dict:
    """Time one provider at one (B, L, p); errors (e.g. out of memory) are recorded, not raised."""
    dtype = DTYPES[args.dtype]
    causal_only = provider in CAUSAL_PEERS
    row = dict(provider=provider, B=batch, L=length, p=0 if causal_only else passes)
    generator = torch.Generator(device=device).manual_seed(0)
    flops = useful_flops(batch, args.heads, length, passes, args.head_dim, causal_only)
    graph = cuda and flops < CUDA_GRAPH_BELOW_FLOPS
    try:
        fn, layout = make_provider(provider, args, length, passes, device)

        def rand(heads):
            shape = (batch, heads, length, args.head_dim) if layout == "bhld" else (batch, length, heads, args.head_dim)
            return torch.randn(shape, generator=generator, device=device, dtype=dtype).requires_grad_()

        q, base_key, base_value = rand(args.heads), rand(args.kv_heads), rand(args.kv_heads)
        thought_keys = [rand(args.kv_heads) for _ in range(0 if causal_only else passes)]
        thought_values = [rand(args.kv_heads) for _ in range(0 if causal_only else passes)]
        leaves = [q, base_key, base_value, *thought_keys, *thought_values]
        scaling = args.head_dim**-0.5

        def forward():
            with torch.no_grad():
                return fn(q, base_key, base_value, thought_keys, thought_values, scaling)

        row["fwd_ms"], row["fwd_timer"] = bench_ms(forward, cuda, graph)
        out = fn(q, base_key, base_value, thought_keys, thought_values, scaling)
        grad_out = torch.randn_like(out)

        def backward():
            return torch.autograd.grad(out, leaves, grad_out, retain_graph=True)

        row["bwd_ms"], row["bwd_timer"] = bench_ms(backward, cuda, graph)
        if cuda:
            del out
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            out = fn(q, base_key, base_value, thought_keys, thought_values, scaling)
            torch.autograd.grad(out, leaves, grad_out)
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
    element = torch.empty((), dtype=dtype).element_size()
    fwd_bytes, bwd_bytes = minimal_bytes(batch, args.heads, args.kv_heads, length, passes, args.head_dim, element,
                                         causal_only)
    row["fwd_tflops"] = flops / (row["fwd_ms"] * 1e-3) / 1e12
    row["bwd_tflops"] = 2.5 * flops / (row["bwd_ms"] * 1e-3) / 1e12  # backward = 2.5x forward FLOPs
    row["fwd_GBps"] = fwd_bytes / (row["fwd_ms"] * 1e-3) / 1e9
    row["bwd_GBps"] = bwd_bytes / (row["bwd_ms"] * 1e-3) / 1e9
    return row


# --------------------------------------------------------------------------------------------- roofline, report


def add_roofline(results, args, bandwidth) -> list[dict]:
    """Roofline per (B, L, p) from the fastest causal peer of this run, and each thought provider's ratio to it."""
    element = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    rooflines = []
    for batch in args.batches:
        for length in args.lengths:
            peers = [r for r in results if (r["B"], r["L"]) == (batch, length) and r["provider"] in CAUSAL_PEERS
                     and "error" not in r]
            if not peers:
                continue
            fwd_peer = min(peers, key=lambda r: r["fwd_ms"])
            bwd_peer = min(peers, key=lambda r: r["bwd_ms"])
            for passes in args.passes:
                thought_bytes = 2 * batch * length * args.kv_heads * passes * args.head_dim * element
                roof = dict(
                    B=batch, L=length, p=passes, fwd_peer=fwd_peer["provider"], bwd_peer=bwd_peer["provider"],
                    causal_fwd_ms=fwd_peer["fwd_ms"], causal_bwd_ms=bwd_peer["bwd_ms"], thought_bytes=thought_bytes,
                    fwd_ms=fwd_peer["fwd_ms"] + thought_bytes / bandwidth * 1e3,
                    bwd_ms=bwd_peer["bwd_ms"] + 2 * thought_bytes / bandwidth * 1e3,
                )
                rooflines.append(roof)
                for row in results:
                    if (row["B"], row["L"], row["p"]) == (batch, length, passes) and "error" not in row:
                        row["fwd_vs_roofline"] = row["fwd_ms"] / roof["fwd_ms"]
                        row["bwd_vs_roofline"] = row["bwd_ms"] / roof["bwd_ms"]
    return rooflines


def _interpolated(points: dict[int, float], p: int) -> float:
    """Linear interpolation (or end-slope extrapolation) in p of measured times."""
    xs = sorted(points)
    if p in points:
        return points[p]
    if len(xs) == 1:
        return points[xs[0]] * p / xs[0]
    lo = max([x for x in xs if x < p], default=xs[0])
    hi = min([x for x in xs if x > p], default=xs[-1])
    if lo == hi:
        lo, hi = (xs[-2], xs[-1]) if p > xs[-1] else (xs[0], xs[1])
    return points[lo] + (points[hi] - points[lo]) * (p - lo) / (hi - lo)


def step_aggregate(results, rooflines, args) -> list[dict]:
    """Per (provider, B, L): forward + backward summed over p = 1..P, and the same sum of the rooflines."""
    out = []
    for provider in THOUGHT_PROVIDERS:
        for batch in args.batches:
            for length in args.lengths:
                rows = {r["p"]: r["fwd_ms"] + r["bwd_ms"] for r in results
                        if (r["provider"], r["B"], r["L"]) == (provider, batch, length) and "error" not in r}
                roofs = {r["p"]: r["fwd_ms"] + r["bwd_ms"] for r in rooflines if (r["B"], r["L"]) == (batch, length)}
                if not rows:
                    continue
                passes = range(1, args.max_passes + 1)
                total = sum(_interpolated(rows, p) for p in passes)
                entry = dict(provider=provider, B=batch, L=length, P=args.max_passes, step_ms=total,
                             exact=set(passes) <= set(rows))
                if roofs:
                    entry["roofline_ms"] = sum(_interpolated(roofs, p) for p in passes)
                    entry["vs_roofline"] = total / entry["roofline_ms"]
                out.append(entry)
    return out


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


ASSUMPTIONS = (
    "Times are medians in ms (timer per row: cudagraph, do_bench or perf_counter). TFLOP/s count useful work only "
    "(backward = 2.5x forward FLOPs); GB/s is the minimal HBM traffic over the time. Roofline = fastest causal peer "
    "of this run at the same B and L + the thought K/V bytes (x2 for backward) at the measured copy bandwidth; "
    "targets: fwd <= 1.25, bwd <= 1.5. Causal peers have p = 0. The per-step aggregate sums p = 1..P, linear in p "
    "between measured p."
)


def markdown_report(report) -> str:
    meta = report["meta"]
    lines = [
        f"# Thought-pass attention benchmark ({meta['device']})",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, flash-attn {meta['flash_attn'] or 'not installed'}, "
        f"FA3 {'installed' if meta['fa3'] else 'not installed'}; {meta['timestamp']}; preset {meta['preset']}",
        f"H={meta['heads']}, Hkv={meta['kv_heads']}, d={meta['head_dim']}, {meta['dtype']}; "
        f"copy bandwidth {meta['copy_bandwidth_GBps']:.0f} GB/s",
        "",
        ASSUMPTIONS,
        "",
    ]
    for provider, reason in report["skipped"].items():
        lines.append(f"- skipped `{provider}`: {reason}")
    lines += [
        "",
        "| B | L | p | provider | fwd ms | bwd ms | fwd TFLOP/s | bwd TFLOP/s | fwd GB/s | peak MiB | fwd / roof "
        "| bwd / roof | timers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        if "error" in row:
            lines.append(f"| {row['B']} | {row['L']} | {row['p']} | {row['provider']} | {row['error']} "
                         "|  |  |  |  |  |  |  |  |")
            continue
        cells = [row["B"], row["L"], row["p"], row["provider"], row["fwd_ms"], row["bwd_ms"], row["fwd_tflops"],
                 row["bwd_tflops"], row["fwd_GBps"], row["peak_mem_MiB"], row.get("fwd_vs_roofline"),
                 row.get("bwd_vs_roofline"), f"{row['fwd_timer']}/{row['bwd_timer']}"]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if report["roofline"]:
        lines += ["", "| B | L | p | fwd peer | bwd peer | causal fwd ms | causal bwd ms | thought MB "
                  "| roofline fwd ms | roofline bwd ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for roof in report["roofline"]:
            cells = [roof["B"], roof["L"], roof["p"], roof["fwd_peer"], roof["bwd_peer"], roof["causal_fwd_ms"],
                     roof["causal_bwd_ms"], roof["thought_bytes"] / 1e6, roof["fwd_ms"], roof["bwd_ms"]]
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if report["step"]:
        lines += ["", "| provider | B | L | P | step ms (p = 1..P, fwd+bwd) | roofline ms | step / roof | exact |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in report["step"]:
            cells = [s["provider"], s["B"], s["L"], s["P"], s["step_ms"], s.get("roofline_ms"), s.get("vs_roofline"),
                     s["exact"]]
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report, path: Path) -> bool:
    """fwd+bwd time against L, one panel per (B, p); False when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["B"] for r in report["results"]})
    passes = sorted({r["p"] for r in report["results"] if r["p"]})
    fig, axes = plt.subplots(len(batches), len(passes), figsize=(4.5 * len(passes), 4 * len(batches)), squeeze=False)
    for i, batch in enumerate(batches):
        for ax, p in zip(axes[i], passes):
            for provider in PROVIDERS:
                rows = [r for r in report["results"] if r["provider"] == provider and r["B"] == batch
                        and r["p"] in (p, 0) and "error" not in r]
                if rows:
                    ax.plot([r["L"] for r in rows], [r["fwd_ms"] + r["bwd_ms"] for r in rows], marker="o",
                            label=provider)
            roofs = [r for r in report["roofline"] if r["p"] == p and r["B"] == batch]
            if roofs:
                ax.plot([r["L"] for r in roofs], [r["fwd_ms"] + r["bwd_ms"] for r in roofs], "k--", label="roofline")
            ax.set(title=f"B = {batch}, p = {p}", xlabel="L", ylabel="fwd+bwd ms", xscale="log", yscale="log")
            ax.legend(fontsize=7)
    fig.suptitle(f"thought attention, {report['meta']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), "__version__", "installed")


def main(argv=None) -> dict:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    skipped = {p: reason for p in args.providers if (reason := unavailable_reason(p, cuda))}
    active = [p for p in args.providers if p not in skipped]

    bandwidth = copy_bandwidth(device, cuda)
    meta = dict(
        device=device_name, torch=torch.__version__, triton=triton.__version__, flash_attn=_version("flash_attn"),
        fa3=importlib.util.find_spec("flash_attn_interface") is not None,
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        preset=args.preset, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim, dtype=args.dtype,
        batches=args.batches, lengths=args.lengths, passes=args.passes, max_passes=args.max_passes,
        copy_bandwidth_GBps=bandwidth / 1e9, assumptions=ASSUMPTIONS,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"attention_{device_slug(device)}"
    results = []
    for batch in args.batches:
        for length in args.lengths:
            for provider in active:
                for passes in [args.passes[0]] if provider in CAUSAL_PEERS else args.passes:
                    results.append(measure(provider, args, batch, length, passes, device, cuda))
                    # rewritten after every row, so that a run stopped early keeps what it measured
                    partial = dict(meta=meta, skipped=skipped, results=results, roofline=[], step=[], complete=False)
                    stem.with_suffix(".json").write_text(json.dumps(partial, indent=1) + "\n")
    rooflines = add_roofline(results, args, bandwidth)
    report = dict(meta=meta, skipped=skipped, results=results, roofline=rooflines,
                  step=step_aggregate(results, rooflines, args), complete=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown_report(report)
    stem.with_suffix(".md").write_text(table)
    report["plot"] = plot(report, stem.with_suffix(".png"))
    print(table)
    if not report["plot"]:
        print("matplotlib is not installed: no plot")
    return report


if __name__ == "__main__":
    main()
