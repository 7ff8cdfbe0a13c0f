"""Readable PyTorch reference of the thought-pass attention computed by `thought_attention.py`.

For query row i of pass p the visible keys are the base keys j <= i that are not padding and the thought keys of
passes 1..p at the same position i (always visible). One softmax runs over all of them:

    s_ij = scale * q_i . kb_j      (j <= i, not padding)        t_is = scale * q_i . kt_s[i]     (s = 1..p)
    lse_i = log(sum_j exp(s_ij) + sum_s exp(t_is))
    o_i = sum_j exp(s_ij - lse_i) vb_j + sum_s exp(t_is - lse_i) vt_s[i]

The kernel computes exactly this, block by block; this file spells it out with dense L x L scores (fp32) for tests.
"""

from collections.abc import Sequence

import torch


def thought_attention_reference(
    q: torch.Tensor,
    kb: torch.Tensor,
    vb: torch.Tensor,
    kt: Sequence[torch.Tensor],
    vt: Sequence[torch.Tensor],
    key_padding_mask: torch.Tensor | None,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and natural-log LSE of the thought-pass attention, computed in fp32.

    Args:
        q: (B, H, L, d) queries of the pass.
        kb, vb: (B, Hkv, L, d) base keys and values; H is a multiple of Hkv (GQA).
        kt, vt: sequences of p tensors (B, Hkv, L, d), the keys and values of passes 1..p (pass p last).
        key_padding_mask: (B, L) bool, True for real tokens, or None.
        scaling: score scale, usually d ** -0.5.

    Returns:
        out: (B, H, L, d) in q's dtype; lse: (B, H, L) fp32.
    """
    groups = q.shape[1] // kb.shape[1]
    qf = q.float()
    kb, vb = kb.float().repeat_interleave(groups, 1), vb.float().repeat_interleave(groups, 1)
    kt = torch.stack(list(kt), dim=2).float().repeat_interleave(groups, 1)  # (B, H, p, L, d)
    vt = torch.stack(list(vt), dim=2).float().repeat_interleave(groups, 1)
    length = q.shape[2]

    base_scores = scaling * qf @ kb.transpose(-1, -2)  # (B, H, L, L)
    visible = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]
    base_scores = base_scores.masked_fill(~visible, float("-inf"))
    thought_scores = scaling * torch.einsum("bhld,bhpld->bhlp", qf, kt)  # (B, H, L, p)

    scores = torch.cat([base_scores, thought_scores], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    out = probs[..., :length] @ vb + torch.einsum("bhlp,bhpld->bhld", probs[..., length:], vt)
    return out.to(q.dtype), lse
