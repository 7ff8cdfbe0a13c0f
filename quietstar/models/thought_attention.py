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
        attention_impl: "torch" or "triton" (already resolved from "auto").
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


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """Softmax and merge dtype: float32 for half-precision inputs, else the inputs' own."""
    return torch.promote_types(query.dtype, torch.float32)


def _base_attention_mask(key_padding_mask: torch.Tensor | None, length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, 1, L, L) additive mask of the base keys (0 where query i may see key j, -inf elsewhere), or None when the
    causal mask alone is right (no padding)."""
    if key_padding_mask is None:
        return None
    causal = torch.ones(length, length, dtype=torch.bool, device=key_padding_mask.device).tril()
    allowed = causal[None, None] & key_padding_mask[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def _fused_base_forward(query, key, value, mask, scaling):
    """Causal attention of the base keys by PyTorch's fused CPU flash-attention kernel (GQA and masks included):
    out (B, H, L, d) and the fp32 log-sum-exp (B, H, L) of every query's scores."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, mask is None, attn_mask=mask, scale=scaling
    )


def _fused_base_backward(grad_out, query, key, value, out, lse, mask, scaling):
    """The fused CPU kernel's backward: (dQ, dK, dV) from dO, the inputs, O and the LSE."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad_out, query, key, value, out, lse, 0.0, mask is None, attn_mask=mask, scale=scaling
    )


def _base_scores(query, key, mask, scaling):
    """(B, Hkv, G, L, L) masked scores of the base keys in the compute dtype (the plain-torch path)."""
    compute = _compute_dtype(query)
    q = rearrange(query, "b (h g) l d -> b h g l d", h=key.shape[1]).to(compute)
    scores = torch.einsum("bhgld,bhmd->bhglm", q, key.to(compute)) * scaling
    if mask is None:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        return scores.masked_fill_(~causal, float("-inf"))
    return scores.add_(mask.unsqueeze(2))


def _math_base_forward(query, key, value, mask, scaling):
    """`_fused_base_forward` in plain torch, for devices without the fused CPU kernel; the L x L scores live during
    the call only."""
    scores = _base_scores(query, key, mask, scaling)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num_(0.0)
    out = torch.einsum("bhglm,bhmd->bhgld", probs, value.to(probs.dtype))
    return rearrange(out, "b h g l d -> b (h g) l d").to(query.dtype), rearrange(lse, "b h g l -> b (h g) l")


def _math_base_backward(grad_out, query, key, value, out, lse, mask, scaling):
    """`_fused_base_backward` in plain torch: P = exp(S - LSE), dS = P (dO V^T - rowsum(dO * O))."""
    groups = query.shape[1] // key.shape[1]
    grouped = "b (h g) l d -> b h g l d"
    scores = _base_scores(query, key, mask, scaling)
    compute = scores.dtype
    probs = torch.exp(scores - rearrange(lse, "b (h g) l -> b h g l", g=groups).unsqueeze(-1)).nan_to_num_(0.0)
    grad_out = rearrange(grad_out.to(compute), grouped, g=groups)
    delta = (grad_out * rearrange(out.to(compute), grouped, g=groups)).sum(-1, keepdim=True)
    grad_value = torch.einsum("bhglm,bhgld->bhmd", probs, grad_out)
    grad_scores = probs * (torch.einsum("bhgld,bhmd->bhglm", grad_out, value.to(compute)) - delta) * scaling
    grad_query = torch.einsum("bhglm,bhmd->bhgld", grad_scores, key.to(compute))
    grad_key = torch.einsum("bhglm,bhgld->bhmd", grad_scores, rearrange(query.to(compute), grouped, g=groups))
    return rearrange(grad_query, "b h g l d -> b (h g) l d"), grad_key, grad_value


def _thought_scores(query, thought_keys, scaling):
    """(B, Hkv, G, L, p) scores, in the compute dtype, of each query against the thought keys of its own position."""
    compute = _compute_dtype(query)
    q = rearrange(query, "b (h g) l d -> b h g l d", h=thought_keys[0].shape[1]).to(compute)
    scores = [torch.einsum("bhgld,bhld->bhgl", q, key.to(compute)) for key in thought_keys]
    return torch.stack(scores, dim=-1) * scaling


class _MergedThoughtAttention(torch.autograd.Function):
    """The causal base attention (a fused kernel and its LSE) merged with the p thought scores under one softmax.

    Forward: (O_b, LSE_b) of the base attention, thought scores t_k = scale q . kt_k, the joint
    LSE = logaddexp(LSE_b, logsumexp_k t_k), and O = a O_b + sum_k p_k vt_k with a = exp(LSE_b - LSE) and
    p_k = exp(t_k - LSE). A query with no visible base key (left padding) has LSE_b = -inf, so a = 0.
    Backward, with Delta = rowsum(dO * O): the thought part by hand, dt_k = p_k (dO . vt_k - Delta); the base part by
    the base kernel's own backward, given a dO as the output gradient and the merged O in place of O_b. The kernel
    recomputes P_b = exp(S - LSE_b) and forms dS = P_b (a dO . v_j - rowsum(a dO * O)) = P (dO . v_j - Delta), where
    P = a P_b are the joint probabilities of the base keys: exactly the gradient of the joint softmax, with no
    gradient through LSE_b needed. Saved: the inputs, O and the (B, H, L) fp32 LSEs; never an L x L tensor.
    """

    @staticmethod
    def forward(ctx, query, base_key, base_value, key_padding_mask, scaling, dtype, n_passes, *thought_kv):
        thought_keys, thought_values = thought_kv[:n_passes], thought_kv[n_passes:]
        kv_heads, compute = base_key.shape[1], torch.promote_types(dtype, torch.float32)
        fused = query.device.type == "cpu"
        mask = _base_attention_mask(key_padding_mask, query.shape[2], dtype)
        base_out, kernel_lse = (_fused_base_forward if fused else _math_base_forward)(
            query.to(dtype), base_key.to(dtype), base_value.to(dtype), mask, scaling
        )
        base_lse = kernel_lse.to(compute)
        if key_padding_mask is not None:
            no_base_key = ~key_padding_mask.cumsum(-1).bool()
            base_lse = base_lse.masked_fill(no_base_key[:, None, :], float("-inf"))
        base_lse_g = rearrange(base_lse, "b (h g) l -> b h g l", h=kv_heads)
        scores = _thought_scores(query, thought_keys, scaling)
        lse = torch.logaddexp(base_lse_g, torch.logsumexp(scores, dim=-1))
        out = torch.exp(base_lse_g - lse).unsqueeze(-1) * rearrange(
            base_out.to(compute), "b (h g) l d -> b h g l d", h=kv_heads
        )
        for pass_idx, value in enumerate(thought_values):
            out = out + torch.exp(scores[..., pass_idx] - lse).unsqueeze(-1) * value.to(compute).unsqueeze(2)
        out = rearrange(out, "b h g l d -> b (h g) l d").to(dtype)
        ctx.save_for_backward(query, base_key, base_value, out, kernel_lse, base_lse, lse, key_padding_mask, *thought_kv)
        ctx.scaling, ctx.n_passes, ctx.fused = scaling, n_passes, fused
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, base_key, base_value, out, kernel_lse, base_lse, lse, key_padding_mask, *thought_kv = ctx.saved_tensors
        thought_keys, thought_values = thought_kv[: ctx.n_passes], thought_kv[ctx.n_passes :]
        kv_heads, compute, scaling = base_key.shape[1], lse.dtype, ctx.scaling
        grouped = "b (h g) l d -> b h g l d"
        grad_out_g = rearrange(grad_out.to(compute), grouped, h=kv_heads)
        delta = (grad_out_g * rearrange(out.to(compute), grouped, h=kv_heads)).sum(-1)
        query_g = rearrange(query.to(compute), grouped, h=kv_heads)
        scores = _thought_scores(query, thought_keys, scaling)
        grad_query = torch.zeros_like(query_g)
        grad_thought_keys, grad_thought_values = [], []
        for pass_idx, (key, value) in enumerate(zip(thought_keys, thought_values)):
            probs = torch.exp(scores[..., pass_idx] - lse)
            grad_scores = probs * (torch.einsum("bhgld,bhld->bhgl", grad_out_g, value.to(compute)) - delta) * scaling
            grad_query += grad_scores.unsqueeze(-1) * key.to(compute).unsqueeze(2)
            grad_thought_keys.append(torch.einsum("bhgl,bhgld->bhld", grad_scores, query_g).to(key.dtype))
            grad_thought_values.append(torch.einsum("bhgl,bhgld->bhld", probs, grad_out_g).to(value.dtype))
        base_weight = torch.exp(rearrange(base_lse, "b (h g) l -> b h g l", h=kv_heads) - lse).unsqueeze(-1)
        dtype = out.dtype
        base_grad_out = rearrange(base_weight * grad_out_g, "b h g l d -> b (h g) l d").to(dtype)
        mask = _base_attention_mask(key_padding_mask, query.shape[2], dtype)
        grad_query_base, grad_base_key, grad_base_value = (_fused_base_backward if ctx.fused else _math_base_backward)(
            base_grad_out, query.to(dtype), base_key.to(dtype), base_value.to(dtype), out, kernel_lse, mask, scaling
        )
        grad_query = rearrange(grad_query, "b h g l d -> b (h g) l d") + grad_query_base.to(compute)
        return (
            grad_query.to(query.dtype),
            grad_base_key.to(base_key.dtype),
            grad_base_value.to(base_value.dtype),
            None,
            None,
            None,
            None,
            *grad_thought_keys,
            *grad_thought_values,
        )


def torch_thought_attention(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
    """The causal base attention by a fused kernel with its log-sum-exp, merged with the thought scores of each
    position under one softmax (`_MergedThoughtAttention`).

    Exact, and no L x L tensor is kept: on CPU the base part is PyTorch's fused flash-attention kernel, elsewhere the
    same contract in plain torch with the L x L scores living during the call only. Saved for backward: the inputs
    (each pass's K/V once, never a stacked copy), the output and (B, H, L) fp32 log-sum-exps.
    """
    device_type = query.device.type
    # Under autocast the base part runs in the autocast dtype, as the plain pass's SDPA does (RoPE leaves q and k in
    # float32 there while v is in the autocast dtype); the casts are made inside, so they are not kept for backward.
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else query.dtype
    out = _MergedThoughtAttention.apply(
        query, base_key, base_value, key_padding_mask, scaling, dtype, len(thought_keys), *thought_keys, *thought_values
    )
    return out.transpose(1, 2)


def triton_thought_attention(query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling):
    """The fused Triton kernel of `quietstar.ops.thought_attention`; fp32 inputs on CUDA run
    `torch_thought_attention` instead, since the kernel's tf32 path spills registers and is slow.

    Imported by name at call time: the kernels are a subpackage of the installed `quietstar` package and are not
    copied next to a checkpoint's remote code, so this implementation needs `pip install quietstar`.
    """
    if query.dtype == torch.float32 and query.is_cuda:
        return torch_thought_attention(
            query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling
        )
    try:
        kernel = importlib.import_module("quietstar.ops.thought_attention.triton")
    except ImportError as error:
        raise ImportError(
            "attention_impl='triton' needs the installed quietstar package (quietstar.ops) and triton; "
            "use attention_impl='torch' otherwise"
        ) from error
    return kernel.thought_attention(
        query, base_key, base_value, thought_keys, thought_values, key_padding_mask, scaling
    ).transpose(1, 2)


THOUGHT_ATTENTION_FUNCTIONS = {"torch": torch_thought_attention, "triton": triton_thought_attention}
# The values of the config's `attention_impl`: "auto" picks one of the implementations by device.
ATTENTION_IMPLEMENTATIONS = ("auto", *THOUGHT_ATTENTION_FUNCTIONS)


def check_thought_attention_inputs(query, base_key, base_value, thought_keys, thought_values, key_padding_mask):
    """Raise a ValueError naming the first argument that does not fit the shapes of the module docstring.

    The one place the arguments are checked: `thought_attention` calls it before any implementation runs.
    """
    if isinstance(thought_keys, torch.Tensor) or isinstance(thought_values, torch.Tensor):
        raise ValueError("thought_keys and thought_values must be sequences (list/tuple) of p tensors (B, Hkv, L, d)")
    if len(thought_keys) != len(thought_values) or not thought_keys:
        raise ValueError(
            f"thought attention needs the same number (>= 1) of thought key and value tensors, got "
            f"{len(thought_keys)} and {len(thought_values)}"
        )
    if query.dim() != 4 or base_key.dim() != 4:
        raise ValueError(
            f"thought attention expects query (B, H, L, d) and base_key (B, Hkv, L, d); got {tuple(query.shape)} and "
            f"{tuple(base_key.shape)}"
        )
    batch, heads, length, head_dim = query.shape
    kv_heads = base_key.shape[1]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
    expected = (batch, kv_heads, length, head_dim)
    named = {"base_key": base_key, "base_value": base_value}
    named |= {f"thought_keys[{i}]": t for i, t in enumerate(thought_keys)}
    named |= {f"thought_values[{i}]": t for i, t in enumerate(thought_values)}
    for name, tensor in named.items():
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name} must be (B, Hkv, L, d) = {expected}; got {tuple(tensor.shape)}")
    tensors = [query, *named.values()]
    if not query.is_floating_point() or any(t.dtype != query.dtype for t in tensors):
        raise ValueError(
            f"thought attention needs one floating dtype for query, keys and values; got "
            f"{sorted({str(t.dtype) for t in tensors})}"
        )
    if key_padding_mask is not None and (
        key_padding_mask.shape != (batch, length) or key_padding_mask.dtype != torch.bool
    ):
        raise ValueError(
            f"key_padding_mask must be a bool tensor of shape (B, L) = {(batch, length)}; got "
            f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    devices = {t.device for t in tensors} | ({key_padding_mask.device} if key_padding_mask is not None else set())
    if len(devices) != 1:
        raise ValueError(f"thought attention needs all inputs on one device; got {sorted(map(str, devices))}")


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
    """Attention of thought pass p (see the module docstring for shapes) by the implementation `impl`, "torch" or
    "triton", after checking the arguments; returns (B, L, H, d)."""
    if impl not in THOUGHT_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"unknown thought attention implementation {impl!r}; use one of {list(THOUGHT_ATTENTION_FUNCTIONS)}"
        )
    check_thought_attention_inputs(query, base_key, base_value, thought_keys, thought_values, key_padding_mask)
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
