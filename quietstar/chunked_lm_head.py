"""LM-head operations that never keep a (rows, V) tensor for backward.

A Quiet-STaR step needs, per pass, either the NLL of a target token (base and look-ahead passes) or a sampled
thought token and its log-probability at the REINFORCE temperature (thought passes). Computed naively, each of
these materialises (rows, V) logits and an fp32 log-softmax that autograd keeps until backward: with V = 32002 that
is the largest activation of the step. The functions here process the rows in chunks of `chunk_size`: a chunk's
logits live only while that chunk is processed, autograd keeps the hidden states, the head weight, the token ids
and one fp32 log-sum-exp per row, and backward recomputes each chunk's logits (one extra matmul per chunk).

Shapes: `hidden` is (..., H) (N rows once the leading dimensions are flattened), `weight` is the (V, H) head
weight (no bias). Logits are computed in the dtype `lm_head(hidden)` would multiply in (under autocast, the autocast
dtype; the cast happens per chunk, so no cast copy of the weight is kept), and the softmax in
`promote_types(dtype, float32)`; per-row outputs are in that dtype (float32 for bfloat16/float32, float64 for
float64). Gradients come back in the dtypes of `hidden` and `weight`.
"""

import torch

DEFAULT_CHUNK_SIZE = 1024


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype `F.linear(hidden, weight)` multiplies in: the autocast dtype under autocast, else the promoted one."""
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden size {hidden.shape[-1]} does not match the head weight's {tuple(weight.shape)}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")


def _chunk_logits(hidden_rows: torch.Tensor, weight: torch.Tensor, banned_ids: torch.Tensor | None) -> torch.Tensor:
    """(c, H) rows and the (V, H) weight, both in the matmul dtype -> (c, V) logits, -inf at `banned_ids`.

    The logits are in promote_types(matmul dtype, float32).
    """
    logits = (hidden_rows @ weight.T).to(torch.promote_types(weight.dtype, torch.float32))
    if banned_ids is not None:
        logits.index_fill_(-1, banned_ids, float("-inf"))
    return logits


def _pick_tokens(logits: torch.Tensor, temperature: float, uniform: torch.Tensor | None) -> torch.LongTensor:
    """(c, V) logits -> (c,) tokens: the argmax at temperature 0, else one inverse-CDF draw per row.

    `uniform` (c,) holds one number in [0, 1) per row. Zero-probability entries (banned ids) are never drawn; if
    float rounding lands past the last non-zero entry, the row's most likely token is taken.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    threshold = uniform.unsqueeze(-1) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, threshold, right=True).clamp(max=probs.shape[-1] - 1)
    drawable = probs.gather(-1, tokens) > 0
    return torch.where(drawable, tokens, probs.argmax(dim=-1, keepdim=True)).squeeze(-1)


def _valid_rows(tokens: torch.LongTensor, ignore_index: int | None) -> torch.Tensor:
    """(c,) bool: rows whose token is not `ignore_index` (all rows when it is None)."""
    if ignore_index is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return tokens != ignore_index


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1 else logits / temperature


