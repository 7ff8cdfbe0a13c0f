"""The supported decoder families, and starting a Quiet-STaR model from a base checkpoint of any of them.

A family is a base `model_type` of transformers (for example "llama") with its Quiet-STaR config and causal-LM
classes. `from_base` reads a base checkpoint's config, picks the family from its `model_type`, and loads the base
weights into the thinking model (the new parts, the mixing head and the thought embeddings, are initialised; add
the meta tokens with `add_thought_tokens` next). A checkpoint of any other family is refused with an error that
names its `model_type`, rather than loaded into the wrong architecture.
"""

from dataclasses import dataclass

from transformers import AutoConfig, PretrainedConfig

from .configuration_quietstar import QuietStarConfig
from .configuration_quietstar_llama import QuietStarLlamaConfig
from .configuration_quietstar_qwen2 import QuietStarQwen2Config
from .configuration_quietstar_qwen3 import QuietStarQwen3Config
from .modeling_quietstar import QuietStarForCausalLM
from .modeling_quietstar_llama import QuietStarLlamaForCausalLM
from .modeling_quietstar_qwen2 import QuietStarQwen2ForCausalLM
from .modeling_quietstar_qwen3 import QuietStarQwen3ForCausalLM
from .thinking_config import QuietStarConfigMixin
from .thinking_model import QuietStarModelMixin


@dataclass(frozen=True)
class Family:
    """A supported decoder family: the base `model_type` and its Quiet-STaR classes."""

    base_model_type: str
    config_class: type[QuietStarConfigMixin]
    model_class: type[QuietStarModelMixin]

    @property
    def model_type(self) -> str:
        """The `model_type` Quiet-STaR checkpoints of this family are saved under."""
        return self.config_class.model_type


FAMILIES = (
    Family("mistral", QuietStarConfig, QuietStarForCausalLM),
    Family("llama", QuietStarLlamaConfig, QuietStarLlamaForCausalLM),
    Family("qwen2", QuietStarQwen2Config, QuietStarQwen2ForCausalLM),
    Family("qwen3", QuietStarQwen3Config, QuietStarQwen3ForCausalLM),
)

# Base-config fields that describe the checkpoint rather than the architecture; the Quiet-STaR config sets its own.
_NOT_COPIED = ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path")


def family_of(model_type: str, source: str = "the config") -> Family:
    """The family of a base or Quiet-STaR `model_type` ("llama" or "quietstar_llama"); a `ValueError` otherwise."""
    for family in FAMILIES:
        if model_type in (family.base_model_type, family.model_type):
            return family
    supported = ", ".join(family.base_model_type for family in FAMILIES)
    raise ValueError(f"{source}: model_type {model_type!r} is not supported by quietstar (supported families: {supported})")


def config_from_base(base_config: PretrainedConfig, **quietstar_fields) -> QuietStarConfigMixin:
    """The Quiet-STaR config of `base_config`'s family with every architecture field copied and the given knobs.

    Mistral's sliding window is dropped (Quiet-STaR thinks with full attention; Mistral 7B v0.1's 4096-token window
    changes nothing at sequence lengths up to 4096). Other families' sliding-window layers are refused by the config.
    """
    family = family_of(base_config.model_type, f"base config {getattr(base_config, '_name_or_path', '') or ''}".strip())
    fields = {key: value for key, value in base_config.to_dict().items() if key not in _NOT_COPIED}
    if family.base_model_type == "mistral":
        fields.pop("sliding_window", None)
    fields.update(quietstar_fields)
    return family.config_class(**fields)


def from_base(name_or_path: str, *, dtype=None, local_files_only: bool = False, **quietstar_fields) -> QuietStarModelMixin:
    """Load a base checkpoint (hub id or directory) of any supported family as a Quiet-STaR model.

    Args:
        name_or_path: hub id or local directory of a Mistral, Llama, Qwen2 or Qwen3 causal LM.
        dtype: dtype of the loaded weights (as in `from_pretrained`); the checkpoint's when None.
        local_files_only: do not try the hub.
        **quietstar_fields: Quiet-STaR config fields (`n_thought_tokens=11`, `n_thoughts=2`, ...).

    Returns:
        the family's `QuietStar...ForCausalLM` with the base weights; call `add_thought_tokens(model, tokenizer)`
        before thinking.
    """
    base_config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
    config = config_from_base(base_config, **quietstar_fields)
    model_class = family_of(config.model_type).model_class
    return model_class.from_pretrained(name_or_path, config=config, dtype=dtype, local_files_only=local_files_only)


__all__ = ["FAMILIES", "Family", "config_from_base", "family_of", "from_base"]
