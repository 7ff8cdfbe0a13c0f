"""Ahead-of-time compile report and FLOP/byte model of the thought-attention Triton kernels, without a GPU.

Part 1, compile report: every kernel of `quietstar.ops.thought_attention.triton` (forward, fused thought backward,
base dK/dV with and without the fused atomic dQ, dQ) in every autotune candidate config is compiled for each
target (sm_90 and sm_80 by default) at each head dim and dtype, with `triton.compile` and a `GPUTarget`, and the
PTX is assembled again with `ptxas -v` (the ptxas that ships with triton's NVIDIA backend, which runs on any
x86-64 machine). It reports registers per thread, spill stores/loads, stack frame, shared memory and warps per
(kernel, config), and whether the autotuner may pick the config (`selectable`: it survives the kernel's
`early_config_prune` for that head dim). Spills in a selectable config are errors (exit status 1).

Compile assumptions: the key padding mask is present (HAS_MASK, the larger variant), G = 4 query heads per KV head
(Mistral 7B), pointers and strides 16-divisible (what real model shapes give). fp32 rows compile the tf32 path for
information only: for fp32 on CUDA the model layer runs its torch implementation, so no fp32 config is selectable.

Part 2, predictions: a FLOP/byte model of the kernels' loop structure gives the expected time per call on H100
(989 TFLOP/s dense bf16, 3.35 TB/s HBM) and H200 (989 TFLOP/s, 4.8 TB/s) for Mistral 7B's head layout
(32 query heads, 8 KV heads, d = 128, bf16), L in 256..4096, p in 1..16, batch 1 and 8, so a first GPU run can be
judged against it. The assumptions (attainable fractions of peak, the peers' published throughput) are printed
with the table and stored in the JSON.

Output: a markdown table on the console, and kernel_report.{json,md} in --out-dir (default benchmark_runs/,
ignored by git; `--out-dir benchmarks/results` for the committed copy).

    python benchmarks/kernel_report.py                         # both parts, all kernels, ~15 min on 2 cores
    python benchmarks/kernel_report.py --head-dims 128 --dtypes bf16 --selectable-only   # the CI check
"""

import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = ROOT / "benchmark_runs"
KERNEL_PACKAGE = ROOT / "quietstar" / "ops" / "thought_attention"
ARCHES = (90, 80)
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GROUPS = 4
# kernel variants: (report name, kernel key in KERNELS, extra constexprs)
VARIANTS = (
    ("fwd", "fwd", {}),
    ("thought_bwd", "thought_bwd", {}),
    ("dkv_fused_dq", "dkv", {"FUSED_DQ": True}),
    ("dkv", "dkv", {"FUSED_DQ": False}),
    ("dq", "dq", {}),
)
FP32_POINTERS = {"LSE", "DELTA", "DQ_ACC"}
TABLES = {"THOUGHT_KEY_PTRS", "THOUGHT_VALUE_PTRS", "GRAD_THOUGHT_KEY_PTRS", "GRAD_THOUGHT_VALUE_PTRS"}
FLOAT_SCALARS = {"qk_scale", "scaling"}


