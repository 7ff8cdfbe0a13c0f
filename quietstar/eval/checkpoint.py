"""Loading a checkpoint and its tokenizer for evaluation and inspection."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_checkpoint(
    checkpoint: str, device: str = "auto", dtype: str = "auto", **config_overrides
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `checkpoint` (a directory or hub id with a tokenizer) in eval mode.

    `device` "auto" picks CUDA when available; `dtype` "auto" is bfloat16 on CUDA and float32 elsewhere.
    `config_overrides` set config fields (for example `inference_thought_temperature=1.0`).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=DTYPES[dtype], **config_overrides)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return model.to(device).eval(), tokenizer
