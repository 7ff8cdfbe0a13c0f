"""The real Mistral 7B v0.1 tokenizer, shipped with the package for offline use.

`assets/mistral_tokenizer/tokenizer.model` is Mistral 7B v0.1's SentencePiece model (32000 tokens), taken from the
Apache-2.0 `mistral-common` distribution (its LICENSE sits beside it). transformers converts it to a fast tokenizer
with the same ids as the hub's `mistralai/Mistral-7B-v0.1` tokenizer.
"""

from importlib import resources

from transformers import LlamaTokenizer, PreTrainedTokenizerBase


def load_mistral_tokenizer() -> PreTrainedTokenizerBase:
    """Mistral 7B v0.1's tokenizer (BOS added, no pad token; padding uses EOS, as the reference did)."""
    directory = resources.files("quietstar") / "assets" / "mistral_tokenizer"
    with resources.as_file(directory) as path:
        tokenizer = LlamaTokenizer.from_pretrained(str(path), add_bos_token=True)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
