"""Fused Triton kernels of the thought-pass attention (DESIGN.md section 3), forward and backward.

Query row i of pass p attends to the base keys j <= i that are not padding and to the thought keys of passes
1..p at the same position i, with one softmax (`thought_attention_reference.py` spells it out in PyTorch).

Forward (`_fwd_kernel`, one program per (query head, block of BLOCK_M rows, batch)):
    online softmax over the causal base blocks (off-diagonal blocks unmasked, diagonal blocks masked), then p
    rank-1 updates, one per thought pass (a row-wise dot product q_i . kt_s[i], no tl.dot), and one LSE per row.
Backward, with Delta_i = rowsum(dO_i * O_i) and P = exp(S - LSE) from the combined LSE:
    `_bwd_dq_kernel`: Delta, dQ over the causal base blocks, then the thought terms of every pass, row by row:
        p_is = exp(t_is - lse_i), ds_is = p_is (dO_i . vt_s[i] - Delta_i), dQ_i += scale * ds_is * kt_s[i];
        p_is and ds_is are kept in fp32 scratch (B, H, p, L).
    `_bwd_dkv_kernel`: the causal FlashAttention dK/dV of the base block, looping over the query heads of the
        GQA group (no repeat of K/V, no atomics).
    `_bwd_thought_dkv_kernel`: dkt_s[i] = scale * sum_g ds_gis q_gi and dvt_s[i] = sum_g p_gis dO_gi over the
        query heads g of the group; every thought key belongs to one row, so no atomics either.

All dot products accumulate in fp32. Under TRITON_INTERPRET=1 (CPU) the operands of tl.dot are upcast to fp32,
because the interpreter multiplies raw bf16 bit patterns. On CUDA the block sizes are autotuned; the interpreter
uses one pinned config (autotuning needs a GPU).
"""

import contextlib
import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

INTERPRET = triton.knobs.runtime.interpret
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = math.log2(math.e)  # host side: scores are passed to the kernels pre-multiplied by scale * log2(e)
_LOG2E = tl.constexpr(1.4426950408889634)  # kernel side: natural-log LSE <-> base-2 exponent domain
_LN2 = tl.constexpr(0.6931471805599453)


def _configs(cuda: list[dict], interpret: dict) -> list[triton.Config]:
    """Autotuning candidates on CUDA; the single pinned config under the interpreter."""
    chosen = [interpret] if INTERPRET else cuda
    return [
        triton.Config({k: v for k, v in c.items() if k.isupper()}, num_warps=c["warps"], num_stages=c["stages"])
        for c in chosen
    ]


_FWD_CONFIGS = _configs(
    [
        dict(BLOCK_M=128, BLOCK_N=64, warps=8, stages=3),
        dict(BLOCK_M=128, BLOCK_N=64, warps=4, stages=3),
        dict(BLOCK_M=128, BLOCK_N=128, warps=8, stages=2),
        dict(BLOCK_M=64, BLOCK_N=64, warps=4, stages=3),
        dict(BLOCK_M=64, BLOCK_N=32, warps=4, stages=4),
        dict(BLOCK_M=64, BLOCK_N=64, warps=8, stages=3),
        dict(BLOCK_M=32, BLOCK_N=32, warps=4, stages=3),
    ],
    dict(BLOCK_M=32, BLOCK_N=16, warps=4, stages=1),
)
_DQ_CONFIGS = _configs(
    [
        dict(BLOCK_M=128, BLOCK_N=64, warps=8, stages=2),
        dict(BLOCK_M=64, BLOCK_N=64, warps=4, stages=3),
        dict(BLOCK_M=128, BLOCK_N=32, warps=8, stages=3),
        dict(BLOCK_M=64, BLOCK_N=32, warps=4, stages=3),
    ],
    dict(BLOCK_M=32, BLOCK_N=16, warps=4, stages=1),
)
_DKV_CONFIGS = _configs(
    [
        dict(BLOCK_M=32, BLOCK_N=128, warps=8, stages=2),
        dict(BLOCK_M=64, BLOCK_N=128, warps=8, stages=2),
        dict(BLOCK_M=32, BLOCK_N=64, warps=4, stages=3),
        dict(BLOCK_M=64, BLOCK_N=64, warps=4, stages=3),
    ],
    dict(BLOCK_M=16, BLOCK_N=32, warps=4, stages=1),
)
_THOUGHT_DKV_CONFIGS = _configs(  # (BLOCK_R, BLOCK_P, HEAD_DIM) fp32 accumulators: these fit in registers at d=128
    [
        dict(BLOCK_R=8, BLOCK_P=4, warps=4, stages=1),
        dict(BLOCK_R=4, BLOCK_P=4, warps=4, stages=1),
        dict(BLOCK_R=16, BLOCK_P=2, warps=8, stages=1),
        dict(BLOCK_R=8, BLOCK_P=8, warps=8, stages=1),
    ],
    dict(BLOCK_R=16, BLOCK_P=4, warps=4, stages=1),
)


