"""Choosing launch configs for the thought-attention kernels of `triton.py`: candidate tables, pruners, autotune keys
and the dK/dV grid split.

Autotuning runs on CUDA only; under TRITON_INTERPRET=1 every kernel has one pinned config. The tuning is keyed by
the next power of two of L and of p (`buckets`), so padded batches of nearby widths share one, and is cached on disk
(`cache_results=True`). The candidates are pruned by head dim to those that compile without register spills on
sm_80 and sm_90 (`benchmarks/kernel_report.py` checks this ahead of time, without a GPU).
"""

import triton

INTERPRET = triton.knobs.runtime.interpret
# Aim for at least this many dK/dV programs (about 2 per SM of an H100) before splitting the query heads.
DKV_TARGET_PROGRAMS = 264


def _config(c: dict) -> triton.Config:
    return triton.Config({k: v for k, v in c.items() if k.isupper()}, num_warps=c["warps"], num_stages=c["stages"])


def config_key(config: triton.Config) -> tuple:
    """Hashable identity of a config: (sorted kwargs, warps, stages)."""
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages


def _configs(cuda: list[dict], interpret: dict) -> tuple[list[triton.Config], dict]:
    """(autotuning candidates, {(variant, head dim): keys of the configs spill-free there}) on CUDA, for head dims
    64 and 128 and variant "all" or "deterministic"; the single pinned config under the interpreter."""
    if INTERPRET:
        return [_config(interpret)], {}
    spill_free = {}
    for head_dim in (64, 128):
        marked = [(c.get(f"d{head_dim}"), config_key(_config(c))) for c in cuda]
        spill_free[("all", head_dim)] = frozenset(key for mark, key in marked if mark is True)
        spill_free[("deterministic", head_dim)] = frozenset(key for mark, key in marked if mark)
    return [_config(c) for c in cuda], spill_free


# Candidate lists. At d = 64 and d = 128 the prune functions keep the configs marked `d64` / `d128`: those that
# compile without register spills on both sm_80 and sm_90 for bf16 and fp16 (measured by
# benchmarks/kernel_report.py; "deterministic": only the dK/dV variant without the fused atomic dQ). Smaller head
# dims keep every candidate.
FWD_CONFIGS, _FWD_SPILL_FREE = _configs(
    [
        dict(BLOCK_M=128, BLOCK_N=64, THOUGHT_STAGES=2, warps=8, stages=3, d64=True),
        dict(BLOCK_M=128, BLOCK_N=32, THOUGHT_STAGES=2, warps=8, stages=3, d64=True),
        dict(BLOCK_M=128, BLOCK_N=64, THOUGHT_STAGES=2, warps=4, stages=3),
        dict(BLOCK_M=64, BLOCK_N=64, THOUGHT_STAGES=2, warps=4, stages=3, d64=True),
        dict(BLOCK_M=64, BLOCK_N=32, THOUGHT_STAGES=1, warps=4, stages=3, d64=True),
        dict(BLOCK_M=64, BLOCK_N=64, THOUGHT_STAGES=2, warps=8, stages=3, d64=True, d128=True),
        dict(BLOCK_M=64, BLOCK_N=32, THOUGHT_STAGES=2, warps=8, stages=4, d64=True, d128=True),
    ],
    dict(BLOCK_M=32, BLOCK_N=16, THOUGHT_STAGES=1, warps=4, stages=1),
)
DQ_CONFIGS, _DQ_SPILL_FREE = _configs(
    [
        dict(BLOCK_M=128, BLOCK_N=64, warps=8, stages=2),
        dict(BLOCK_M=128, BLOCK_N=32, warps=8, stages=3, d64=True),
        dict(BLOCK_M=64, BLOCK_N=64, warps=4, stages=3),
        dict(BLOCK_M=64, BLOCK_N=32, warps=4, stages=3, d64=True, d128=True),
        dict(BLOCK_M=64, BLOCK_N=64, warps=8, stages=2, d64=True),
    ],
    dict(BLOCK_M=32, BLOCK_N=16, warps=4, stages=1),
)
DKV_CONFIGS, _DKV_SPILL_FREE = _configs(
    [
        dict(BLOCK_M=32, BLOCK_N=128, warps=8, stages=2, d64=True),
        dict(BLOCK_M=16, BLOCK_N=128, warps=8, stages=2, d64=True, d128="deterministic"),
        dict(BLOCK_M=64, BLOCK_N=128, warps=8, stages=2),
        dict(BLOCK_M=32, BLOCK_N=64, warps=8, stages=2, d64=True, d128=True),
        dict(BLOCK_M=32, BLOCK_N=64, warps=4, stages=3),
        dict(BLOCK_M=16, BLOCK_N=64, warps=4, stages=2, d64=True, d128="deterministic"),
        dict(BLOCK_M=64, BLOCK_N=64, warps=4, stages=3),
    ],
    dict(BLOCK_M=16, BLOCK_N=32, warps=4, stages=1),
)
THOUGHT_BWD_CONFIGS, _THOUGHT_BWD_SPILL_FREE = _configs(
    [
        dict(BLOCK_R=8, warps=4, stages=2, d64=True, d128=True),
        dict(BLOCK_R=16, warps=4, stages=2, d64=True),
        dict(BLOCK_R=16, warps=8, stages=2, d64=True, d128=True),
        dict(BLOCK_R=32, warps=8, stages=2, d64=True),
    ],
    dict(BLOCK_R=16, warps=4, stages=1),
)


