"""A saved checkpoint loaded through the Auto classes generates with thinking in transformers' pipeline."""

import torch
from tiny_checkpoint import save_tiny_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline


def test_text_generation_pipeline_thinks_and_never_writes_meta_tokens(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert model.generation_config.suppress_tokens == [32000, 32001]
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompt = "Q: What is 2 + 3?\nA:"
    text = generator(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith(prompt) and "<|startofthought|>" not in text and "<|endofthought|>" not in text
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    thinking = model.generate_with_thoughts(ids, max_new_tokens=6, do_sample=False, output_logits=True)
    assert text[len(prompt) :] == tokenizer.decode(thinking.sequences[0, ids.shape[1] :], skip_special_tokens=True)
    plain = model.generate(
        ids, max_new_tokens=6, do_sample=False, thinking=False, output_logits=True, return_dict_in_generate=True
    )
    assert not torch.allclose(plain.logits[0], thinking.logits[0])