def ptxas_for(arch: int) -> str | None:
    """The ptxas triton itself uses for this compute capability (or TRITON_PTXAS_PATH), or None if not runnable."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            path = get_ptxas(arch).path
        except TypeError:  # older triton: one ptxas for every arch
            path = get_ptxas().path
        subprocess.run([path, "--version"], check=True, capture_output=True)
    except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError):
        return None
    return path


@functools.lru_cache(maxsize=None)
def load_kernels():
    """(kernels, launch-config choice): the `triton` and `autotune` modules of quietstar/ops/thought_attention,
    loaded from their files as a package of their own, so that only torch and triton are imported, not quietstar
    (and transformers)."""
    spec = importlib.util.spec_from_file_location(
        "thought_attention_kernels", KERNEL_PACKAGE / "__init__.py", submodule_search_locations=[str(KERNEL_PACKAGE)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    return package.triton, package.autotune


def _jit_function(kernel):
    """The JITFunction under autotune/heuristics wrappers."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def signature(fn, dtype: str, constexprs: dict) -> tuple[dict, dict]:
    """(signature, attrs) for ASTSource from the argument naming convention of the kernels.

    Upper-case names are pointers (fp32 scratch for LSE/DELTA/DQ_ACC, the int64 pointer tables *_PTRS, the mask
    as int1, the input dtype otherwise; the fp32 partial dK/dV are not compiled separately: DK/DV take the input
    dtype), `qk_scale`/`scaling` are fp32, other lower-case names i32; constexprs are marked as such.
    Pointers and strides get the 16-divisibility that real (B, L, H, 128)-shaped tensors have.
    """
    sig, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.isupper():
            if name in TABLES:
                sig[name] = "*i64"
            elif name == "MASK":
                sig[name] = "*i1"
            elif name in FP32_POINTERS:
                sig[name] = "*fp32"
            else:
                sig[name] = f"*{dtype}"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name.startswith("stride_"):
                attrs[(index,)] = [["tt.divisibility", 16]]
    return sig, attrs


