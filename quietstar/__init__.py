"""quietstar: Quiet-STaR (language models that think before speaking) for HuggingFace causal LMs.

Importing the package registers `QuietStarConfig` and `QuietStarForCausalLM` with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(checkpoint)` returns the thinking model. Checkpoints also carry the modeling
code, so `trust_remote_code=True` loads them where the package is not installed.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_quietstar import QuietStarConfig
from .meta_tokens import END_OF_THOUGHT, START_OF_THOUGHT, add_thought_tokens
from .modeling_quietstar import QuietStarCausalLMOutput, QuietStarForCausalLM, QuietStarMixingHead
from .tokenizer import load_mistral_tokenizer

AutoConfig.register(QuietStarConfig.model_type, QuietStarConfig, exist_ok=True)
AutoModelForCausalLM.register(QuietStarConfig, QuietStarForCausalLM, exist_ok=True)
QuietStarConfig.register_for_auto_class()
QuietStarForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__version__ = "0.1.0"

__all__ = [
    "END_OF_THOUGHT",
    "START_OF_THOUGHT",
    "QuietStarCausalLMOutput",
    "QuietStarConfig",
    "QuietStarForCausalLM",
    "QuietStarMixingHead",
    "add_thought_tokens",
    "load_mistral_tokenizer",
]
