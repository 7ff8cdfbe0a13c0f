"""Fused Triton kernels of the thought-pass attention, forward and backward.

Query row i of pass p attends to the base keys j <= i that are not padding and to the thought keys of passes
1..p at the same position i, with one softmax (`naive.py` spells it out densely in PyTorch: the oracle).

Interface. The thought keys and values arrive as Python sequences of p tensors (pass 1 first, pass p last), each
(B, Hkv, L, d), exactly as the passes produced them: no stacked (B, Hkv, p, L, d) copy is ever made. The kernels
read them through a pointer table, an int64 tensor holding one `data_ptr()` per pass that the kernel loads and
casts to a typed pointer; all passes must share one shape and one set of strides (checked on the host). The
thought gradients are written the same way, straight into each pass's own gradient tensor.

Notation per program: R rows (BLOCK_M / BLOCK_N / BLOCK_R), d the head dim, G = H / Hkv query heads per KV head,
p passes, e the element size. "mma" counts tensor-core matrix products of one (query block, key block) tile.

Forward, `_fwd_kernel`, one program per (query head, block of BLOCK_M rows, batch), heads fastest so that the G
programs sharing a KV head read its thought rows from L2:
    1. thought loop first: for s = 1..p, load the rows k_s, v_s of pass s (software-pipelined by
       `tl.range(num_stages=2)`),
       s_is = q_i . k_s[i] (row-wise, CUDA cores), online-softmax update of (m, l, acc). Running it before the
       base loop keeps no fp32 copy of q alive across the base loop, and m starts finite, so rows whose base
       keys are all padding need no guard.
    2. causal base loop: off-diagonal key blocks unmasked, then the diagonal block masked; 2 mma per tile
       (S = Q K^T, acc += P V): 4 R_m R_n d FLOPs for 2 R_n d e bytes (the K and V tiles), 2 R_m / e FLOP/B
       (64 at R_m = 64, bf16) of L2 traffic; from HBM K/V are read once per KV head.
    3. out = acc / l and one natural-log LSE per row.
    Per (row, head) the thought loop costs 4 p d FLOPs for 4 p d e / G bytes of HBM (k_s, v_s shared by the group):
    memory-bound by far.
Backward, with Delta_i = rowsum(dO_i * O_i) and P = exp(S - LSE) from the combined LSE, three launches:
    `_bwd_thought_kernel`, one program per (row block of BLOCK_R rows, KV head, batch), fused: it loads q, dO and
        O of all G query heads of the group once as (G, R, d) tiles, writes Delta, then loops over the passes:
        load the rows k_s, v_s of pass s; p_gs = exp(t_gs - lse_g), ds_gs = p_gs (dO_g . v_s - Delta_g);
        dk_s = scale sum_g ds_gs q_g, dv_s = sum_g p_gs dO_g, written straight to pass s's gradient tensors;
        dq_g += ds_gs k_s, kept in registers and stored once (fp32) as the thought part of dQ.
        Per pass and row: 10 G d FLOPs (CUDA cores) for 8 d e bytes of HBM (read k_s, v_s; write dk_s, dv_s):
        5 FLOP/B at G = 4, e = 2, far below the CUDA-core ridge (67 TFLOP/s / 3.35 TB/s = 20 FLOP/B).
        Thought keys need no atomics: each belongs to one row; GQA is reduced inside the program.
    `_bwd_dkv_kernel`, one program per (KV head x head split, key block of BLOCK_N, batch): the causal
        FlashAttention dK/dV over the query heads of its split of the group (no repeat of K/V). With fewer than
        ~2 programs per SM (B = 1), the G query heads are split over `n_splits` programs that write fp32
        partial dK/dV, summed afterwards in a fixed order (deterministic). When deterministic algorithms are
        off (torch.are_deterministic_algorithms_enabled()), it also adds dQ += scale dS K with fp32 atomics into
        the accumulator that already holds the thought part, so a tile costs 5 mma (S^T = K Q^T,
        dV += P^T dO, dP^T = V dO^T, dK += dS^T Q, dQ += dS K): 10 R_m R_n d FLOPs for 2 R_m d e bytes of q and
        dO plus 4 R_m d bytes of fp32 dQ reductions (resolved in L2), as FlashAttention-2 does; deterministic mode
        drops the fifth product here (8 R_m R_n d FLOPs per tile).
    `_bwd_dq_kernel`, deterministic mode only: dQ over the causal base blocks, starting from the thought part;
        3 mma per tile (S, dP, dQ += dS K), so a tile costs 7 mma over the two kernels (14 R_m R_n d FLOPs).
    Splitting the dK/dV grid over query heads keeps every tile's work; it adds 8 B d (Hkv L) fp32 bytes per
    split for the partial sums (`autotune.dkv_splits`), and gives B = 1, L = 2048 on Mistral 7B (8 KV heads,
    G = 4) twice the programs.
All matrix products accumulate in fp32. bf16/fp16 inputs use tensor cores. fp32 inputs on CUDA use tf32 products
and are slow: the tf32 path spills registers in the configs that are spill-free for bf16 (see the compile report),
so the model layer's dispatcher runs its `torch` implementation for fp32 on CUDA instead. Under
TRITON_INTERPRET=1 (CPU) the kernels run for every dtype; the operands of tl.dot are upcast to fp32 because the
interpreter multiplies raw bf16 bit patterns, and fp32 products are exact.

Offsets: batch (and split) offsets are int64; offsets inside one batch element are int32, and the host checks that
one batch element of every tensor spans fewer than 2^31 elements. Launch configs are
autotuned on CUDA from the tables of `autotune.py`.
"""

