"""The unfused LM-head references: the oracle for every op of `quietstar.models.lm_head`.

Each materialises the full (..., V) logits (what the chunked ops avoid) and lets autograd differentiate through them.
Logits are computed in float32, or float64 when an input is float64, as the chunked ops do.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def unfused_logits(hidden, weight, banned_ids=None):
    """(..., H) hidden states and a (V, H) head weight -> (..., V) logits, with `banned_ids` at -inf."""
    logits = F.linear(hidden, weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if banned_ids is not None:
        logits = logits.index_fill(-1, torch.as_tensor(banned_ids, device=logits.device), float("-inf"))
    return logits


def unfused_nll(hidden, weight, targets, ignore_index=IGNORE_INDEX):
    """(..., H), (V, H) and (...) targets -> (...) per-row NLL (0 where the target is `ignore_index`)."""
    logits = unfused_logits(hidden, weight)
    nll = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=ignore_index, reduction="none")
    return nll.view_as(targets)


def unfused_pick(logits, temperature):
    """The sampler on (..., V) logits: argmax at temperature 0, else the inverse CDF of softmax(logits / temperature)
    in float32 at one torch.rand number per row (the random numbers the chunked sampler consumes)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.detach().float() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    uniform = torch.rand(*probs.shape[:-1], 1) * cdf[..., -1:]
    tokens = torch.searchsorted(cdf, uniform, right=True).clamp(max=probs.shape[-1] - 1)
    drawable = probs.gather(-1, tokens) > 0
    return torch.where(drawable, tokens, probs.argmax(dim=-1, keepdim=True)).squeeze(-1)


def unfused_logprob(logits, tokens, temperature):
    """log softmax(logits / temperature) (..., V) at `tokens` (...), in float32 or float64."""
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    logprobs = torch.log_softmax(logits.to(compute_dtype) / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def unfused_weighted_linear_cross_entropy(hidden, weight, targets, row_weights, *, ignore_index, chunk_size):
    """Drop-in for `weighted_linear_cross_entropy` (`chunk_size` ignored): the weighted NLL sum and the NLLs."""
    nll = unfused_nll(hidden, weight, targets, ignore_index)
    return (nll * row_weights).sum(), nll.detach()


def unfused_sample_thought_tokens(
    hidden, weight, *, banned_ids, sample_temperature, logprob_temperature, given_tokens, chunk_size
):
    """Drop-in for `sample_thought_tokens` (`chunk_size` ignored): tokens and their log-probability, or None."""
    logits = unfused_logits(hidden, weight, banned_ids)
    tokens = unfused_pick(logits, sample_temperature) if given_tokens is None else given_tokens
    if logprob_temperature is None:
        return tokens, None
    return tokens, unfused_logprob(logits, tokens, logprob_temperature)


def unfused_distillation_kl(student, teacher, weight, banned_ids):
    """(..., H) student and teacher hidden states -> (...) KL(teacher || student) over the vocabulary without
    `banned_ids`, the teacher a constant."""
    allowed = torch.ones(weight.shape[0], dtype=torch.bool)
    allowed[torch.as_tensor(banned_ids)] = False
    log_student = F.log_softmax(unfused_logits(student, weight)[..., allowed], dim=-1)
    log_teacher = F.log_softmax(unfused_logits(teacher.detach(), weight.detach())[..., allowed], dim=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
