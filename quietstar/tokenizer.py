"""The real Mistral 7B v0.1 tokenizer, shipped with the package for offline use.

`assets/mistral_tokenizer/tokenizer.model` is Mistral 7B v0.1's SentencePiece model (32000 tokens), taken from the
Apache-2.0 `mistral-common` distribution (its LICENSE sits beside it). transformers converts it to a fast tokenizer
with the same ids as the hub's `mistralai/Mistral-7B-v0.1` tokenizer.
"""

import json
from importlib import resources
from pathlib import Path

from transformers import LlamaTokenizer, PreTrainedTokenizerBase

# Keys transformers records in `init_kwargs` about how a tokenizer was loaded (offline mode, a local directory).
# Saved into tokenizer_config.json they would be replayed on every later load, so they are dropped.
LOAD_TIME_KEYS = ("local_files_only", "is_local")


def forget_load_options(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Drop `LOAD_TIME_KEYS` from `tokenizer.init_kwargs` so `save_pretrained` does not store them; return it."""
    for key in LOAD_TIME_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def load_sentencepiece_tokenizer(directory: str | Path, **kwargs) -> PreTrainedTokenizerBase:
    """A Llama/Mistral-style tokenizer from the `tokenizer.model` (and `tokenizer_config.json`) in `directory`.

    `LlamaTokenizer` keeps SentencePiece's leading-space marker, so the first word of a text gets the same id as
    with `sentencepiece` itself (Mistral: "Let" -> 3169, not the 8779 of a tokenizer that drops the marker).
    BOS is added unless `tokenizer_config.json` or `add_bos_token=False` says otherwise.
    """
    config_file = Path(directory) / "tokenizer_config.json"
    if not (config_file.is_file() and "add_bos_token" in json.loads(config_file.read_text())):
        kwargs.setdefault("add_bos_token", True)
    return forget_load_options(LlamaTokenizer.from_pretrained(str(directory), **kwargs))


def load_mistral_tokenizer() -> PreTrainedTokenizerBase:
    """Mistral 7B v0.1's tokenizer (BOS added, no pad token; padding uses EOS, as the reference did)."""
    directory = resources.files("quietstar") / "assets" / "mistral_tokenizer"
    with resources.as_file(directory) as path:
        tokenizer = load_sentencepiece_tokenizer(path)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