import contextlib
import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import autotune

INTERPRET = autotune.INTERPRET  # TRITON_INTERPRET as read when triton was first imported
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = math.log2(math.e)  # host side: scores are passed to the kernels pre-multiplied by scale * log2(e)
_LOG2E = tl.constexpr(1.4426950408889634)  # kernel side: natural-log LSE <-> base-2 exponent domain
_LN2 = tl.constexpr(0.6931471805599453)
INT32_LIMIT = 2**31


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


@triton.autotune(
    configs=autotune.FWD_CONFIGS,
    key=["l_bucket", "p_bucket", "HEAD_DIM", "HAS_MASK"],
    prune_configs_by={"early_config_prune": autotune.prune_fwd},
    cache_results=True,
)
@triton.jit
def _fwd_kernel(
    Q, BASE_KEY, BASE_VALUE, THOUGHT_KEY_PTRS, THOUGHT_VALUE_PTRS, MASK, O, LSE,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_tkb, stride_tkh, stride_tkl,
    stride_tvb, stride_tvh, stride_tvl,
    stride_mb,
    n_heads, n_groups, seq_len, n_passes, qk_scale, l_bucket, p_bucket,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, THOUGHT_STAGES: tl.constexpr,
):
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "the causal split needs BLOCK_M to be a multiple of BLOCK_N")
    head = tl.program_id(0)
    block_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest causal rows first
    batch = tl.program_id(2).to(tl.int64)
    kv_head = head // n_groups
    start_m = block_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    offs_d = tl.arange(0, HEAD_DIM)
    dtype = Q.dtype.element_ty

    q_offs = batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + offs_d[None, :]
    qf = tl.load(Q + q_offs, mask=row_ok[:, None], other=0.0).to(tl.float32)

    # Thought passes first: one same-position key per pass and row, folded in as rank-1 updates.
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    thought_key_offs = batch * stride_tkb + kv_head * stride_tkh + rows[:, None] * stride_tkl + offs_d[None, :]
    thought_value_offs = batch * stride_tvb + kv_head * stride_tvh + rows[:, None] * stride_tvl + offs_d[None, :]
    for s in tl.range(0, n_passes, num_stages=THOUGHT_STAGES):
        thought_key_ptr = tl.load(THOUGHT_KEY_PTRS + s).to(tl.pointer_type(dtype))
        thought_value_ptr = tl.load(THOUGHT_VALUE_PTRS + s).to(tl.pointer_type(dtype))
        thought_key = tl.load(thought_key_ptr + thought_key_offs, mask=row_ok[:, None], other=0.0)
        thought_value = tl.load(thought_value_ptr + thought_value_offs, mask=row_ok[:, None], other=0.0)
        score = tl.sum(qf * thought_key.to(tl.float32), 1) * qk_scale
        m_new = tl.maximum(m_i, score)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(score - m_new)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * thought_value.to(tl.float32)
        m_i = m_new

    # q again for the base loop (an L2 hit): no copy of it stays live across the thought loop in another layout
    q = tl.load(Q + q_offs, mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    K = BASE_KEY + batch * stride_kb + kv_head * stride_kh
    V = BASE_VALUE + batch * stride_vb + kv_head * stride_vh
    MASK = MASK + batch * stride_mb
    acc, l_i, m_i = _fwd_base_blocks(
        acc, l_i, m_i, q, K, V, MASK, stride_kl, stride_vl, rows, 0, start_m, seq_len, qk_scale,
        False, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )
    acc, l_i, m_i = _fwd_base_blocks(
        acc, l_i, m_i, q, K, V, MASK, stride_kl, stride_vl, rows, start_m, tl.minimum(start_m + BLOCK_M, seq_len),
        seq_len, qk_scale, True, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )

    out = acc / l_i[:, None]
    tl.store(O + q_offs, out.to(dtype), mask=row_ok[:, None])
    lse = (m_i + tl.math.log2(l_i)) * _LN2
    tl.store(LSE + (batch * n_heads + head) * seq_len + rows, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------------- backward


@triton.autotune(
    configs=autotune.THOUGHT_BWD_CONFIGS,
    key=["l_bucket", "p_bucket", "GROUPS", "HEAD_DIM"],
    prune_configs_by={"early_config_prune": autotune.prune_thought_bwd},
    cache_results=True,
)
@triton.heuristics({"BLOCK_G": lambda args: triton.next_power_of_2(args["GROUPS"])})
@triton.jit
def _bwd_thought_kernel(
    Q, O, DO, LSE, DELTA, DQ_ACC, THOUGHT_KEY_PTRS, THOUGHT_VALUE_PTRS, GRAD_THOUGHT_KEY_PTRS, GRAD_THOUGHT_VALUE_PTRS,
    stride_qb, stride_qh, stride_ql,
    stride_dob, stride_doh, stride_dol,
    stride_tkb, stride_tkh, stride_tkl,
    stride_tvb, stride_tvh, stride_tvl,
    n_heads, seq_len, n_passes, scaling, qk_scale, l_bucket, p_bucket,
    GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    kv_head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    heads = kv_head * GROUPS + tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < seq_len
    ok = (tl.arange(0, BLOCK_G) < GROUPS)[:, None] & row_ok[None, :]  # (G, R)
    dtype = Q.dtype.element_ty

    # (G, R, d) tiles of the group's query heads, loaded once for all passes.
    q_offs = batch * stride_qb + heads[:, None, None] * stride_qh + rows[None, :, None] * stride_ql
    do_offs = batch * stride_dob + heads[:, None, None] * stride_doh + rows[None, :, None] * stride_dol
    q = tl.load(Q + q_offs + offs_d[None, None, :], mask=ok[:, :, None], other=0.0)
    do = tl.load(DO + do_offs + offs_d[None, None, :], mask=ok[:, :, None], other=0.0)
    o = tl.load(O + q_offs + offs_d[None, None, :], mask=ok[:, :, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 2)  # (G, R)
    row_vec = (batch * n_heads + heads[:, None]) * seq_len + rows[None, :]
    tl.store(DELTA + row_vec, delta, mask=ok)
    lse2 = tl.load(LSE + row_vec, mask=ok, other=float("inf")) * _LOG2E  # p = 0 on masked rows and heads

    dq = tl.zeros([BLOCK_G, BLOCK_R, HEAD_DIM], dtype=tl.float32)
    thought_key_offs = batch * stride_tkb + kv_head * stride_tkh + rows[:, None] * stride_tkl + offs_d[None, :]
    thought_value_offs = batch * stride_tvb + kv_head * stride_tvh + rows[:, None] * stride_tvl + offs_d[None, :]
    for s in tl.range(0, n_passes, num_stages=2):
        thought_key_ptr = tl.load(THOUGHT_KEY_PTRS + s).to(tl.pointer_type(dtype))
        thought_value_ptr = tl.load(THOUGHT_VALUE_PTRS + s).to(tl.pointer_type(dtype))
        thought_key = tl.load(thought_key_ptr + thought_key_offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        thought_value = tl.load(thought_value_ptr + thought_value_offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        p = tl.math.exp2(tl.sum(q.to(tl.float32) * thought_key[None, :, :], 2) * qk_scale - lse2)  # (G, R)
        ds = p * (tl.sum(do.to(tl.float32) * thought_value[None, :, :], 2) - delta)
        grad_thought_key = tl.sum(ds[:, :, None] * q.to(tl.float32), 0) * scaling  # (R, d)
        grad_thought_value = tl.sum(p[:, :, None] * do.to(tl.float32), 0)
        dq += ds[:, :, None] * thought_key[None, :, :]
        grad_thought_key_ptr = tl.load(GRAD_THOUGHT_KEY_PTRS + s).to(tl.pointer_type(dtype))
        grad_thought_value_ptr = tl.load(GRAD_THOUGHT_VALUE_PTRS + s).to(tl.pointer_type(dtype))
        tl.store(grad_thought_key_ptr + thought_key_offs, grad_thought_key.to(dtype), mask=row_ok[:, None])
        tl.store(grad_thought_value_ptr + thought_value_offs, grad_thought_value.to(dtype), mask=row_ok[:, None])

    dq_offs = row_vec[:, :, None] * HEAD_DIM + offs_d[None, None, :]
    tl.store(DQ_ACC + dq_offs, dq * scaling, mask=ok[:, :, None])


@triton.jit
def _dkv_query_blocks(
    dk, dv, k, v, key_real, cols, Q, DO, LSE, DELTA, DQ_ACC, stride_ql, stride_dol, lo, hi, seq_len, scaling,
    qk_scale, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, FUSED_DQ: tl.constexpr, BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dv += P^T dO, dk += dS^T Q (and dQ += dS K when FUSED_DQ) for one key block over the rows lo..hi of one head."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < seq_len
        q = tl.load(Q + rows[:, None] * stride_ql + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + rows[:, None] * stride_dol + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse2 = tl.load(LSE + rows, mask=row_ok, other=float("inf")) * _LOG2E  # p = 0 past the last row
        delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.math.exp2(qk_t - lse2[None, :])
        if CAUSAL:
            p_t = tl.where(rows[None, :] >= cols[:, None], p_t, 0.0)
        if HAS_MASK:
            p_t = tl.where(key_real[:, None], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk += tl.dot(ds_t, q, input_precision=DOT_PRECISION)
        if FUSED_DQ:
            dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PRECISION) * scaling
            tl.atomic_add(DQ_ACC + rows[:, None] * HEAD_DIM + offs_d[None, :], dq, mask=row_ok[:, None], sem="relaxed")
    return dk, dv


@triton.autotune(
    configs=autotune.DKV_CONFIGS,
    key=["l_bucket", "n_groups", "n_splits", "HEAD_DIM", "HAS_MASK", "FUSED_DQ"],
    prune_configs_by={"early_config_prune": autotune.prune_dkv},
    restore_value=["DQ_ACC"],
    cache_results=True,
)
@triton.jit
def _bwd_dkv_kernel(
    Q, BASE_KEY, BASE_VALUE, MASK, DO, LSE, DELTA, DQ_ACC, DK, DV,
    stride_qb, stride_qh, stride_ql,
    stride_dob, stride_doh, stride_dol,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dks, stride_dkb, stride_dkh, stride_dkl,
    stride_dvs, stride_dvb, stride_dvh, stride_dvl,
    stride_mb,
    n_heads, n_kv_heads, n_groups, n_splits, seq_len, scaling, qk_scale, l_bucket,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, FUSED_DQ: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_N % BLOCK_M == 0, "the causal split needs BLOCK_N to be a multiple of BLOCK_M")
    kv_head = tl.program_id(0) // n_splits
    split = tl.program_id(0) % n_splits
    start_n = tl.program_id(1) * BLOCK_N  # the longest (first) key blocks launch first
    batch = tl.program_id(2).to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < seq_len
    offs_d = tl.arange(0, HEAD_DIM)

    k_offs = batch * stride_kb + kv_head * stride_kh + cols[:, None] * stride_kl + offs_d[None, :]
    v_offs = batch * stride_vb + kv_head * stride_vh + cols[:, None] * stride_vl + offs_d[None, :]
    k = tl.load(BASE_KEY + k_offs, mask=col_ok[:, None], other=0.0)
    v = tl.load(BASE_VALUE + v_offs, mask=col_ok[:, None], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    key_real = col_ok
    if HAS_MASK:
        key_real = key_real & (tl.load(MASK + batch * stride_mb + cols, mask=col_ok, other=0) != 0)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    heads_per_split = n_groups // n_splits
    for g in range(0, heads_per_split):
        head = kv_head * n_groups + split * heads_per_split + g
        Q_h = Q + batch * stride_qb + head * stride_qh
        DO_h = DO + batch * stride_dob + head * stride_doh
        LSE_h = LSE + (batch * n_heads + head) * seq_len
        DELTA_h = DELTA + (batch * n_heads + head) * seq_len
        DQ_h = DQ_ACC + (batch * n_heads + head) * seq_len * HEAD_DIM
        dk, dv = _dkv_query_blocks(
            dk, dv, k, v, key_real, cols, Q_h, DO_h, LSE_h, DELTA_h, DQ_h, stride_ql, stride_dol, start_n,
            seq_len, seq_len, scaling, qk_scale, True, HAS_MASK, FUSED_DQ, BLOCK_M, HEAD_DIM, UPCAST, DOT_PRECISION,
        )

    split = split.to(tl.int64)
    dk_offs = split * stride_dks + batch * stride_dkb + kv_head * stride_dkh + cols[:, None] * stride_dkl
    dv_offs = split * stride_dvs + batch * stride_dvb + kv_head * stride_dvh + cols[:, None] * stride_dvl
    tl.store(DK + dk_offs + offs_d[None, :], (dk * scaling).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + dv_offs + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


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


@triton.autotune(
    configs=autotune.DQ_CONFIGS,
    key=["l_bucket", "HEAD_DIM", "HAS_MASK"],
    prune_configs_by={"early_config_prune": autotune.prune_dq},
    cache_results=True,
)
@triton.jit
def _bwd_dq_kernel(
    Q, BASE_KEY, BASE_VALUE, MASK, DO, LSE, DELTA, DQ_ACC, DQ,
    stride_qb, stride_qh, stride_ql,
    stride_dob, stride_doh, stride_dol,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_mb,
    n_heads, n_groups, seq_len, scaling, qk_scale, l_bucket,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "the causal split needs BLOCK_M to be a multiple of BLOCK_N")
    head = tl.program_id(0)
    block_m = tl.num_programs(1) - 1 - tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    kv_head = head // n_groups
    start_m = block_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    offs_d = tl.arange(0, HEAD_DIM)

    q_offs = batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + offs_d[None, :]
    do_offs = batch * stride_dob + head * stride_doh + rows[:, None] * stride_dol + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + do_offs, mask=row_ok[:, None], other=0.0)
    row_vec = (batch * n_heads + head) * seq_len + rows
    delta = tl.load(DELTA + row_vec, mask=row_ok, other=0.0)
    lse2 = tl.load(LSE + row_vec, mask=row_ok, other=0.0) * _LOG2E
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    acc_offs = row_vec[:, None] * HEAD_DIM + offs_d[None, :]
    dq = tl.load(DQ_ACC + acc_offs, mask=row_ok[:, None], other=0.0) / scaling  # the thought part

    K = BASE_KEY + batch * stride_kb + kv_head * stride_kh
    V = BASE_VALUE + batch * stride_vb + kv_head * stride_vh
    MASK = MASK + batch * stride_mb
    dq = _dq_base_blocks(
        dq, q, do, lse2, delta, K, V, MASK, stride_kl, stride_vl, rows, 0, start_m, seq_len, qk_scale,
        False, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )
    dq = _dq_base_blocks(
        dq, q, do, lse2, delta, K, V, MASK, stride_kl, stride_vl, rows, start_m,
        tl.minimum(start_m + BLOCK_M, seq_len), seq_len, qk_scale, True, HAS_MASK, BLOCK_N, HEAD_DIM, UPCAST,
        DOT_PRECISION,
    )
    tl.store(DQ + q_offs, (dq * scaling).to(DQ.dtype.element_ty), mask=row_ok[:, None])


KERNELS = {"fwd": _fwd_kernel, "thought_bwd": _bwd_thought_kernel, "dkv": _bwd_dkv_kernel, "dq": _bwd_dq_kernel}


# ------------------------------------------------------------------------------------------------ host wrappers


def _check_kernel_inputs(query, keys_and_values) -> None:
    """Raise a ValueError/RuntimeError naming the first input the kernels cannot run.

    Only what the kernels themselves need is checked here: a supported head dim, one supported dtype for every
    tensor (the pointer tables are cast to the query's element type), K/V of the query's batch, length and head dim
    (the kernels index them with the query's), and a device the kernels run on. The meaning of the arguments (GQA
    head counts, one value per key, a (B, L) bool padding mask) is checked once, by the model layer's
    `quietstar.models.thought_attention.thought_attention` before it picks an implementation.
    """
    batch, _, length, head_dim = query.shape
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {head_dim} is not supported by the Triton kernel; supported: {SUPPORTED_HEAD_DIMS}")
    if query.dtype not in SUPPORTED_DTYPES or any(t.dtype != query.dtype for t in keys_and_values):
        raise ValueError(
            f"the Triton thought attention needs one dtype among {SUPPORTED_DTYPES} for all inputs; got "
            f"{sorted({str(t.dtype) for t in (query, *keys_and_values)})}"
        )
    if any((t.shape[0], t.shape[2], t.shape[3]) != (batch, length, head_dim) for t in keys_and_values):
        raise ValueError(f"keys and values must be (B, Hkv, L, d) with the query's B, L, d = {batch, length, head_dim}")
    if query.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"the Triton thought attention needs CUDA tensors (got {query.device}); on CPU set TRITON_INTERPRET=1 "
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


def layout(t: torch.Tensor) -> tuple[int, ...]:
    """Strides that matter to the kernels: those of dims longer than 1 (the others are never multiplied by > 0)."""
    return tuple(stride if size > 1 else 0 for size, stride in zip(t.shape, t.stride()))


def _same_layout(passes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The passes with inner-contiguous layouts; all made contiguous (a copy) if their strides differ."""
    passes = [_inner_contiguous(t) for t in passes]
    if len({layout(t) for t in passes}) > 1:
        passes = [t.contiguous(memory_format=torch.contiguous_format) for t in passes]
    if len({layout(t) for t in passes}) > 1:
        raise ValueError("thought passes must share one shape and one set of strides")
    return passes


def _check_int32_spans(tensors: Sequence[torch.Tensor]) -> None:
    """Offsets inside one batch element are int32 in the kernels: each such span must stay below 2^31 elements."""
    for t in tensors:
        span = sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:])) + 1
        if span >= INT32_LIMIT:
            raise ValueError(
                f"one batch element of a {tuple(t.shape)} input spans {span} elements (>= 2^31); "
                "the kernel needs it below 2^31"
            )


def pointer_table(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(n,) int64 tensor of the tensors' data pointers, read by the kernels to reach each pass without a copy.

    On CUDA it is staged in pinned host memory and copied asynchronously on the current stream, so building it
    does not make the host wait for the GPU.
    """
    table = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def dot_precision(dtype: torch.dtype) -> str | None:
    """tl.dot input precision: tf32 for fp32 inputs on CUDA (IEEE under the interpreter, where it is exact)."""
    if dtype != torch.float32:
        return None
    return "ieee" if INTERPRET else "tf32"


def _kernel_flags(dtype: torch.dtype) -> dict:
    """Constexpr flags shared by the kernels: upcast dots under the interpreter, the fp32 dot precision."""
    return dict(UPCAST=INTERPRET, DOT_PRECISION=dot_precision(dtype))


def _device_guard(x: torch.Tensor):
    """Launch on x's GPU (kernels launch on the current CUDA device); nothing to do on CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _mask_args(key_padding_mask, dummy):
    """(mask tensor or a dummy pointer, batch stride, HAS_MASK)."""
    if key_padding_mask is None:
        return dummy, 0, False
    return key_padding_mask, key_padding_mask.stride(0), True


def thought_attention_forward(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
    """Forward kernel launch.

    Args:
        query: (B, H, L, d); base_key, base_value: (B, Hkv, L, d); thought_keys, thought_values: sequences of p
            tensors (B, Hkv, L, d), the tensors of each sequence sharing one stride set; one dtype, last dim
            contiguous.
        key_padding_mask: (B, L) bool (True = real token) or None.
        scaling: score scale.

    Returns:
        out: (B, H, L, d) with the query's strides; lse: (B, H, L) fp32, natural log.
    """
    batch, heads, length, head_dim = query.shape
    kv_heads, n_passes = base_key.shape[1], len(thought_keys)
    out = torch.empty_like(query)
    lse = torch.empty(batch, heads, length, device=query.device, dtype=torch.float32)
    mask, mask_stride, has_mask = _mask_args(key_padding_mask, lse)
    key_table, value_table = pointer_table(thought_keys, query.device), pointer_table(thought_values, query.device)

    def grid(meta):
        return heads, triton.cdiv(length, meta["BLOCK_M"]), batch

    with _device_guard(query):
        _fwd_kernel[grid](
            query, base_key, base_value, key_table, value_table, mask, out, lse,
            query.stride(0), query.stride(1), query.stride(2),
            base_key.stride(0), base_key.stride(1), base_key.stride(2),
            base_value.stride(0), base_value.stride(1), base_value.stride(2),
            *layout(thought_keys[0])[:3],
            *layout(thought_values[0])[:3],
            mask_stride,
            heads, heads // kv_heads, length, n_passes, scaling * LOG2E, **autotune.buckets(length, n_passes),
            HEAD_DIM=head_dim, HAS_MASK=has_mask, **_kernel_flags(query.dtype),
        )
    return out, lse


def thought_attention_backward(grad_out, query, base_key, base_value, thought_keys, thought_values,
                               key_padding_mask, out, lse, scaling, deterministic: bool | None = None):
    """Backward kernel launches: fused thought backward (+ Delta), base dK/dV (+ dQ unless deterministic), dQ.

    Args:
        grad_out: (B, H, L, d) gradient of `out`; the other arguments as saved by the forward.
        deterministic: run the atomic-free path (separate dQ kernel); default
            torch.are_deterministic_algorithms_enabled().

    Returns:
        grad_query (B, H, L, d), grad_base_key and grad_base_value (B, Hkv, L, d), and lists grad_thought_keys,
        grad_thought_values of p tensors (B, Hkv, L, d) each, in the input dtype.
    """
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    batch, heads, length, head_dim = query.shape
    kv_heads, n_passes = base_key.shape[1], len(thought_keys)
    groups = heads // kv_heads
    grad_out = _inner_contiguous(grad_out)
    _check_int32_spans([grad_out])
    grad_query = torch.empty_like(query)
    grad_base_key, grad_base_value = torch.empty_like(base_key), torch.empty_like(base_value)
    grad_thought_keys = [torch.empty_like(t) for t in thought_keys]
    grad_thought_values = [torch.empty_like(t) for t in thought_values]
    delta = torch.empty_like(lse)
    dq_acc = torch.empty(batch, heads, length, head_dim, device=query.device, dtype=torch.float32)
    mask, mask_stride, has_mask = _mask_args(key_padding_mask, lse)
    flags = _kernel_flags(query.dtype)
    buckets = autotune.buckets(length, n_passes)
    tables = [pointer_table(t, query.device)
              for t in (thought_keys, thought_values, grad_thought_keys, grad_thought_values)]

    splits = autotune.dkv_splits(batch, kv_heads, groups, length)
    if splits > 1:
        dk_out = torch.empty(splits, batch, kv_heads, length, head_dim, device=query.device, dtype=torch.float32)
        dv_out = torch.empty_like(dk_out)
        dk_strides = dv_strides = dk_out.stride()
    else:
        dk_out, dv_out = grad_base_key, grad_base_value
        dk_strides, dv_strides = (0, *grad_base_key.stride()[:3]), (0, *grad_base_value.stride()[:3])

    def thought_grid(meta):
        return triton.cdiv(length, meta["BLOCK_R"]), kv_heads, batch

    def dkv_grid(meta):
        return kv_heads * splits, triton.cdiv(length, meta["BLOCK_N"]), batch

    def dq_grid(meta):
        return heads, triton.cdiv(length, meta["BLOCK_M"]), batch

    with _device_guard(query):
        _bwd_thought_kernel[thought_grid](
            query, out, grad_out, lse, delta, dq_acc, *tables,
            query.stride(0), query.stride(1), query.stride(2),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
            *layout(thought_keys[0])[:3],
            *layout(thought_values[0])[:3],
            heads, length, n_passes, scaling, scaling * LOG2E, **buckets,
            GROUPS=groups, HEAD_DIM=head_dim,
        )
        _bwd_dkv_kernel[dkv_grid](
            query, base_key, base_value, mask, grad_out, lse, delta, dq_acc, dk_out, dv_out,
            query.stride(0), query.stride(1), query.stride(2),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
            base_key.stride(0), base_key.stride(1), base_key.stride(2),
            base_value.stride(0), base_value.stride(1), base_value.stride(2),
            *dk_strides[:4], *dv_strides[:4],
            mask_stride,
            heads, kv_heads, groups, splits, length, scaling, scaling * LOG2E, buckets["l_bucket"],
            HEAD_DIM=head_dim, HAS_MASK=has_mask, FUSED_DQ=not deterministic, **flags,
        )
        if splits > 1:  # fixed-order sum over the head splits: deterministic
            grad_base_key.copy_(dk_out.sum(0))
            grad_base_value.copy_(dv_out.sum(0))
        if deterministic:
            _bwd_dq_kernel[dq_grid](
                query, base_key, base_value, mask, grad_out, lse, delta, dq_acc, grad_query,
                query.stride(0), query.stride(1), query.stride(2),
                grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
                base_key.stride(0), base_key.stride(1), base_key.stride(2),
                base_value.stride(0), base_value.stride(1), base_value.stride(2),
                mask_stride,
                heads, groups, length, scaling, scaling * LOG2E, buckets["l_bucket"],
                HEAD_DIM=head_dim, HAS_MASK=has_mask, **flags,
            )
        else:
            grad_query.copy_(dq_acc)
    return grad_query, grad_base_key, grad_base_value, grad_thought_keys, grad_thought_values


class ThoughtAttentionFunction(torch.autograd.Function):
    """Thought-pass attention with the fused Triton forward and backward.

    forward(query, base_key, base_value, key_padding_mask, scaling, *thought_kv) -> out
        query: (B, H, L, d) queries of thought pass p
        base_key, base_value: (B, Hkv, L, d) keys/values of the base pass (H = G * Hkv, GQA handled inside)
        key_padding_mask: (B, L) bool, True for real tokens, or None
        scaling: float score scale
        thought_kv: the p thought keys of passes 1..p followed by their p thought values, each (B, Hkv, L, d).
            autograd.Function only tracks tensors passed as positional arguments, so the two lists are flattened
            into one varargs tuple (2p tensors) and split back in half; every pass tensor gets its own gradient.
        out: (B, H, L, d); row i is softmax over {base keys j <= i, not padding} U {pass s's key at i, s = 1..p}
            of the matching values.

    Saved for backward: the inputs, each pass tensor once as it is, `out` and the (B, H, L) fp32 log-sum-exp;
    never an L x L score matrix nor a stacked copy of the passes.
    Gradients: query, base_key, base_value and one per pass tensor (the mask and the scale get none).
    """

    @staticmethod
    def forward(ctx, query, base_key, base_value, key_padding_mask, scaling, *thought_kv):
        n_passes = len(thought_kv) // 2
        thought_keys, thought_values = thought_kv[:n_passes], thought_kv[n_passes:]
        out, lse = thought_attention_forward(
            query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling
        )
        ctx.save_for_backward(query, base_key, base_value, key_padding_mask, out, lse, *thought_kv)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, base_key, base_value, key_padding_mask, out, lse, *thought_kv = ctx.saved_tensors
        n_passes = len(thought_kv) // 2
        thought_keys, thought_values = thought_kv[:n_passes], thought_kv[n_passes:]
        grad_query, grad_base_key, grad_base_value, grad_thought_keys, grad_thought_values = (
            thought_attention_backward(
                grad_out, query, base_key, base_value, thought_keys, thought_values, key_padding_mask, out, lse,
                ctx.scaling,
            )
        )
        return grad_query, grad_base_key, grad_base_value, None, None, *grad_thought_keys, *grad_thought_values


def thought_attention(
    query: torch.Tensor,
    base_key: torch.Tensor,
    base_value: torch.Tensor,
    thought_keys: Sequence[torch.Tensor],
    thought_values: Sequence[torch.Tensor],
    key_padding_mask: torch.Tensor | None = None,
    scaling: float | None = None,
) -> torch.Tensor:
    """Fused thought-pass attention; returns (B, H, L, d).

    Args:
        query: (B, H, L, d) queries of thought pass p.
        base_key, base_value: (B, Hkv, L, d) keys and values of the base pass; H a multiple of Hkv.
        thought_keys, thought_values: sequences of p >= 1 tensors (B, Hkv, L, d): the keys and values of passes
            1..p (pass p last), used in place through a pointer table (no stacked copy). The thought keys must
            share one stride set (likewise the values); passes whose strides differ are made contiguous first.
        key_padding_mask: (B, L) bool, True for real tokens, or None.
        scaling: score scale, default d ** -0.5.

    The arguments are taken as valid (the model layer's dispatcher checks them); this function raises only for what
    the kernels cannot run (`_check_kernel_inputs`, int32 spans). Inputs share one dtype (fp16, bf16 or fp32; fp32
    accumulation throughout; fp32 on CUDA uses tf32 products) and live on a CUDA device, or anywhere under
    TRITON_INTERPRET=1. Head dims 16, 32, 64 and 128 are supported; any L, p >= 1 and B. Inputs whose last dim is
    not contiguous are copied; other layouts (e.g. (B, L, H, d) transposed views) are used in place. The backward
    is deterministic when torch.use_deterministic_algorithms(True) is set; otherwise dQ is accumulated with fp32
    atomics (fewer matrix products, bitwise results may vary run to run).
    """
    _check_kernel_inputs(query, (base_key, base_value, *thought_keys, *thought_values))
    if scaling is None:
        scaling = 1.0 / math.sqrt(query.shape[-1])
    query, base_key, base_value = (_inner_contiguous(t) for t in (query, base_key, base_value))
    thought_keys, thought_values = _same_layout(thought_keys), _same_layout(thought_values)
    _check_int32_spans([query, base_key, base_value, thought_keys[0], thought_values[0]])
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.contiguous()
    return ThoughtAttentionFunction.apply(
        query, base_key, base_value, key_padding_mask, float(scaling), *thought_keys, *thought_values
    )


__all__ = [
    "ThoughtAttentionFunction",
    "pointer_table",
    "thought_attention",
    "thought_attention_backward",
    "thought_attention_forward",
]
