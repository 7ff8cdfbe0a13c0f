"""Quiet-STaR on Qwen3: `Qwen3ForCausalLM` that thinks before each token.

Qwen3: q_norm and k_norm are applied per head before RoPE, and head_dim need not be
hidden_size / num_attention_heads. The algorithm is `modeling_quietstar.QuietStarModelMixin`, shared by every family.
"""

import torch
from transformers import Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, apply_rotary_pos_emb

from .thought_attention import ThoughtAttentionMixin
from .configuration_quietstar_qwen3 import QuietStarQwen3Config
from .modeling_quietstar import QuietStarModelMixin


class QuietStarQwen3Attention(ThoughtAttentionMixin, Qwen3Attention):
    """Qwen3 attention that also runs the thought passes (`ThoughtAttentionMixin`).

    The thought passes project like Qwen3's own forward: q_norm and k_norm per head, then RoPE.
    """

    def project_qkv(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, hidden) -> query (B, H, L, d) and key, value (B, Hkv, L, d), q/k normed, then RoPE applied."""
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        key = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        return query, key, value


class QuietStarQwen3ForCausalLM(QuietStarModelMixin, Qwen3ForCausalLM):
    """Qwen3 causal LM with Quiet-STaR thinking; see `QuietStarModelMixin` and `QuietStarQwen3Config`."""

    config_class = QuietStarQwen3Config
    thought_attention_class = QuietStarQwen3Attention


__all__ = ["QuietStarQwen3Attention", "QuietStarQwen3ForCausalLM"]