def _prune(configs, spill_free, head_dim, variant="all"):
    """The configs spill-free at this head dim (all below 64); the interpreter's single config as is."""
    if INTERPRET or head_dim < 64:
        return list(configs)
    return [c for c in configs if config_key(c) in spill_free[(variant, head_dim)]]


def _head_dim(named_args, kwargs) -> int:
    return kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))


def prune_fwd(configs, named_args, **kwargs):
    return _prune(configs, _FWD_SPILL_FREE, _head_dim(named_args, kwargs))


def prune_dq(configs, named_args, **kwargs):
    return _prune(configs, _DQ_SPILL_FREE, _head_dim(named_args, kwargs))


def prune_dkv(configs, named_args, **kwargs):
    fused = kwargs.get("FUSED_DQ", named_args.get("FUSED_DQ"))
    return _prune(configs, _DKV_SPILL_FREE, _head_dim(named_args, kwargs), "all" if fused else "deterministic")


def prune_thought_bwd(configs, named_args, **kwargs):
    """Also bounds the (G, BLOCK_R, d) fp32 dQ accumulator, which grows with G, to 64 values per thread."""
    groups = triton.next_power_of_2(kwargs.get("GROUPS", named_args.get("GROUPS")))
    return [
        c for c in _prune(configs, _THOUGHT_BWD_SPILL_FREE, _head_dim(named_args, kwargs))
        if INTERPRET or c.kwargs["BLOCK_R"] * groups * _head_dim(named_args, kwargs) // (32 * c.num_warps) <= 64
    ] or [_config(dict(BLOCK_R=max(1, _floor_power_of_2(64 * 256 // (groups * _head_dim(named_args, kwargs)))),
                       warps=8, stages=2))]


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


PRUNERS = {"fwd": prune_fwd, "dq": prune_dq, "dkv": prune_dkv, "thought_bwd": prune_thought_bwd}
CONFIGS = {"fwd": FWD_CONFIGS, "dq": DQ_CONFIGS, "dkv": DKV_CONFIGS, "thought_bwd": THOUGHT_BWD_CONFIGS}


def buckets(length: int, n_passes: int) -> dict:
    """Autotune key values: next powers of two of L and p, so padded batches of nearby widths share a tuning."""
    return dict(l_bucket=triton.next_power_of_2(length), p_bucket=triton.next_power_of_2(n_passes))


def dkv_splits(batch: int, kv_heads: int, groups: int, length: int, block_n: int = 64) -> int:
    """Query-head splits of the dK/dV grid: the smallest divisor of G giving ~DKV_TARGET_PROGRAMS programs.

    With fewer than ~2 programs per SM (B = 1) the G query heads of a KV head are split over programs that write
    fp32 partial dK/dV, summed afterwards in a fixed order.
    """
    programs = batch * kv_heads * triton.cdiv(length, block_n)
    splits = 1
    while splits < groups and programs * splits < DKV_TARGET_PROGRAMS:
        splits += 1
        while groups % splits:
            splits += 1
    return splits
