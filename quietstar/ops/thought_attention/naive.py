"""The oracle of thought attention: dense scores over the concatenated keys under an explicit L x L(p+1) mask.

Query row i of thought pass p sees the base keys j <= i that are not padding and the keys of passes 1..p at its
own position i (always visible), under one softmax:

    s_ij = scale * q_i . base_key_j   (j <= i, not padding)     t_is = scale * q_i . thought_keys[s][i]   (s = 1..p)
    lse_i = log(sum_j exp(s_ij) + sum_s exp(t_is))
    o_i = sum_j exp(s_ij - lse_i) base_value_j + sum_s exp(t_is - lse_i) thought_values[s][i]

This file writes that out with nothing fused: the keys [base, pass 1, ..., pass p] are concatenated, K/V repeated to
the query heads, and an (L, L(p+1)) boolean mask selects what each row sees. Its cost grows as L^2 (p+1); it is the
reference that every other implementation (the model layer's `torch` implementation, the Triton kernels) is tested
against, forward and, through autograd on it, backward.
"""

from collections.abc import Sequence

import torch


def thought_visibility_mask(key_padding_mask: torch.Tensor | None, length: int, n_passes: int,
                            device: torch.device) -> torch.Tensor:
    """(B or 1, 1, L, L (p + 1)) bool: True where query row i sees key column c of [base, pass 1, ..., pass p].

    Columns 0..L-1 are the base keys (causal, padding hidden); column s L + i is pass s's key at row i.
    """
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if key_padding_mask is not None:
        causal = causal & key_padding_mask[:, None, None, :]
    same_position = torch.eye(length, dtype=torch.bool, device=device).repeat(1, n_passes)
    return torch.cat([causal, same_position.expand(causal.shape[0], 1, -1, -1)], dim=-1)


def naive_thought_attention(
    query: torch.Tensor,
    base_key: torch.Tensor,
    base_value: torch.Tensor,
    thought_keys: Sequence[torch.Tensor],
    thought_values: Sequence[torch.Tensor],
    key_padding_mask: torch.Tensor | None,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and natural-log LSE of thought pass p, in float32 or wider (float64 inputs stay float64).

    Args:
        query: (B, H, L, d) queries of the pass.
        base_key, base_value: (B, Hkv, L, d) keys and values of the base pass; H is a multiple of Hkv (GQA).
        thought_keys, thought_values: sequences of p tensors (B, Hkv, L, d), the keys and values of passes 1..p
            (pass p last).
        key_padding_mask: (B, L) bool, True for real tokens, or None.
        scaling: score scale, usually d ** -0.5.

    Returns:
        out: (B, H, L, d) in the query's dtype; lse: (B, H, L) in the compute dtype.
    """
    compute = torch.promote_types(query.dtype, torch.float32)
    groups = query.shape[1] // base_key.shape[1]
    length, n_passes = query.shape[2], len(thought_keys)
    keys = torch.cat([base_key, *thought_keys], dim=2).to(compute).repeat_interleave(groups, 1)  # (B, H, L(p+1), d)
    values = torch.cat([base_value, *thought_values], dim=2).to(compute).repeat_interleave(groups, 1)
    scores = scaling * query.to(compute) @ keys.transpose(-1, -2)  # (B, H, L, L(p+1))
    visible = thought_visibility_mask(key_padding_mask, length, n_passes, query.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ values
    return out.to(query.dtype), lse