# ------------------------------------------------------------------------------------------------------ forward


@triton.jit
def _fwd_base_blocks(
    acc, l_i, m_i, q, K, V, MASK, stride_kl, stride_vl, rows, lo, hi, seq_len, qk_scale,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) (base-2 scores) with the base keys lo..hi of one query block."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < seq_len
        k = tl.load(K + cols[:, None] * stride_kl + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + cols[:, None] * stride_vl + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        visible = col_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None])
        if HAS_MASK:
            visible = visible & (tl.load(MASK + cols, mask=col_ok, other=0) != 0)[None, :]
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_FWD_CONFIGS, key=["seq_len", "n_passes", "HEAD_DIM"])
@triton.jit
def _fwd_kernel(
    Q, KB, VB, KT, VT, MASK, O, LSE,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_tkb, stride_tkh, stride_tkp, stride_tkl,
    stride_tvb, stride_tvh, stride_tvp, stride_tvl,
    stride_mb,
    n_heads, n_groups, seq_len, n_passes, qk_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head = tl.program_id(0)
    block_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest causal rows first
    batch = tl.program_id(2)
    kv_head = head // n_groups
    start_m = block_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    K = KB + batch * stride_kb + kv_head * stride_kh
    V = VB + batch * stride_vb + kv_head * stride_vh
    MASK = MASK + batch * stride_mb

    # A finite start keeps exp2(m_i - m_new) defined for rows whose first blocks are all padding.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc, l_i, m_i = _fwd_base_blocks(
        acc, l_i, m_i, q, K, V, MASK, stride_kl, stride_vl, rows, 0, start_m, seq_len, qk_scale,
        False, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )
    acc, l_i, m_i = _fwd_base_blocks(
        acc, l_i, m_i, q, K, V, MASK, stride_kl, stride_vl, rows, start_m, tl.minimum(start_m + BLOCK_M, seq_len),
        seq_len, qk_scale, True, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )

    # Thought passes: one same-position key per pass and row, folded in as rank-1 updates.
    qf = q.to(tl.float32)
    kt_ptrs = KT + batch * stride_tkb + kv_head * stride_tkh + rows[:, None] * stride_tkl + offs_d[None, :]
    vt_ptrs = VT + batch * stride_tvb + kv_head * stride_tvh + rows[:, None] * stride_tvl + offs_d[None, :]
    for s in range(0, n_passes):
        kt = tl.load(kt_ptrs + s * stride_tkp, mask=row_ok[:, None], other=0.0).to(tl.float32)
        vt = tl.load(vt_ptrs + s * stride_tvp, mask=row_ok[:, None], other=0.0).to(tl.float32)
        score = tl.sum(qf * kt, 1) * qk_scale
        m_new = tl.maximum(m_i, score)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(score - m_new)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * vt
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptrs = O + batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    lse = (m_i + tl.math.log2(l_i)) * _LN2
    tl.store(LSE + (batch * n_heads + head) * seq_len + rows, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------------- backward


@triton.jit
def _dq_base_blocks(
    dq, q, do, lse2, delta, K, V, MASK, stride_kl, stride_vl, rows, lo, hi, seq_len, qk_scale,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dq += dS @ K over the base keys lo..hi of one query block (dS w.r.t. the scaled scores)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < seq_len
        k = tl.load(K + cols[:, None] * stride_kl + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + cols[:, None] * stride_vl + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(qk - lse2[:, None])
        visible = col_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None])
        if HAS_MASK:
            visible = visible & (tl.load(MASK + cols, mask=col_ok, other=0) != 0)[None, :]
        p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=_DQ_CONFIGS, key=["seq_len", "n_passes", "HEAD_DIM"])
