"""LM-head operations that never keep a (rows, V) tensor for backward.

Every op of the model layer that multiplies hidden states by the LM head during training lives here: the loss's
cross-entropy, the thought sampler (drawing each thought token and its REINFORCE log-probability is an LM-head op
too) and the distillation KL. The model's returned logits (`ThinkingParts.thinking_logits`) are a plain head call.

A Quiet-STaR step needs, per pass, either the NLL of a target token (base and look-ahead passes) or a sampled
thought token and its log-probability at the REINFORCE temperature (thought passes). Computed naively, each of
these materialises (rows, V) logits and an fp32 log-softmax that autograd keeps until backward: with V = 32002 that
is the largest activation of the step. The functions here process the rows in chunks of `chunk_size`, so a chunk's
logits live only while that chunk is processed:

- `weighted_linear_cross_entropy` returns the per-row NLLs (for the rewards) and their weighted sum (the NLL part of
  the loss). The weights are known before the forward (they depend on the label mask only), so the gradients of the
  sum are computed chunk by chunk in the forward, as in Liger-Kernel's fused linear cross-entropy: autograd keeps the
  (rows, H) gradient of the hidden states and one (V, H) gradient of the head weight, and backward only scales them.
  No logits are recomputed.
- `sample_thought_tokens` draws a token per row and returns its log-probability. Its upstream gradient (the
  REINFORCE advantage) is known only after the look-ahead passes, so autograd keeps the hidden states, the head
  weight, the token ids and one fp32 log-sum-exp per row, and backward recomputes the logits of the rows whose
  upstream gradient is non-zero (with clipped advantages and two thoughts per position, about half of them).
- `linear_distillation_kl` returns KL(teacher || student) per row of two sets of hidden states through the same
  head, and its weighted sum, with the gradient of the student computed chunk by chunk in the forward.

Shapes: `hidden` is (..., H) (N rows once the leading dimensions are flattened), `weight` is the (V, H) head
weight (no bias). Logits, softmaxes and per-row outputs are computed in float32 whatever the dtypes of `hidden` and
`weight` and whether autocast is on (float64 when an input is float64): the rewards of Quiet-STaR are differences of
two NLLs of the same token whose logits differ by far less than bfloat16's resolution (about 0.1 at a logit of 20),
so bfloat16 logits would turn the rewards into rounding noise. The upcast happens per chunk of rows (the weight is
upcast once per call, a transient copy that is never kept for backward). Gradients come back in the dtypes of
`hidden` and `weight`.
"""

import torch

DEFAULT_CHUNK_SIZE = 1024


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head multiplies in: float32, or float64 when an input is float64 (never an autocast dtype)."""
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden size {hidden.shape[-1]} does not match the head weight's {tuple(weight.shape)}")
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")


def _chunk_logits(hidden_rows: torch.Tensor, weight: torch.Tensor, banned_ids: torch.Tensor | None) -> torch.Tensor:
    """(c, H) rows and the (V, H) weight, both in the matmul dtype -> (c, V) logits, -inf at `banned_ids`.

    Autocast is switched off for the product, so the logits are in the matmul dtype.
    """
    with torch.autocast(hidden_rows.device.type, enabled=False):
        logits = hidden_rows @ weight.T
    if banned_ids is not None:
        logits.index_fill_(-1, banned_ids, float("-inf"))
    return logits


def _head_backward(
    grad_logits: torch.Tensor,
    rows: torch.Tensor,
    matmul_weight: torch.Tensor,
    grad_weight: torch.Tensor | None,
    needs_rows: bool,
) -> torch.Tensor | None:
    """Backpropagate the (c, V) `grad_logits` of `rows @ matmul_weight.T`: add the (V, H) gradient of the weight
    into `grad_weight` (when not None) and return the (c, H) gradient of the rows (when `needs_rows`, else None)."""
    grad_logits = grad_logits.to(matmul_weight.dtype)
    with torch.autocast(rows.device.type, enabled=False):
        if grad_weight is not None:
            if grad_weight.dtype == rows.dtype:
                grad_weight.addmm_(grad_logits.T, rows)
            else:
                grad_weight += (grad_logits.T @ rows).to(grad_weight.dtype)
        return grad_logits @ matmul_weight if needs_rows else None


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1 else logits / temperature


def _scaled_(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`_scaled` in place."""
    return logits if temperature == 1 else logits.div_(temperature)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Overwrite (c, V) logits with their softmax and return the (c, 1) log-sum-exp of each row.

    In place, so a chunk needs one (c, V) buffer: `torch.logsumexp` and `torch.softmax` would each allocate another.
    """
    shift = logits.amax(dim=-1, keepdim=True)
    sums = logits.sub_(shift).exp_().sum(dim=-1, keepdim=True)
    logits.div_(sums)
    return shift + sums.log()


def _pick_tokens(logits: torch.Tensor, temperature: float, uniform: torch.Tensor | None) -> torch.LongTensor:
    """(c, V) logits -> (c,) tokens: the argmax at temperature 0, else one inverse-CDF draw per row.

    `uniform` (c,) holds one number in [0, 1) per row. Zero-probability entries (banned ids) are never drawn; if
    float rounding lands past the last non-zero entry, the row's most likely token is taken. The CDF is summed in
    place in the softmax's buffer, so a draw needs one (c, V) buffer besides the logits (at temperature 1); whether
    a token has probability 0 is read off the logits (exp(x - max) = 0, as at a banned id's -inf).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = _scaled(logits.float(), temperature)
    cdf = torch.softmax(scaled, dim=-1).cumsum_(dim=-1)
    threshold = uniform.unsqueeze(-1) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, threshold, right=True).clamp(max=cdf.shape[-1] - 1)
    del cdf
    drawable = (scaled.gather(-1, tokens) - scaled.amax(dim=-1, keepdim=True)).exp_() > 0
    return torch.where(drawable, tokens, scaled.argmax(dim=-1, keepdim=True)).squeeze(-1)


