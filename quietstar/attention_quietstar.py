"""Attention of the parallel thought passes.

Pass 0 is a plain causal pass over the sequence. In pass p >= 1 the query at position i attends to the base keys
j <= i (padding respected) and to the keys of passes 1..p at the same position i, and to nothing else, so its
output equals what a causal forward of `x[0..i], t_1, ..., t_p` gives at `t_p` (docs/design.md, 'Attention').

Every implementation takes the same tensors:

- `query`: (B, H, L, d), RoPE already applied
- `base_key`, `base_value`: (B, Hkv, L, d), from pass 0
- `thought_keys`, `thought_values`: sequences of p tensors (B, Hkv, L, d), the keys and values of passes 1..p
  (pass p last), exactly as the passes produced them. They are never stacked: a stacked copy at every pass would
  make a step keep P (P + 1) / 2 K/V slices per layer instead of P.
- `key_padding_mask`: (B, L) bool, True for real tokens, or None
- returns (B, L, H, d), the layout of transformers' attention functions

GQA (H = G * Hkv) is handled by grouping the query heads, never by repeating K/V.
"""

import importlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward


class ThoughtKVStore:
    """Keys and values of the passes of one parallel-thought forward, per (layer, pass).

    Entries are written by assignment, so recomputing a layer under activation checkpointing rewrites the same
    entry instead of appending. It is a plain object rather than a dict on purpose: FSDP2 rebuilds the containers
    it finds in forward kwargs, which would lose the writes.

    Args:
        key_padding_mask: (B, L) bool, True for real tokens, or None for no padding.
        attention_impl: "dense", "torch" or "triton" (already resolved from "auto").
    """

    def __init__(self, key_padding_mask: torch.Tensor | None, attention_impl: str):
        self.key_padding_mask = key_padding_mask
        self.attention_impl = attention_impl
        self._entries: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def put(self, layer_idx: int, pass_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self._entries[(layer_idx, pass_idx)] = (key, value)

    def base(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._entries[(layer_idx, 0)]

    def thoughts(self, layer_idx: int, last_pass: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values of passes 1..last_pass, each a list of (B, Hkv, L, d) tensors (no copy)."""
        entries = [self._entries[(layer_idx, p)] for p in range(1, last_pass + 1)]
        return [key for key, _ in entries], [value for _, value in entries]


def _causal_key_mask(key_padding_mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
    """(B or 1, 1, L, L) bool: query i may see base key j."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    return allowed


def dense_thought_attention(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
    """The oracle: SDPA over the concatenated keys [base, pass 1, ..., pass p] with an explicit L x L(p+1) mask.

    This is what the reference implementation computes; its cost grows as L^2 (p+1), so it is for tests only.
    """
    batch, kv_heads, length, _ = base_key.shape
    n_passes = len(thought_keys)
    groups = query.shape[1] // kv_heads
    keys = torch.cat([base_key, *thought_keys], dim=2)
    values = torch.cat([base_value, *thought_values], dim=2)
    same_position = torch.eye(length, dtype=torch.bool, device=query.device).repeat(1, n_passes)
    causal = _causal_key_mask(key_padding_mask, length, query.device).expand(batch, 1, -1, -1)
    allowed = torch.cat([causal, same_position.expand(batch, 1, -1, -1)], dim=-1)
    additive = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
    additive = additive.masked_fill(~allowed, torch.finfo(query.dtype).min)
    out = F.scaled_dot_product_attention(
        query, keys, values, attn_mask=additive, scale=scaling, enable_gqa=groups > 1
    )
    return out.transpose(1, 2)


def torch_thought_attention(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
    """Causal scores (L x L) concatenated with the per-position thought scores (L x p), one softmax.

    Exact and differentiable by autograd; memory O(L (L + p)) per head instead of the dense O(L^2 (p + 1)). The
    thought scores and outputs are computed pass by pass from the per-pass tensors, so autograd keeps each pass's
    K/V once (the tensors themselves) rather than a stacked copy per pass.
    """
    kv_heads = base_key.shape[1]
    q = rearrange(query, "b (h g) l d -> b h g l d", h=kv_heads)
    base_scores = torch.einsum("bhgld,bhmd->bhglm", q, base_key) * scaling
    allowed = _causal_key_mask(key_padding_mask, q.shape[3], q.device).unsqueeze(2)
    base_scores = base_scores.masked_fill(~allowed, float("-inf"))
    # Elementwise products, not einsum: einsum would save a contiguous copy of q per pass (p copies in pass p, a
    # P^2 term over a step), where a product saves views of q and of the pass's keys.
    thought_scores = [(q * key.unsqueeze(2)).sum(dim=-1) * scaling for key in thought_keys]
    length = base_scores.shape[-1]
    softmax_dtype = torch.promote_types(query.dtype, torch.float32)
    scores = torch.cat([base_scores, torch.stack(thought_scores, dim=-1)], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    out = torch.einsum("bhglm,bhmd->bhgld", probs[..., :length], base_value)
    for pass_idx, value in enumerate(thought_values):
        out = out + probs[..., length + pass_idx, None] * value.unsqueeze(2)
    return rearrange(out, "b h g l d -> b l (h g) d")


def triton_thought_attention(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
    """The fused Triton kernel of `quietstar.kernels`.

    Imported by name at call time: the kernels are a subpackage of the installed `quietstar` package and are not
    copied next to a checkpoint's remote code, so this implementation needs `pip install quietstar`.
    """
    try:
        kernel = importlib.import_module("quietstar.kernels.thought_attention")
    except ImportError as error:
        raise ImportError(
            "attention_impl='triton' needs the installed quietstar package (quietstar.kernels) and triton; "
            "use attention_impl='torch' otherwise"
        ) from error
    return kernel.thought_attention(
        query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling
    ).transpose(1, 2)


THOUGHT_ATTENTION_FUNCTIONS = {
    "dense": dense_thought_attention,
    "torch": torch_thought_attention,
    "triton": triton_thought_attention,
}


def thought_attention(
    query: torch.Tensor,
    base_key: torch.Tensor,
    base_value: torch.Tensor,
    thought_keys: Sequence[torch.Tensor],
    thought_values: Sequence[torch.Tensor],
    key_padding_mask: torch.Tensor | None,
    scaling: float | None = None,
    impl: str = "torch",
) -> torch.Tensor:
    """Attention of thought pass p (see the module docstring for shapes); returns (B, L, H, d)."""
    if impl not in THOUGHT_ATTENTION_FUNCTIONS:
        raise ValueError(f"unknown thought attention implementation {impl!r}; use one of {list(THOUGHT_ATTENTION_FUNCTIONS)}")
    if query.shape[1] % base_key.shape[1]:
        raise ValueError(
            f"query heads ({query.shape[1]}) must be a multiple of key/value heads ({base_key.shape[1]})"
        )
    if len(thought_keys) != len(thought_values) or not thought_keys:
        raise ValueError(
            f"thought attention needs the same number (>= 1) of thought key and value tensors, got "
            f"{len(thought_keys)} and {len(thought_values)}"
        )
    if scaling is None:
        scaling = 1.0 / math.sqrt(query.shape[-1])
    return THOUGHT_ATTENTION_FUNCTIONS[impl](
        query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling
    )


def resolve_attention_impl(attention_impl: str, device: torch.device) -> str:
    """Map the config's "auto" to triton on CUDA and torch elsewhere."""
    if attention_impl == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return attention_impl


class ThoughtAttentionMixin:
    """Runs the thought passes in a decoder family's attention module; mixed in before the family's attention class.

    Without a `thought_kv` kwarg the module is exactly the family's attention (plain forward, generation with a
    cache). With `thought_kv` (a `ThoughtKVStore`) and `thought_pass=p` it records this layer's K/V for pass p; pass
    0 then attends with transformers' configured backend and the usual causal mask, and pass p >= 1 with
    `thought_attention`. Parameter names are the family's, so its checkpoints load unchanged.

    `project_qkv` computes queries, keys and values exactly as the family's own forward does. The default is the
    Llama/Mistral/Qwen2 projection (q/k/v linear layers, biases included when the family has them, then RoPE); a
    family with extras (Qwen3's q/k norms) overrides it.
    """

    def project_qkv(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, hidden) -> query (B, H, L, d) and key, value (B, Hkv, L, d), RoPE applied to query and key."""
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        return query, key, value

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values=None,
        thought_kv: ThoughtKVStore | None = None,
        thought_pass: int = 0,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if thought_kv is None:
            return super().forward(hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
        input_shape = hidden_states.shape[:-1]
        query, key, value = self.project_qkv(hidden_states, position_embeddings)
        if torch.is_autocast_enabled(query.device.type):
            # RoPE's fp32 tables promote query and key to fp32 while value leaves its projection in the autocast
            # dtype: cast all three to the autocast dtype once, as SDPA does under autocast, so the fused kernel gets
            # one dtype and the store keeps each pass's K/V in it
            dtype = torch.get_autocast_dtype(query.device.type)
            query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        thought_kv.put(self.layer_idx, thought_pass, key, value)
        if thought_pass == 0:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, _ = attention_interface(
                self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
            )
        else:
            base_key, base_value = thought_kv.base(self.layer_idx)
            thought_keys, thought_values = thought_kv.thoughts(self.layer_idx, thought_pass)
            attn_output = thought_attention(
                query,
                base_key,
                base_value,
                thought_keys,
                thought_values,
                thought_kv.key_padding_mask,
                self.scaling,
                thought_kv.attention_impl,
            )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), None
