"""Adding the start/end-of-thought meta tokens to a tokenizer and a model."""

import torch
from transformers import PreTrainedTokenizerBase

from .models.modeling_quietstar import QuietStarModelMixin

START_OF_THOUGHT = "<|startofthought|>"
END_OF_THOUGHT = "<|endofthought|>"


def add_thought_tokens_to_tokenizer(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add `<|startofthought|>` and `<|endofthought|>` to `tokenizer` as special tokens (nothing changes when it has
    them); return their ids."""
    tokenizer.add_special_tokens({"additional_special_tokens": [START_OF_THOUGHT, END_OF_THOUGHT]})
    start_id, end_id = tokenizer.convert_tokens_to_ids([START_OF_THOUGHT, END_OF_THOUGHT])
    return start_id, end_id


@torch.no_grad()
def add_thought_tokens(
    model: QuietStarModelMixin, tokenizer: PreTrainedTokenizerBase, init_text: str = "---"
) -> tuple[int, int]:
    """Add `<|startofthought|>` and `<|endofthought|>` to `tokenizer` and `model`; return their ids.

    The embedding table and LM head grow to the new vocabulary with every existing row unchanged. Both meta
    embeddings (and their rows in the embedding table) start from the embedding of the first token of `init_text`
    (the reference's "---"); the new LM-head rows start at the mean of the existing rows. The ids are recorded in
    `model.config`, and `model.generation_config.suppress_tokens` keeps generation from emitting them.

    Calling it again on a model and tokenizer that already have the tokens changes nothing.
    """
    start_id, end_id = add_thought_tokens_to_tokenizer(tokenizer)
    config = model.config
    if (config.start_thought_token_id, config.end_thought_token_id) == (start_id, end_id):
        return start_id, end_id

    init_ids = tokenizer.encode(init_text, add_special_tokens=False)
    if not init_ids:
        raise ValueError(f"init_text {init_text!r} encodes to no tokens")
    old_vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_vocab:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight
    init_embedding = embeddings[init_ids[0]].clone()
    for token_id in (start_id, end_id):
        embeddings[token_id] = init_embedding
    if lm_head.shape[0] > old_vocab and lm_head.data_ptr() != embeddings.data_ptr():
        lm_head[old_vocab:] = lm_head[:old_vocab].mean(dim=0)
    model.thought_embeddings.weight.copy_(init_embedding.expand(2, -1) / config.meta_embedding_scale)

    config.start_thought_token_id, config.end_thought_token_id = start_id, end_id
    config.validate_quietstar_fields()
    suppressed = set(model.generation_config.suppress_tokens or [])
    model.generation_config.suppress_tokens = sorted(suppressed | {start_id, end_id})
    return start_id, end_id