def parse_ptxas(log: str) -> dict:
    """Registers, spill and stack bytes from `ptxas -v` output."""
    def number(pattern):
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return dict(
        registers=number(r"Used (\d+) registers"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
        stack=number(r"(\d+) bytes stack frame"),
    )


def compile_one(job: dict) -> dict:
    """Compile one (kernel, config, arch, head dim, dtype) and read its resource use; errors are recorded."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels, _ = load_kernels()
    row = {k: job[k] for k in ("kernel", "arch", "head_dim", "dtype", "config", "warps", "stages", "selectable")}
    fn = _jit_function(kernels.KERNELS[job["kernel_key"]])
    constexprs = dict(job["constexprs"])
    sig, attrs = signature(fn, job["dtype"], constexprs)
    try:
        source = ASTSource(fn, sig, constexprs, attrs)
        compiled = triton.compile(
            source, target=GPUTarget("cuda", job["arch"], 32),
            options={"num_warps": job["warps"], "num_stages": job["stages"]},
        )
        arch_name = f"sm_{job['arch']}a" if job["arch"] == 90 else f"sm_{job['arch']}"
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / "kernel.ptx"
            ptx.write_text(compiled.asm["ptx"])
            result = subprocess.run(
                [ptxas_for(job["arch"]), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch_name}", str(ptx),
                 "-o", str(Path(tmp) / "kernel.cubin")],
                capture_output=True, text=True, check=True,
            )
        row.update(parse_ptxas(result.stderr + result.stdout))
        row["shared_bytes"] = compiled.metadata.shared
    except Exception as error:  # one failing compile must not hide the rest of the table
        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
    return row


def jobs(args) -> list[dict]:
    """All (variant, config, arch, head dim, dtype) combinations asked for."""
    kernels, autotune = load_kernels()
    out = []
    for name, key, extra in VARIANTS:
        if args.kernels and name not in args.kernels:
            continue
        candidates = autotune.CONFIGS[key]
        for head_dim in args.head_dims:
            constexprs_base = dict(HEAD_DIM=head_dim, **extra)
            prune_args = dict(HEAD_DIM=head_dim, GROUPS=GROUPS, **extra)
            selectable = autotune.PRUNERS[key](candidates, {}, **prune_args)
            for dtype in args.dtypes:
                every = dtype in args.every_config_dtypes and not args.selectable_only
                configs = list(candidates) if every else list(selectable)
                configs += [c for c in selectable if c not in configs]
                fn = _jit_function(kernels.KERNELS[key])
                flags = dict(UPCAST=False, DOT_PRECISION=kernels.dot_precision(TORCH_DTYPES[dtype]))
                flags = {k: v for k, v in flags.items() if k in fn.arg_names}
                if "HAS_MASK" in fn.arg_names:
                    flags["HAS_MASK"] = True
                if "GROUPS" in fn.arg_names:
                    flags.update(GROUPS=GROUPS, BLOCK_G=triton.next_power_of_2(GROUPS))
                for config in configs:
                    for arch in args.arches:
                        out.append(dict(
                            kernel=name, kernel_key=key, arch=arch, head_dim=head_dim, dtype=dtype,
                            config=dict(config.kwargs), warps=config.num_warps, stages=config.num_stages,
                            selectable=config in selectable and dtype != "fp32",
                            constexprs={**constexprs_base, **flags, **config.kwargs},
                        ))
    return out


# ------------------------------------------------------------------------------------------------ predictions

HARDWARE = {
    "H100": dict(tflops=989.0, cuda_core_tflops=67.0, bandwidth_TBps=3.35, sms=132),
    "H200": dict(tflops=989.0, cuda_core_tflops=67.0, bandwidth_TBps=4.8, sms=132),
}
ASSUMPTIONS = dict(
    # Triton-class causal attention, H100 bf16 d = 128, TFLOP/s of useful work: forward from the FA3 paper's Triton
    # baseline (146 / 273 / 323 / 353 at 512..4096; 256 extrapolated); backward = 0.85 x FlashAttention-2's backward
    # (derived from its published forward and forward+backward rates; FlexAttention's blog puts Triton at 85-90%
    # of FA2). Our kernels run the base part at these rates: 5 matrix products per backward tile as FA2
    # (7 in deterministic mode: 1.4x the backward FLOPs).
    ours_fwd_tflops={256: 90.0, 512: 146.0, 1024: 273.0, 2048: 323.0, 4096: 353.0},
    ours_bwd_tflops={256: 80.0, 512: 131.0, 1024: 177.0, 2048: 216.0, 4096: 242.0},
    # fastest causal peer (FA3 / cuDNN class), same units (FA3 paper and tritonbench; 256 extrapolated), for the
    # roofline "causal peer + thought bytes / BW"
    peer_fwd_tflops={256: 200.0, 512: 315.0, 1024: 423.0, 2048: 521.0, 4096: 579.0},
    peer_bwd_tflops={256: 100.0, 512: 140.0, 1024: 181.0, 2048: 316.0, 4096: 444.0},
    bandwidth_fraction=0.85,  # ~2.9 of 3.35 TB/s measured for device copies on H100 (4.3 of 4.8 on H200)
    cuda_core_fraction=0.5,  # of the 67 TFLOP/s fp32 non-tensor rate, for the row-wise thought products
    launch_us=5.0,  # per kernel: launch and tail, as with CUDA graphs
    peer_kernels=dict(fwd=1, bwd=3),  # FA2/FA3 backward: preprocess, main, dQ conversion
    note="HBM traffic counts each tensor once per kernel (K/V and thought rows re-read by the G heads of a group "
    "come from L2); dQ atomics resolve in L2; a kernel takes max(tensor-core time + CUDA-core time, byte time) "
    "plus its launch; the head split keeps >= 2 dK/dV programs per SM, so no causal-imbalance term.",
)


def _rate(table: dict, length: int) -> float:
    """TFLOP/s at L from a table by L (log-linear interpolation, clamped at the ends)."""
    xs = sorted(table)
    if length <= xs[0]:
        return table[xs[0]]
    if length >= xs[-1]:
        return table[xs[-1]]
    lo = max(x for x in xs if x <= length)
    hi = min(x for x in xs if x >= length)
    if lo == hi:
        return table[lo]
    weight = (math.log(length) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return table[lo] + weight * (table[hi] - table[lo])


def kernel_costs(batch, heads, kv_heads, length, passes, head_dim, element=2, deterministic=False) -> dict:
    """Per kernel: useful-equivalent tensor-core FLOPs (in units of causal forward work, scaled by the products per
    tile), fp32 CUDA-core FLOPs of the thought part, HBM bytes, and the number of launches."""
    rows = batch * heads * length
    kv_rows = batch * kv_heads * length
    causal = 4 * head_dim * length * (length + 1) / 2 * batch * heads
    groups = heads // kv_heads
    costs = {}
    costs["fwd"] = dict(
        mma=causal, mma_kind="fwd",
        cuda=4 * head_dim * passes * rows,
        bytes=element * (2 * rows * head_dim + 2 * kv_rows * head_dim + 2 * passes * kv_rows * head_dim) + 4 * rows,
        launches=1,
    )
    costs["thought_bwd"] = dict(
        mma=0.0, mma_kind="bwd",
        cuda=10 * head_dim * passes * rows,
        bytes=element * (3 * rows * head_dim + 4 * passes * kv_rows * head_dim) + 4 * rows * (2 + head_dim),
        launches=1,
    )
    _, autotune = load_kernels()
    splits = autotune.dkv_splits(batch, kv_heads, groups, length)
    partial_bytes = 0 if splits == 1 else 4 * 2 * kv_rows * head_dim * splits * 2
    costs["dkv"] = dict(
        mma=2.5 * causal * (8 / 10 if deterministic else 1.0), mma_kind="bwd",
        cuda=0.0,
        bytes=element * (2 * rows * head_dim + 4 * kv_rows * head_dim) + 8 * rows + partial_bytes
        + (0 if deterministic else 4 * 2 * rows * head_dim),
        launches=1 if splits == 1 else 3,  # + the two fixed-order sums of the partials
    )
    if deterministic:
        costs["dq"] = dict(
            mma=2.5 * causal * 6 / 10, mma_kind="bwd", cuda=0.0,
            bytes=element * (3 * rows * head_dim + 2 * kv_rows * head_dim) + 4 * rows * (2 + head_dim),
            launches=1,
        )
    else:
        costs["dq_copy"] = dict(mma=0.0, mma_kind="bwd", cuda=0.0, bytes=(4 + element) * rows * head_dim, launches=1)
    return costs


def predicted_ms(cost: dict, hardware: dict, length: int) -> float:
    """max(tensor-core + CUDA-core time, byte time) + launches, in ms."""
    table = ASSUMPTIONS["ours_fwd_tflops" if cost["mma_kind"] == "fwd" else "ours_bwd_tflops"]
    t_mma = cost["mma"] / (_rate(table, length) * 1e12)
    t_cuda = cost["cuda"] / (hardware["cuda_core_tflops"] * 1e12 * ASSUMPTIONS["cuda_core_fraction"])
    t_bytes = cost["bytes"] / (hardware["bandwidth_TBps"] * 1e12 * ASSUMPTIONS["bandwidth_fraction"])
    return 1e3 * max(t_mma + t_cuda, t_bytes) + cost["launches"] * ASSUMPTIONS["launch_us"] * 1e-3


def predictions(lengths, passes_list, batches, heads=32, kv_heads=8, head_dim=128) -> list[dict]:
    """Expected time per call of our kernels and the roofline against the fastest peer, per hardware and shape."""
    rows = []
    launch_ms = ASSUMPTIONS["launch_us"] * 1e-3
    for hw_name, hardware in HARDWARE.items():
        bandwidth = hardware["bandwidth_TBps"] * 1e12 * ASSUMPTIONS["bandwidth_fraction"]
        for batch in batches:
            for length in lengths:
                causal_flops = 4 * head_dim * length * (length + 1) / 2 * batch * heads
                peer_fwd = causal_flops / (_rate(ASSUMPTIONS["peer_fwd_tflops"], length) * 1e12) * 1e3 \
                    + ASSUMPTIONS["peer_kernels"]["fwd"] * launch_ms
                peer_bwd = 2.5 * causal_flops / (_rate(ASSUMPTIONS["peer_bwd_tflops"], length) * 1e12) * 1e3 \
                    + ASSUMPTIONS["peer_kernels"]["bwd"] * launch_ms
                for passes in passes_list:
                    costs = kernel_costs(batch, heads, kv_heads, length, passes, head_dim)
                    fwd = predicted_ms(costs["fwd"], hardware, length)
                    per_kernel = {name: predicted_ms(cost, hardware, length) for name, cost in costs.items()
                                  if name != "fwd"}
                    bwd = sum(per_kernel.values())
                    deterministic = kernel_costs(batch, heads, kv_heads, length, passes, head_dim, deterministic=True)
                    bwd_det = sum(predicted_ms(cost, hardware, length) for name, cost in deterministic.items()
                                  if name != "fwd")
                    thought_bytes = 2 * 2 * batch * kv_heads * passes * length * head_dim
                    roof_fwd = peer_fwd + thought_bytes / bandwidth * 1e3
                    roof_bwd = peer_bwd + 2 * thought_bytes / bandwidth * 1e3
                    bound_fwd = 1e3 * max(
                        costs["fwd"]["mma"] / (hardware["tflops"] * 1e12),
                        costs["fwd"]["bytes"] / (hardware["bandwidth_TBps"] * 1e12),
                    )
                    rows.append(dict(
                        hardware=hw_name, batch=batch, L=length, p=passes,
                        fwd_ms=fwd, bwd_ms=bwd, bwd_deterministic_ms=bwd_det, bwd_kernels_ms=per_kernel,
                        fwd_peak_bound_ms=bound_fwd, roofline_fwd_ms=roof_fwd, roofline_bwd_ms=roof_bwd,
                        fwd_vs_roofline=fwd / roof_fwd, bwd_vs_roofline=bwd / roof_bwd,
                    ))
    return rows


def step_aggregate(hardware_names, lengths, batches, max_passes: int) -> list[dict]:
    """Per training step and layer: forward + backward summed over p = 1..P, as a step runs them."""
    rows = predictions(lengths, list(range(1, max_passes + 1)), batches)
    out = []
    for hw_name in hardware_names:
        for batch in batches:
            for length in lengths:
                chosen = [r for r in rows if (r["hardware"], r["batch"], r["L"]) == (hw_name, batch, length)]
                total = sum(r["fwd_ms"] + r["bwd_ms"] for r in chosen)
                roof = sum(r["roofline_fwd_ms"] + r["roofline_bwd_ms"] for r in chosen)
                out.append(dict(hardware=hw_name, batch=batch, L=length, P=max_passes, step_ms=total,
                                roofline_ms=roof, vs_roofline=total / roof))
    return out


# ------------------------------------------------------------------------------------------------------ output


def compile_table(rows: list[dict]) -> str:
    lines = [
        "| kernel | arch | d | dtype | config | warps | stages | selectable | regs | spill st/ld B | stack B "
        "| smem B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        config = " ".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in r["config"].items())
        if "error" in r:
            lines.append(f"| {r['kernel']} | sm_{r['arch']} | {r['head_dim']} | {r['dtype']} | {config} | {r['warps']} "
                         f"| {r['stages']} | {r['selectable']} | error: {r['error'][:80]} |  |  |  |")
            continue
        lines.append(
            f"| {r['kernel']} | sm_{r['arch']} | {r['head_dim']} | {r['dtype']} | {config} | {r['warps']} "
            f"| {r['stages']} "
            f"| {'yes' if r['selectable'] else 'no'} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} "
            f"| {r['stack']} | {r['shared_bytes']} |"
        )
    return "\n".join(lines)


def prediction_table(rows: list[dict], steps: list[dict]) -> str:
    lines = [
        "| hw | B | L | p | fwd ms | bwd ms | bwd ms (deterministic) | fwd at peak ms | roofline fwd ms "
        "| roofline bwd ms | fwd/roof | bwd/roof |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hardware']} | {r['batch']} | {r['L']} | {r['p']} | {r['fwd_ms']:.3f} | {r['bwd_ms']:.3f} "
            f"| {r['bwd_deterministic_ms']:.3f} "
            f"| {r['fwd_peak_bound_ms']:.3f} | {r['roofline_fwd_ms']:.3f} | {r['roofline_bwd_ms']:.3f} "
            f"| {r['fwd_vs_roofline']:.2f} | {r['bwd_vs_roofline']:.2f} |"
        )
    lines += ["", "| hw | B | L | P | step ms (sum p=1..P, fwd+bwd) | roofline ms | ratio |",
              "|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s['hardware']} | {s['batch']} | {s['L']} | {s['P']} | {s['step_ms']:.2f} "
                     f"| {s['roofline_ms']:.2f} | {s['vs_roofline']:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arches", type=int, nargs="+", default=list(ARCHES), help="compute capabilities (90 80)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(TORCH_DTYPES), default=["bf16", "fp16", "fp32"])
    parser.add_argument("--kernels", nargs="+", choices=[v[0] for v in VARIANTS], help="default: all")
    parser.add_argument("--every-config-dtypes", nargs="+", choices=sorted(TORCH_DTYPES), default=["bf16", "fp16"],
                        help="dtypes compiled in every candidate config (the others: selectable configs only)")
    parser.add_argument("--selectable-only", action="store_true", help="compile only configs the autotuner may pick")
    parser.add_argument("--no-compile", action="store_true", help="predictions only")
    parser.add_argument("--no-predictions", action="store_true", help="compile report only")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    kernels, _ = load_kernels()
    if kernels.INTERPRET:
        sys.exit("kernel_report.py compiles for real GPUs: run it without TRITON_INTERPRET=1")
    report = dict(
        meta=dict(
            triton=triton.__version__,
            timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            arches=args.arches, head_dims=args.head_dims, dtypes=args.dtypes, groups=GROUPS,
            compile_assumptions="HAS_MASK=True, G=4, 16-divisible pointers and strides, tf32 for fp32 (never "
            "selectable: fp32 on CUDA runs the torch implementation); every "
            f"candidate config for {'/'.join(args.every_config_dtypes)}, the selectable ones for other dtypes",
        ),
        compile=[], spills_in_selectable=[], predictions=[], step_aggregate=[], assumptions=ASSUMPTIONS,
    )
    text = []
    if not args.no_compile:
        ptxas = {arch: ptxas_for(arch) for arch in args.arches}
        if None in ptxas.values():
            sys.exit("ptxas is not available (triton's NVIDIA backend ships it; set TRITON_PTXAS_PATH)")
        report["meta"]["ptxas"] = {
            f"sm_{arch}": subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
            .splitlines()[-1]
            for arch, path in ptxas.items()
        }
        todo = jobs(args)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            rows = list(pool.map(compile_one, todo))
        report["compile"] = rows
        report["spills_in_selectable"] = [
            r for r in rows if r["selectable"] and ("error" in r or r["spill_stores"] or r["spill_loads"])
        ]
        text += [f"## Compile report (triton {triton.__version__}, {report['meta']['ptxas']})", "",
                 f"Assumptions: {report['meta']['compile_assumptions']}.", "", compile_table(rows), ""]
        bad = report["spills_in_selectable"]
        text.append(f"Selectable configs with spills or errors: {len(bad)} of {sum(r['selectable'] for r in rows)}.")
    if not args.no_predictions:
        lengths = [256, 512, 1024, 2048, 4096]
        rows = predictions(lengths, [1, 4, 8, 16], [1, 8])
        steps = step_aggregate(list(HARDWARE), lengths, [1, 8], 16)
        report["predictions"], report["step_aggregate"] = rows, steps
        text += ["", "## Predicted time per call (Mistral 7B heads: H=32, Hkv=8, d=128, bf16)", "",
                 "Assumptions: " + json.dumps(ASSUMPTIONS), "", prediction_table(rows, steps)]
    markdown = "\n".join(text) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "kernel_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / "kernel_report.md").write_text("# Thought-attention kernel report\n\n" + markdown)
    print(markdown)
    if report["spills_in_selectable"]:
        print(f"ERROR: {len(report['spills_in_selectable'])} selectable configs spill or fail to compile")
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["spills_in_selectable"] else 0)
