"""`python -m quietstar.eval.generate`: a thinking generate() and the thought behind each token, next to the base model's."""

import pytest
import torch
from tiny_checkpoint import save_tiny_checkpoint

from quietstar.eval.checkpoint import load_checkpoint
from quietstar.eval.generate import main

PROMPT = "Q: 12 + 30 = ?\nA:"


def test_cli_prints_both_continuations_and_a_row_per_thinking_token(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    result = main([str(checkpoint), "--prompt", PROMPT, "--max-new-tokens", "6"])
    lines = capsys.readouterr().out.splitlines()
    model, tokenizer = load_checkpoint(checkpoint, "cpu", "float32")
    inputs = tokenizer(PROMPT, return_tensors="pt")
    expected = model.generate_with_thoughts(**inputs, max_new_tokens=6, do_sample=False)
    plain = model.generate(**inputs, max_new_tokens=6, do_sample=False, thinking=False)
    prompt_length = inputs.input_ids.shape[1]
    assert result.thinking_text == tokenizer.decode(expected.sequences[0, prompt_length:])
    assert result.plain_text == tokenizer.decode(plain[0, prompt_length:])
    assert "".join(result.tokens) == result.thinking_text and len(result.thoughts) == 6
    torch.testing.assert_close(result.mixing_weights, expected.mixing_weights[0])
    assert result.mixing_weights.abs().sum() > 0
    for t in range(6):
        thought = tokenizer.decode(expected.thought_ids[0, t])
        assert result.thoughts[t].strip() == thought.strip()
    assert lines[0] == "prompt: Q: 12 + 30 = ?\\nA:"
    assert lines[1].startswith("with thinking:") and lines[2].startswith("without thinking:")
    rows = [line for line in lines if line[:4].strip().isdigit()]
    assert len(rows) == 6 and all(row.split()[-1] == f"{w:.3f}" for row, w in zip(rows, result.mixing_weights))
    assert "<|startofthought|>" not in "\n".join(lines) and "<|endofthought|>" not in "\n".join(lines)


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nothing"), "--prompt", PROMPT])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m quietstar.eval.generate: error: no such checkpoint directory: {tmp_path / 'nothing'}\n"
    )