class _ChunkedTokenLogProb(torch.autograd.Function):
    """log_softmax(logits / temperature)[token] per row, logits = hidden @ weight.T with `banned_ids` at -inf.

    `hidden` (N, H) and `weight` (V, H) come in their own dtypes and are cast to `matmul_dtype` chunk by chunk, so
    autograd keeps the caller's tensors (no cast copy of the weight). Forward, chunk by chunk: the chunk's logits,
    its tokens (the given ones, or picked by `_pick_tokens`), the row's log-sum-exp and log-probability. Saved for
    backward: hidden, weight, tokens and the (N,) log-sum-exp. Backward recomputes the chunk's logits;
    d logprob / d logits = (onehot(token) - softmax) / temperature. Rows whose token equals `ignore_index` get
    log-probability 0 and no gradient.
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, given_tokens, uniform, banned_ids, sample_temperature, temperature, ignore_index,
        chunk_size, matmul_dtype,
    ):
        rows = hidden.shape[0]
        compute_dtype = torch.promote_types(matmul_dtype, torch.float32)
        matmul_weight = weight.to(matmul_dtype)
        tokens = given_tokens if given_tokens is not None else hidden.new_empty(rows, dtype=torch.long)
        logprob = hidden.new_empty(rows, dtype=compute_dtype)
        logsumexp = hidden.new_empty(rows, dtype=compute_dtype)
        for start in range(0, rows, chunk_size):
            chunk = slice(start, start + chunk_size)
            logits = _chunk_logits(hidden[chunk].to(matmul_dtype), matmul_weight, banned_ids)
            if given_tokens is None:
                tokens[chunk] = _pick_tokens(logits, sample_temperature, None if uniform is None else uniform[chunk])
            scaled = _scaled(logits, temperature)
            logsumexp[chunk] = torch.logsumexp(scaled, dim=-1)
            valid = _valid_rows(tokens[chunk], ignore_index)
            picked = scaled.gather(-1, tokens[chunk].where(valid, 0).unsqueeze(-1)).squeeze(-1)
            logprob[chunk] = torch.where(valid, picked - logsumexp[chunk], 0)
        ctx.save_for_backward(hidden, weight, tokens, logsumexp, banned_ids)
        ctx.temperature, ctx.ignore_index, ctx.chunk_size = temperature, ignore_index, chunk_size
        ctx.matmul_dtype = matmul_dtype
        ctx.mark_non_differentiable(tokens)
        return tokens, logprob

    @staticmethod
    def backward(ctx, grad_tokens, grad_logprob):
        hidden, weight, tokens, logsumexp, banned_ids = ctx.saved_tensors
        needs_hidden, needs_weight = ctx.needs_input_grad[:2]
        compute_dtype = logsumexp.dtype
        matmul_weight = weight.to(ctx.matmul_dtype)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=compute_dtype) if needs_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            chunk = slice(start, start + ctx.chunk_size)
            rows = hidden[chunk].to(ctx.matmul_dtype)
            valid = _valid_rows(tokens[chunk], ctx.ignore_index)
            grad_rows = torch.where(valid, grad_logprob[chunk], 0).to(compute_dtype).unsqueeze(-1)
            scaled = _scaled(_chunk_logits(rows, matmul_weight, banned_ids), ctx.temperature)
            grad_logits = (scaled - logsumexp[chunk].unsqueeze(-1)).exp_().mul_(-grad_rows)
            grad_logits.scatter_add_(-1, tokens[chunk].where(valid, 0).unsqueeze(-1), grad_rows)
            grad_logits = _scaled(grad_logits, ctx.temperature).to(ctx.matmul_dtype)
            if needs_hidden:
                grad_hidden[chunk] = grad_logits @ matmul_weight
            if needs_weight:
                if grad_weight.dtype == rows.dtype:
                    grad_weight.addmm_(grad_logits.T, rows)
                else:
                    grad_weight += (grad_logits.T @ rows).to(compute_dtype)
        if needs_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.LongTensor,
    *,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Per-row cross-entropy of `hidden @ weight.T` against `targets`, without keeping the logits.

    Equals `F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=ignore_index,
    reduction="none")` and is differentiable with respect to `hidden` and `weight`.

    Args:
        hidden: (..., H) hidden states.
        weight: (V, H) LM-head weight.
        targets: (...) target ids, `ignore_index` where no loss is wanted.
        ignore_index: target id whose rows get NLL 0 and no gradient.
        chunk_size: rows whose (rows, V) logits are materialised at once.

    Returns:
        (...) NLL in promote(dtype, float32), 0 where the target is ignored.
    """
    _check_chunk_size(chunk_size)
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must have the leading shape of hidden {tuple(hidden.shape)}")
    matmul_dtype = _matmul_dtype(hidden, weight)
    _, logprob = _ChunkedTokenLogProb.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), None, None, 0.0, 1.0, ignore_index,
        chunk_size, matmul_dtype,
    )
    return -logprob.view(targets.shape)