class _WeightedLinearCrossEntropy(torch.autograd.Function):
    """sum_r row_weights[r] * NLL_r of logits = hidden @ weight.T, with the gradients computed in forward.

    `hidden` (N, H), `weight` (V, H), `targets` (N,), `row_weights` (N,) in the compute dtype (0 where the target is
    ignored). Forward, chunk by chunk: the chunk's logits, the rows' NLLs and, when asked for,
    d loss / d logits = row_weight * (softmax - onehot(target)), pushed through the head at once. Saved for
    backward: the (N, H) gradient of hidden and the (V, H) gradient of weight, which backward scales by the upstream
    gradient of the sum. The per-row NLLs are returned without gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, row_weights, needs_hidden, needs_weight, chunk_size, matmul_dtype):
        compute_dtype = row_weights.dtype
        matmul_weight = weight.to(matmul_dtype)
        nll = hidden.new_empty(hidden.shape[0], dtype=compute_dtype)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=compute_dtype) if needs_weight else None
        for start in range(0, hidden.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            rows = hidden[chunk].to(matmul_dtype)
            logits = _chunk_logits(rows, matmul_weight, None)
            target = targets[chunk].unsqueeze(-1)
            target_logit = logits.gather(-1, target)
            nll[chunk] = (_softmax_(logits) - target_logit).squeeze(-1)
            if needs_hidden or needs_weight:
                chunk_weights = row_weights[chunk].unsqueeze(-1)
                grad_logits = logits.mul_(chunk_weights)
                grad_logits.scatter_add_(-1, target, -chunk_weights)
                grad_rows = _head_backward(grad_logits, rows, matmul_weight, grad_weight, needs_hidden)
                if needs_hidden:
                    grad_hidden[chunk] = grad_rows
                del grad_logits
            del logits  # before the next chunk's logits are allocated
        if needs_weight:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(nll)
        return (nll * row_weights).sum(), nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None


class _ChunkedTokenLogProb(torch.autograd.Function):
    """log_softmax(logits / temperature)[token] per row, logits = hidden @ weight.T with `banned_ids` at -inf.

    `hidden` (N, H) and `weight` (V, H) come in their own dtypes and are cast to `matmul_dtype` chunk by chunk, so
    autograd keeps the caller's tensors (no cast copy of the weight). Forward, chunk by chunk: the chunk's logits,
    its tokens (the given ones, or picked by `_pick_tokens`), the row's log-sum-exp and log-probability. Saved for
    backward: hidden, weight, tokens and the (N,) log-sum-exp. Backward recomputes the logits of the rows with a
    non-zero upstream gradient only (the others contribute exactly zero);
    d logprob / d logits = (onehot(token) - softmax) / temperature.
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, given_tokens, uniform, banned_ids, sample_temperature, temperature, chunk_size,
        matmul_dtype,
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
            scaled = _scaled_(logits, temperature)
            token_logit = scaled.gather(-1, tokens[chunk].unsqueeze(-1)).squeeze(-1)
            logsumexp[chunk] = _softmax_(scaled).squeeze(-1)
            logprob[chunk] = token_logit - logsumexp[chunk]
            del logits, scaled  # before the next chunk's logits are allocated
        ctx.save_for_backward(hidden, weight, tokens, logsumexp, banned_ids)
        ctx.temperature, ctx.chunk_size, ctx.matmul_dtype = temperature, chunk_size, matmul_dtype
        ctx.mark_non_differentiable(tokens)
        return tokens, logprob

    @staticmethod
    def backward(ctx, grad_tokens, grad_logprob):
        hidden, weight, tokens, logsumexp, banned_ids = ctx.saved_tensors
        needs_hidden, needs_weight = ctx.needs_input_grad[:2]
        compute_dtype = logsumexp.dtype
        matmul_weight = weight.to(ctx.matmul_dtype)
        grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=compute_dtype) if needs_weight else None
        active = grad_logprob.nonzero().squeeze(-1)  # rows whose gradient is exactly zero are skipped
        for start in range(0, active.numel(), ctx.chunk_size):
            chunk = active[start : start + ctx.chunk_size]
            rows = hidden[chunk].to(ctx.matmul_dtype)
            grad_rows = grad_logprob[chunk].to(compute_dtype).unsqueeze(-1)
            scaled = _scaled_(_chunk_logits(rows, matmul_weight, banned_ids), ctx.temperature)
            grad_logits = scaled.sub_(logsumexp[chunk].unsqueeze(-1)).exp_().mul_(-grad_rows)
            grad_logits.scatter_add_(-1, tokens[chunk].unsqueeze(-1), grad_rows)
            grad_logits = _scaled_(grad_logits, ctx.temperature)
            grad_chunk = _head_backward(grad_logits, rows, matmul_weight, grad_weight, needs_hidden)
            if needs_hidden:
                grad_hidden[chunk] = grad_chunk.to(grad_hidden.dtype)
            del scaled, grad_logits  # before the next chunk's logits are allocated
        if needs_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def weighted_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.LongTensor,
    row_weights: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy of `hidden @ weight.T` against `targets`, and its weighted sum, without keeping logits.

    `nll` equals `F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=ignore_index,
    reduction="none")` (no gradient); `loss` equals `(nll * row_weights).sum()` and is differentiable with respect
    to `hidden` and `weight`. Its gradients are computed during this call (see the module doc), so the weights must
    be known up front, which holds for every NLL term of the Quiet-STaR loss (they depend on the label mask only).

    Args:
        hidden: (..., H) hidden states.
        weight: (V, H) LM-head weight.
        targets: (...) target ids, `ignore_index` where no loss is wanted.
        row_weights: (...) weight of each row's NLL in `loss` (not differentiated; ignored rows count 0).
        ignore_index: target id whose rows get NLL 0 and no gradient.
        chunk_size: rows whose (rows, V) logits are materialised at once.

    Returns:
        `loss` (a scalar) and `nll` (...), both in promote(dtype, float32); `nll` is 0 where the target is ignored.
    """
    _check_chunk_size(chunk_size)
    if targets.shape != hidden.shape[:-1] or row_weights.shape != targets.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} and row_weights {tuple(row_weights.shape)} must have the leading shape of "
            f"hidden {tuple(hidden.shape)}"
        )
    matmul_dtype = _matmul_dtype(hidden, weight)
    compute_dtype = torch.promote_types(matmul_dtype, torch.float32)
    scored = targets != ignore_index
    grad_enabled = torch.is_grad_enabled()
    loss, nll = _WeightedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        targets.where(scored, 0).reshape(-1),
        row_weights.detach().to(compute_dtype).where(scored, 0).reshape(-1),
        grad_enabled and hidden.requires_grad,
        grad_enabled and weight.requires_grad,
        chunk_size,
        matmul_dtype,
    )
    return loss, nll.where(scored.reshape(-1), 0).view(targets.shape)


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
                del logits  # before the next chunk's logits are allocated
        return tokens.view(leading), None
    if logprob_temperature <= 0:
        raise ValueError(f"logprob_temperature must be > 0 (or None), got {logprob_temperature}")
    tokens, logprob = _ChunkedTokenLogProb.apply(
        rows, weight, given_tokens, uniform, banned, sample_temperature, logprob_temperature, chunk_size, matmul_dtype
    )
    return tokens.view(leading), logprob.view(leading)


class _LinearDistillationKL(torch.autograd.Function):
    """sum_r row_weights[r] * KL(teacher_r || student_r) over the logits `hidden @ weight.T` of teacher and student
    rows, with `banned_ids` left out of both distributions and the gradients computed in forward.

    `student` and `teacher` (N, H), `weight` (V, H), `row_weights` (N,) in the compute dtype. The teacher is a
    constant (no gradient flows into it). Forward, chunk by chunk: both chunks' log-softmaxes, the rows' KLs and,
    when asked for, d loss / d student logits = row_weight * (softmax(student) - softmax(teacher)), pushed through
    the head at once (as in `_WeightedLinearCrossEntropy`). The per-row KLs are returned without gradient.
    """

    @staticmethod
    def forward(ctx, student, weight, teacher, row_weights, banned_ids, needs_student, needs_weight, chunk_size, matmul_dtype):
        compute_dtype = row_weights.dtype
        matmul_weight = weight.to(matmul_dtype)
        kl = student.new_empty(student.shape[0], dtype=compute_dtype)
        grad_student = torch.empty_like(student) if needs_student else None
        grad_weight = torch.zeros_like(weight, dtype=compute_dtype) if needs_weight else None
        for start in range(0, student.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            rows = student[chunk].to(matmul_dtype)
            log_student = torch.log_softmax(_chunk_logits(rows, matmul_weight, banned_ids), dim=-1)
            log_teacher = torch.log_softmax(_chunk_logits(teacher[chunk].to(matmul_dtype), matmul_weight, banned_ids), dim=-1)
            teacher_probs = log_teacher.exp()
            # banned ids have probability 0 under both; their terms are 0 (not 0 * (-inf - -inf))
            kl[chunk] = torch.where(teacher_probs > 0, teacher_probs * (log_teacher - log_student), 0).sum(dim=-1)
            if needs_student or needs_weight:
                grad_logits = (log_student.exp_() - teacher_probs).mul_(row_weights[chunk].unsqueeze(-1))
                grad_rows = _head_backward(grad_logits, rows, matmul_weight, grad_weight, needs_student)
                if needs_student:
                    grad_student[chunk] = grad_rows
        if needs_weight:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_student, grad_weight)
        ctx.mark_non_differentiable(kl)
        return (kl * row_weights).sum(), kl

    @staticmethod
    def backward(ctx, grad_loss, grad_kl):
        grad_student, grad_weight = ctx.saved_tensors
        if grad_student is not None:
            grad_student = grad_student * grad_loss.to(grad_student.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_student, grad_weight, None, None, None, None, None, None, None


def linear_distillation_kl(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weight: torch.Tensor,
    row_weights: torch.Tensor,
    *,
    banned_ids: torch.LongTensor | list[int],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KL(teacher || student) of the next-token distributions `softmax(hidden @ weight.T)`, and its weighted
    sum, without keeping logits.

    Both distributions leave out `banned_ids` (they are renormalised over the other ids). `kl[r]` equals
    `sum_v p_t[r, v] * (log p_t[r, v] - log p_s[r, v])` (no gradient); `loss` equals `(kl * row_weights).sum()` and
    is differentiable with respect to `student_hidden` and `weight` through the student only: the teacher is a
    constant, as in distillation from a no-grad teacher. Gradients are computed during this call.

    Args:
        student_hidden: (..., H) hidden states whose distribution is trained.
        teacher_hidden: (..., H) hidden states of the target distribution (detached here).
        weight: (V, H) LM-head weight.
        row_weights: (...) weight of each row's KL in `loss` (not differentiated).
        banned_ids: ids left out of both distributions (the meta tokens).
        chunk_size: rows whose (rows, V) logits are materialised at once.

    Returns:
        `loss` (a scalar) and `kl` (...), both in promote(dtype, float32).
    """
    _check_chunk_size(chunk_size)
    if teacher_hidden.shape != student_hidden.shape or row_weights.shape != student_hidden.shape[:-1]:
        raise ValueError(
            f"teacher_hidden {tuple(teacher_hidden.shape)} and row_weights {tuple(row_weights.shape)} must match "
            f"student_hidden {tuple(student_hidden.shape)}"
        )
    matmul_dtype = _matmul_dtype(student_hidden, weight)
    compute_dtype = torch.promote_types(matmul_dtype, torch.float32)
    grad_enabled = torch.is_grad_enabled()
    loss, kl = _LinearDistillationKL.apply(
        student_hidden.reshape(-1, student_hidden.shape[-1]),
        weight,
        teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]),
        row_weights.detach().to(compute_dtype).reshape(-1),
        torch.as_tensor(banned_ids, dtype=torch.long, device=student_hidden.device).reshape(-1),
        grad_enabled and student_hidden.requires_grad,
        grad_enabled and weight.requires_grad,
        chunk_size,
        matmul_dtype,
    )
    return loss, kl.view(row_weights.shape)


__all__ = ["DEFAULT_CHUNK_SIZE", "linear_distillation_kl", "sample_thought_tokens", "weighted_linear_cross_entropy"]
