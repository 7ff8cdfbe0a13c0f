"""`python -m quietstar.inspect`: per-position thoughts, mixing weights and rewards, table and HTML heatmap."""

import torch
import torch.nn.functional as F
from tiny_checkpoint import save_tiny_checkpoint

from quietstar.eval.checkpoint import load_checkpoint
from quietstar.inspect import inspect_text, main

TEXT = "Q: 12 + 30 = ?\nA: 42"


def test_cli_prints_a_row_per_position_and_writes_a_heatmap(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    page = tmp_path / "out" / "thoughts.html"
    report = main([str(checkpoint), "--text", TEXT, "--html", str(page)])
    table = capsys.readouterr().out.splitlines()
    n_tokens = len(report.tokens)
    assert n_tokens > 5 and len(report.thoughts) == len(report.rewards) == len(report.mixing_weights) == n_tokens
    assert table[0].split()[:3] == ["pos", "token", "thought"]
    assert len([line for line in table if line[:4].strip().isdigit()]) == n_tokens
    assert report.rewards.abs().sum() > 0 and report.mixing_weights.abs().sum() > 0
    content = page.read_text()
    assert content.startswith("<!DOCTYPE html>") and content.count("<span title=") == 2 * n_tokens
    assert "thought: " in content and "&#8629;" in content  # the newline of the text is shown


def test_rewards_are_base_minus_mixed_nll_of_the_next_tokens(tmp_path):
    model, tokenizer = load_checkpoint(str(save_tiny_checkpoint(tmp_path / "ckpt")))
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        base = F.cross_entropy(model(ids, thinking=False).logits[0, :-1], ids[0, 1:], reduction="none")
        mixed = F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
    model.config.n_ahead_talk = 1
    report = inspect_text(model, tokenizer, TEXT)
    torch.testing.assert_close(report.base_nll[:-1], base, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(report.mixed_nll[:-1], mixed, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(report.rewards[:-1], base - mixed, rtol=1e-4, atol=1e-5)
    model.config.n_ahead_talk = 3
    deeper = inspect_text(model, tokenizer, TEXT)
    assert report.thoughts == deeper.thoughts and not torch.allclose(report.rewards, deeper.rewards)