def sample_thought_tokens(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    *,
    banned_ids: torch.LongTensor | list[int],
    sample_temperature: float,
    logprob_temperature: float | None,
    given_tokens: torch.LongTensor | None = None,
    uniform: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.LongTensor, torch.Tensor | None]:
    """Sample the next thought token of every row and, for REINFORCE, its tempered log-probability.

    The logits are `hidden @ weight.T` with `banned_ids` (the start/end-of-thought ids) at -inf, so those are never
    drawn. A token is drawn from softmax(logits / sample_temperature) by inverse CDF with one uniform number per
    row (the argmax at `sample_temperature` 0); the log-probability is log_softmax(logits / logprob_temperature) at
    the token, differentiable with respect to `hidden` and `weight` (the draw itself is not).

    Args:
        hidden: (..., H) hidden states of the thought pass.
        weight: (V, H) LM-head weight.
        banned_ids: ids that are never sampled (masked to -inf).
        sample_temperature: sampling temperature; 0 takes the argmax.
        logprob_temperature: temperature of the returned log-probability, or None to skip it (no autograd state).
        given_tokens: (...) tokens to use instead of sampling; only their log-probabilities are computed.
        uniform: (...) numbers in [0, 1), one per row; drawn as `torch.rand(N, 1)` when sampling needs them and
            none are given, which consumes the generator exactly like a draw of `torch.rand(*leading, 1)`.
        chunk_size: rows whose (rows, V) logits are materialised at once.

    Returns:
        tokens (...) long, and the log-probabilities (...) in promote(dtype, float32) or None.
    """
    _check_chunk_size(chunk_size)
    leading = hidden.shape[:-1]
    matmul_dtype = _matmul_dtype(hidden, weight)
    rows = hidden.reshape(-1, hidden.shape[-1])
    banned = torch.as_tensor(banned_ids, dtype=torch.long, device=hidden.device).reshape(-1)
    if given_tokens is not None:
        if given_tokens.shape != leading:
            raise ValueError(f"given_tokens {tuple(given_tokens.shape)} must have the leading shape {tuple(leading)}")
        given_tokens = given_tokens.reshape(-1).to(device=hidden.device, dtype=torch.long)
    elif sample_temperature < 0:
        raise ValueError(f"sample_temperature must be >= 0, got {sample_temperature}")
    elif sample_temperature > 0:
        if uniform is None:
            uniform = torch.rand(rows.shape[0], 1, device=hidden.device)
        elif uniform.numel() != rows.shape[0]:
            raise ValueError(f"uniform holds {uniform.numel()} numbers for {rows.shape[0]} rows")
        uniform = uniform.reshape(-1).to(device=hidden.device, dtype=torch.float32)
    if logprob_temperature is None:
        if given_tokens is not None:
            return given_tokens.view(leading), None
        tokens = rows.new_empty(rows.shape[0], dtype=torch.long)
        with torch.no_grad():
            matmul_weight = weight.to(matmul_dtype)
            for start in range(0, rows.shape[0], chunk_size):
                chunk = slice(start, start + chunk_size)
                logits = _chunk_logits(rows[chunk].to(matmul_dtype), matmul_weight, banned)
                tokens[chunk] = _pick_tokens(logits, sample_temperature, None if uniform is None else uniform[chunk])
        return tokens.view(leading), None
    if logprob_temperature <= 0:
        raise ValueError(f"logprob_temperature must be > 0 (or None), got {logprob_temperature}")
    tokens, logprob = _ChunkedTokenLogProb.apply(
        rows, weight, given_tokens, uniform, banned, sample_temperature, logprob_temperature, None, chunk_size,
        matmul_dtype,
    )
    return tokens.view(leading), logprob.view(leading)


__all__ = ["DEFAULT_CHUNK_SIZE", "linear_cross_entropy", "sample_thought_tokens"]