@triton.jit
def _bwd_dq_kernel(
    Q, KB, VB, KT, VT, MASK, O, DO, LSE, DELTA, PS, DS, DQ,
    stride_qb, stride_qh, stride_ql,
    stride_dob, stride_doh, stride_dol,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_tkb, stride_tkh, stride_tkp, stride_tkl,
    stride_tvb, stride_tvh, stride_tvp, stride_tvl,
    stride_mb,
    n_heads, n_groups, seq_len, n_passes, scaling, qk_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head = tl.program_id(0)
    block_m = tl.num_programs(1) - 1 - tl.program_id(1)
    batch = tl.program_id(2)
    kv_head = head // n_groups
    start_m = block_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    offs_d = tl.arange(0, HEAD_DIM)

    q_offs = batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + offs_d[None, :]
    do_offs = batch * stride_dob + head * stride_doh + rows[:, None] * stride_dol + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + do_offs, mask=row_ok[:, None], other=0.0)
    o = tl.load(O + q_offs, mask=row_ok[:, None], other=0.0)
    row_vec = (batch * n_heads + head) * seq_len + rows
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + row_vec, delta, mask=row_ok)
    lse2 = tl.load(LSE + row_vec, mask=row_ok, other=0.0) * _LOG2E
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)

    K = KB + batch * stride_kb + kv_head * stride_kh
    V = VB + batch * stride_vb + kv_head * stride_vh
    MASK = MASK + batch * stride_mb
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _dq_base_blocks(
        dq, q, do, lse2, delta, K, V, MASK, stride_kl, stride_vl, rows, 0, start_m, seq_len, qk_scale,
        False, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )
    dq = _dq_base_blocks(
        dq, q, do, lse2, delta, K, V, MASK, stride_kl, stride_vl, rows, start_m,
        tl.minimum(start_m + BLOCK_M, seq_len), seq_len, qk_scale, True, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST,
        DOT_PRECISION,
    )

    qf = q.to(tl.float32)
    dof = do.to(tl.float32)
    kt_ptrs = KT + batch * stride_tkb + kv_head * stride_tkh + rows[:, None] * stride_tkl + offs_d[None, :]
    vt_ptrs = VT + batch * stride_tvb + kv_head * stride_tvh + rows[:, None] * stride_tvl + offs_d[None, :]
    scratch = (batch * n_heads + head) * n_passes * seq_len + rows
    for s in range(0, n_passes):
        kt = tl.load(kt_ptrs + s * stride_tkp, mask=row_ok[:, None], other=0.0).to(tl.float32)
        vt = tl.load(vt_ptrs + s * stride_tvp, mask=row_ok[:, None], other=0.0).to(tl.float32)
        p = tl.math.exp2(tl.sum(qf * kt, 1) * qk_scale - lse2)
        ds = p * (tl.sum(dof * vt, 1) - delta)
        dq += ds[:, None] * kt
        tl.store(PS + scratch + s * seq_len, p, mask=row_ok)
        tl.store(DS + scratch + s * seq_len, ds, mask=row_ok)

    tl.store(DQ + q_offs, (dq * scaling).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dkv_query_blocks(
    dk, dv, k, v, key_real, cols, Q, DO, LSE, DELTA, stride_ql, stride_dol, lo, hi, seq_len, qk_scale,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dv += P^T dO and dk += dS^T Q for one base key block over the query rows lo..hi of one query head."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < seq_len
        q = tl.load(Q + rows[:, None] * stride_ql + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + rows[:, None] * stride_dol + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse2 = tl.load(LSE + rows, mask=row_ok, other=0.0) * _LOG2E
        delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.math.exp2(qk_t - lse2[None, :])
        if CAUSAL:
            p_t = tl.where(rows[None, :] >= cols[:, None], p_t, 0.0)
        if HAS_MASK:
            p_t = tl.where(key_real[:, None], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=_DKV_CONFIGS, key=["seq_len", "n_groups", "HEAD_DIM"])
@triton.jit
def _bwd_dkv_kernel(
    Q, KB, VB, MASK, DO, LSE, DELTA, DKB, DVB,
    stride_qb, stride_qh, stride_ql,
    stride_dob, stride_doh, stride_dol,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_mb,
    n_heads, n_groups, seq_len, scaling, qk_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    kv_head = tl.program_id(0)
    start_n = tl.program_id(1) * BLOCK_N
    batch = tl.program_id(2)
    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < seq_len
    offs_d = tl.arange(0, HEAD_DIM)

    k_offs = batch * stride_kb + kv_head * stride_kh + cols[:, None] * stride_kl + offs_d[None, :]
    v_offs = batch * stride_vb + kv_head * stride_vh + cols[:, None] * stride_vl + offs_d[None, :]
    k = tl.load(KB + k_offs, mask=col_ok[:, None], other=0.0)
    v = tl.load(VB + v_offs, mask=col_ok[:, None], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    key_real = col_ok
    if HAS_MASK:
        key_real = key_real & (tl.load(MASK + batch * stride_mb + cols, mask=col_ok, other=0) != 0)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for g in range(0, n_groups):
        head = kv_head * n_groups + g
        Q_h = Q + batch * stride_qb + head * stride_qh
        DO_h = DO + batch * stride_dob + head * stride_doh
        LSE_h = LSE + (batch * n_heads + head) * seq_len
        DELTA_h = DELTA + (batch * n_heads + head) * seq_len
        dk, dv = _dkv_query_blocks(
            dk, dv, k, v, key_real, cols, Q_h, DO_h, LSE_h, DELTA_h, stride_ql, stride_dol, start_n,
            tl.minimum(start_n + BLOCK_N, seq_len), seq_len, qk_scale, True, HAS_MASK, BLOCK_M, HEAD_DIM, UPCAST,
            DOT_PRECISION,
        )
        dk, dv = _dkv_query_blocks(
            dk, dv, k, v, key_real, cols, Q_h, DO_h, LSE_h, DELTA_h, stride_ql, stride_dol, start_n + BLOCK_N,
            seq_len, seq_len, qk_scale, False, HAS_MASK, BLOCK_M, HEAD_DIM, UPCAST, DOT_PRECISION,
        )

    tl.store(DKB + k_offs, (dk * scaling).to(DKB.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DVB + v_offs, dv.to(DVB.dtype.element_ty), mask=col_ok[:, None])


@triton.autotune(configs=_THOUGHT_DKV_CONFIGS, key=["n_passes", "n_groups", "HEAD_DIM"])
@triton.jit
def _bwd_thought_dkv_kernel(
    Q, DO, PS, DS, DKT, DVT,
    stride_qb, stride_qh, stride_ql,
    stride_dob, stride_doh, stride_dol,
    stride_tkb, stride_tkh, stride_tkp, stride_tkl,
    stride_tvb, stride_tvh, stride_tvp, stride_tvl,
    n_heads, n_kv_heads, n_groups, seq_len, n_passes, scaling,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    passes = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    batch = tl.program_id(2) // n_kv_heads
    kv_head = tl.program_id(2) % n_kv_heads
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < seq_len
    tile_ok = row_ok[:, None] & (passes < n_passes)[None, :]  # (BLOCK_R, BLOCK_P)

    dkt = tl.zeros([BLOCK_R, BLOCK_P, HEAD_DIM], dtype=tl.float32)
    dvt = tl.zeros([BLOCK_R, BLOCK_P, HEAD_DIM], dtype=tl.float32)
    for g in range(0, n_groups):
        head = kv_head * n_groups + g
        q_ptrs = Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + offs_d[None, :]
        do_ptrs = DO + batch * stride_dob + head * stride_doh + rows[:, None] * stride_dol + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        scratch = ((batch * n_heads + head) * n_passes + passes[None, :]) * seq_len + rows[:, None]
        p = tl.load(PS + scratch, mask=tile_ok, other=0.0)
        ds = tl.load(DS + scratch, mask=tile_ok, other=0.0)
        dkt += ds[:, :, None] * q[:, None, :]
        dvt += p[:, :, None] * do[:, None, :]

    store_ok = tile_ok[:, :, None]
    dkt_ptrs = (
        DKT + batch * stride_tkb + kv_head * stride_tkh + passes[None, :, None] * stride_tkp
        + rows[:, None, None] * stride_tkl + offs_d[None, None, :]
    )
    dvt_ptrs = (
        DVT + batch * stride_tvb + kv_head * stride_tvh + passes[None, :, None] * stride_tvp
        + rows[:, None, None] * stride_tvl + offs_d[None, None, :]
    )
    tl.store(dkt_ptrs, (dkt * scaling).to(DKT.dtype.element_ty), mask=store_ok)
    tl.store(dvt_ptrs, dvt.to(DVT.dtype.element_ty), mask=store_ok)


# ------------------------------------------------------------------------------------------------ host wrappers


def _check_inputs(q, kb, vb, kt, vt, key_padding_mask) -> None:
    """Raise a ValueError/RuntimeError naming the first unsupported input."""
    if q.dim() != 4 or kb.dim() != 4 or kt.dim() != 5:
        raise ValueError(
            "thought_attention expects q (B, H, L, d), kb/vb (B, Hkv, L, d) and kt/vt (B, Hkv, p, L, d); got "
            f"{tuple(q.shape)}, {tuple(kb.shape)}, {tuple(kt.shape)}"
        )
    batch, heads, length, head_dim = q.shape
    kv_heads = kb.shape[1]
    n_passes = kt.shape[2]
    if kb.shape != (batch, kv_heads, length, head_dim) or vb.shape != kb.shape:
        raise ValueError(f"kb and vb must be (B, Hkv, L, d) = {(batch, kv_heads, length, head_dim)}; got "
                         f"{tuple(kb.shape)} and {tuple(vb.shape)}")
    if kt.shape != (batch, kv_heads, n_passes, length, head_dim) or vt.shape != kt.shape:
        raise ValueError(f"kt and vt must be (B, Hkv, p, L, d) = {(batch, kv_heads, n_passes, length, head_dim)}; "
                         f"got {tuple(kt.shape)} and {tuple(vt.shape)}")
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
    if n_passes < 1:
        raise ValueError("thought_attention needs at least one thought pass (kt.shape[2] >= 1)")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {head_dim} is not supported by the Triton kernel; supported: {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in SUPPORTED_DTYPES or any(t.dtype != q.dtype for t in (kb, vb, kt, vt)):
        raise ValueError(
            f"q, kb, vb, kt, vt must share one dtype among {SUPPORTED_DTYPES}; got "
            f"{[str(t.dtype) for t in (q, kb, vb, kt, vt)]}"
        )
    if key_padding_mask is not None and (key_padding_mask.shape != (batch, length)
                                         or key_padding_mask.dtype != torch.bool):
        raise ValueError(f"key_padding_mask must be a bool tensor of shape (B, L) = {(batch, length)}; got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    devices = {t.device for t in (q, kb, vb, kt, vt)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device; got {devices}")
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"the Triton thought attention needs CUDA tensors (got {q.device}); on CPU set TRITON_INTERPRET=1 "
            "before triton is first imported, or use attention_impl='torch'"
        )
    if INTERPRET and not isinstance(tl.zeros, InterpretedFunction):
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton.language had been imported, so triton's own library is "
            "compiled-mode and cannot run in the interpreter; set it before the first import of triton "
            "(transformers and quietstar import it)"
        )


def _inner_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when its last dim is contiguous and empty_like(x) would share its strides, else a contiguous copy."""
    if x.stride(-1) == 1 and torch.empty_like(x, device="meta").stride() == x.stride():
        return x
    return x.contiguous()


def _kernel_flags(dtype: torch.dtype) -> dict:
    """Constexpr flags shared by the kernels: upcast dots under the interpreter, IEEE fp32 dots for fp32."""
    return dict(UPCAST=INTERPRET, DOT_PRECISION="ieee" if dtype == torch.float32 else None)


def _device_guard(x: torch.Tensor):
    """Launch on x's GPU (kernels launch on the current CUDA device); nothing to do on CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def thought_attention_forward(q, kb, vb, kt, vt, key_padding_mask, scaling):
    """Forward kernel launch.

    Args:
        q: (B, H, L, d); kb, vb: (B, Hkv, L, d); kt, vt: (B, Hkv, p, L, d); one dtype, last dim contiguous.
        key_padding_mask: (B, L) bool (True = real token) or None.
        scaling: score scale.

    Returns:
        out: (B, H, L, d) with q's strides; lse: (B, H, L) fp32, natural log.
    """
    batch, heads, length, head_dim = q.shape
    kv_heads, n_passes = kb.shape[1], kt.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, length, device=q.device, dtype=torch.float32)
    mask = key_padding_mask if key_padding_mask is not None else lse  # a dummy pointer when HAS_MASK is off
    mask_stride = key_padding_mask.stride(0) if key_padding_mask is not None else 0

    def grid(meta):
        return heads, triton.cdiv(length, meta["BLOCK_M"]), batch

    with _device_guard(q):
        _fwd_kernel[grid](
            q, kb, vb, kt, vt, mask, out, lse,
            q.stride(0), q.stride(1), q.stride(2),
            kb.stride(0), kb.stride(1), kb.stride(2),
            vb.stride(0), vb.stride(1), vb.stride(2),
            kt.stride(0), kt.stride(1), kt.stride(2), kt.stride(3),
            vt.stride(0), vt.stride(1), vt.stride(2), vt.stride(3),
            mask_stride,
            heads, heads // kv_heads, length, n_passes, scaling * LOG2E,
            HEAD_DIM=head_dim, HAS_MASK=key_padding_mask is not None, **_kernel_flags(q.dtype),
        )
    return out, lse


def thought_attention_backward(grad_out, q, kb, vb, kt, vt, key_padding_mask, out, lse, scaling):
    """Backward kernel launches: dQ (+ Delta and the thought-score scratch), base dK/dV, thought dK/dV.

    Args:
        grad_out: (B, H, L, d) gradient of `out`; the other arguments as saved by the forward.

    Returns:
        dq (B, H, L, d), dkb and dvb (B, Hkv, L, d), dkt and dvt (B, Hkv, p, L, d), in the input dtype.
    """
    batch, heads, length, head_dim = q.shape
    kv_heads, n_passes = kb.shape[1], kt.shape[2]
    groups = heads // kv_heads
    do = _inner_contiguous(grad_out)
    dq, dkb, dvb = torch.empty_like(q), torch.empty_like(kb), torch.empty_like(vb)
    dkt, dvt = torch.empty_like(kt), torch.empty_like(vt)
    delta = torch.empty_like(lse)
    probs = torch.empty(batch, heads, n_passes, length, device=q.device, dtype=torch.float32)
    dscores = torch.empty_like(probs)
    has_mask = key_padding_mask is not None
    mask = key_padding_mask if has_mask else lse
    mask_stride = key_padding_mask.stride(0) if has_mask else 0
    flags = _kernel_flags(q.dtype)

    def dq_grid(meta):
        return heads, triton.cdiv(length, meta["BLOCK_M"]), batch

    def dkv_grid(meta):
        return kv_heads, triton.cdiv(length, meta["BLOCK_N"]), batch

    def thought_grid(meta):
        return triton.cdiv(n_passes, meta["BLOCK_P"]), triton.cdiv(length, meta["BLOCK_R"]), batch * kv_heads

    with _device_guard(q):
        _bwd_dq_kernel[dq_grid](
            q, kb, vb, kt, vt, mask, out, do, lse, delta, probs, dscores, dq,
            q.stride(0), q.stride(1), q.stride(2),
            do.stride(0), do.stride(1), do.stride(2),
            kb.stride(0), kb.stride(1), kb.stride(2),
            vb.stride(0), vb.stride(1), vb.stride(2),
            kt.stride(0), kt.stride(1), kt.stride(2), kt.stride(3),
            vt.stride(0), vt.stride(1), vt.stride(2), vt.stride(3),
            mask_stride,
            heads, groups, length, n_passes, scaling, scaling * LOG2E,
            HEAD_DIM=head_dim, HAS_MASK=has_mask, **flags,
        )
        _bwd_dkv_kernel[dkv_grid](
            q, kb, vb, mask, do, lse, delta, dkb, dvb,
            q.stride(0), q.stride(1), q.stride(2),
            do.stride(0), do.stride(1), do.stride(2),
            kb.stride(0), kb.stride(1), kb.stride(2),
            vb.stride(0), vb.stride(1), vb.stride(2),
            mask_stride,
            heads, groups, length, scaling, scaling * LOG2E,
            HEAD_DIM=head_dim, HAS_MASK=has_mask, **flags,
        )
        _bwd_thought_dkv_kernel[thought_grid](
            q, do, probs, dscores, dkt, dvt,
            q.stride(0), q.stride(1), q.stride(2),
            do.stride(0), do.stride(1), do.stride(2),
            kt.stride(0), kt.stride(1), kt.stride(2), kt.stride(3),
            vt.stride(0), vt.stride(1), vt.stride(2), vt.stride(3),
            heads, kv_heads, groups, length, n_passes, scaling,
            HEAD_DIM=head_dim,
        )
    return dq, dkb, dvb, dkt, dvt


class ThoughtAttentionFunction(torch.autograd.Function):
    """Thought-pass attention with the fused Triton forward and backward.

    forward(q, kb, vb, kt, vt, key_padding_mask, scaling) -> out
        q: (B, H, L, d) queries of thought pass p
        kb, vb: (B, Hkv, L, d) keys/values of the base pass (H = G * Hkv, GQA handled inside)
        kt, vt: (B, Hkv, p, L, d) keys/values of passes 1..p
        key_padding_mask: (B, L) bool, True for real tokens, or None
        scaling: float score scale
        out: (B, H, L, d); row i is softmax over {base keys j <= i, not padding} U {kt_1[i], ..., kt_p[i]} of V.

    Saved for backward: the inputs, `out` and the (B, H, L) fp32 log-sum-exp; never an L x L score matrix.
    Gradients: q, kb, vb, kt, vt (the mask and the scale get none).
    """

    @staticmethod
    def forward(ctx, q, kb, vb, kt, vt, key_padding_mask, scaling):
        out, lse = thought_attention_forward(q, kb, vb, kt, vt, key_padding_mask, scaling)
        ctx.save_for_backward(q, kb, vb, kt, vt, key_padding_mask, out, lse)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, kb, vb, kt, vt, key_padding_mask, out, lse = ctx.saved_tensors
        grads = thought_attention_backward(grad_out, q, kb, vb, kt, vt, key_padding_mask, out, lse, ctx.scaling)
        return *grads, None, None


def thought_attention(
    q: torch.Tensor,
    kb: torch.Tensor,
    vb: torch.Tensor,
    kt: torch.Tensor,
    vt: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scaling: float | None = None,
) -> torch.Tensor:
    """Fused thought-pass attention; returns (B, H, L, d). Shapes as in `ThoughtAttentionFunction`.

    Inputs must share one dtype (fp16, bf16 or fp32; fp32 accumulation throughout) and live on a CUDA device,
    or anywhere under TRITON_INTERPRET=1. Head dims 16, 32, 64 and 128 are supported; any L, p >= 1 and B.
    Inputs whose last dim is not contiguous are copied; other layouts (e.g. (B, L, H, d) transposed views)
    are used in place.
    """
    _check_inputs(q, kb, vb, kt, vt, key_padding_mask)
    if scaling is None:
        scaling = 1.0 / math.sqrt(q.shape[-1])
    q, kb, vb, kt, vt = (_inner_contiguous(t) for t in (q, kb, vb, kt, vt))
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.contiguous()
    return ThoughtAttentionFunction.apply(q, kb, vb, kt, vt, key_padding_mask, float(scaling))


__all__ = ["ThoughtAttentionFunction", "thought_attention", "thought_attention_backward", "thought_attention_forward"]
