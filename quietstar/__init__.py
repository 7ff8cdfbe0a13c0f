"""quietstar: Quiet-STaR (language models that think before speaking) for HuggingFace causal LMs.

Importing the package registers the Quiet-STaR config and causal-LM class of every supported family (Mistral,
Llama, Qwen2, Qwen3) with transformers' Auto classes, so `AutoModelForCausalLM.from_pretrained(checkpoint)` returns
the thinking model. Checkpoints also carry the modeling code, so `trust_remote_code=True` loads them where the
package is not installed.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .models.configuration_quietstar_mistral import QuietStarConfig
from .models.configuration_quietstar_llama import QuietStarLlamaConfig
from .models.configuration_quietstar_qwen2 import QuietStarQwen2Config
from .models.configuration_quietstar_qwen3 import QuietStarQwen3Config
from .families import (
    FAMILIES,
    NEW_PARTS_MESSAGE,
    SMOLLM2_GGUF,
    config_from_base,
    family_of,
    from_base,
    installed_package_directory,
    smollm2_gguf,
)
from .checkpoint_files import CheckpointError
from .meta_tokens import END_OF_THOUGHT, START_OF_THOUGHT, add_thought_tokens
from .models.modeling_quietstar_mistral import QuietStarForCausalLM
from .models.modeling_quietstar_llama import QuietStarLlamaForCausalLM
from .models.modeling_quietstar_qwen2 import QuietStarQwen2ForCausalLM
from .models.modeling_quietstar_qwen3 import QuietStarQwen3ForCausalLM
from .models.configuration_quietstar import QuietStarConfigMixin
from .models.modeling_quietstar import QuietStarModelMixin
from .models.thinking_parts import QuietStarCausalLMOutput, QuietStarMixingHead, QuietStarThoughtGate
from .training.thought_gate_fitting import ThoughtGateFit, fit_thought_gate
from .tokenizer import load_mistral_tokenizer

for _family in FAMILIES:
    AutoConfig.register(_family.model_type, _family.config_class, exist_ok=True)
    AutoModelForCausalLM.register(_family.config_class, _family.model_class, exist_ok=True)
    _family.config_class.register_for_auto_class()
    _family.model_class.register_for_auto_class("AutoModelForCausalLM")
del _family

__version__ = "0.2.0"

__all__ = [
    "END_OF_THOUGHT",
    "NEW_PARTS_MESSAGE",
    "SMOLLM2_GGUF",
    "START_OF_THOUGHT",
    "CheckpointError",
    "QuietStarCausalLMOutput",
    "QuietStarConfig",
    "QuietStarConfigMixin",
    "QuietStarForCausalLM",
    "QuietStarLlamaConfig",
    "QuietStarLlamaForCausalLM",
    "QuietStarMixingHead",
    "QuietStarModelMixin",
    "QuietStarQwen2Config",
    "QuietStarQwen2ForCausalLM",
    "QuietStarQwen3Config",
    "QuietStarQwen3ForCausalLM",
    "QuietStarThoughtGate",
    "ThoughtGateFit",
    "add_thought_tokens",
    "config_from_base",
    "family_of",
    "fit_thought_gate",
    "from_base",
    "installed_package_directory",
    "load_mistral_tokenizer",
    "smollm2_gguf",
]
