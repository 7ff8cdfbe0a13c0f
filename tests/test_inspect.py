"""`python -m quietstar.eval.inspector`: per-position thoughts, mixing weights and rewards, table and HTML heatmap."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoint import save_tiny_base_checkpoint, save_tiny_checkpoint

from quietstar.eval.checkpoint import load_checkpoint
from quietstar.eval.inspector import decode_after, inspect_text, main, token_texts

TEXT = "Q: 12 + 30 = ?\nA: 42"
README = Path(__file__).resolve().parents[1] / "README.md"


def test_cli_prints_a_row_per_position_and_writes_a_heatmap(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    page = tmp_path / "out" / "thoughts.html"
    report = main([str(checkpoint), "--text", TEXT, "--html", str(page)])
    table = capsys.readouterr().out.splitlines()
    n_tokens = len(report.tokens)
    assert n_tokens > 5 and len(report.thoughts) == len(report.rewards) == len(report.mixing_weights) == n_tokens
    assert table[0].split()[:3] == ["pos", "token", "thought"]
    rows = [line for line in table if line[:4].strip().isdigit()]
    assert len(rows) == n_tokens
    assert "".join(report.tokens[1:]).lstrip() == TEXT  # the tokens keep the spaces between words
    assert " +" in report.tokens and " =" in report.tokens
    look_ahead = json.loads((checkpoint / "config.json").read_text())["n_ahead_talk"]
    assert look_ahead > 1  # the last A positions have no complete window x[i+1..i+A], so no reward
    assert report.rewards[-look_ahead:].isnan().all() and not report.rewards[:-look_ahead].isnan().any()
    assert [row.split()[-2] for row in rows[:-look_ahead]] == [f"{r:.3f}" for r in report.rewards[:-look_ahead]]
    assert "nan" not in "\n".join(table)
    assert report.rewards[:-look_ahead].abs().sum() > 0 and report.mixing_weights.abs().sum() > 0
    content = page.read_text()
    assert content.startswith("<!DOCTYPE html>") and content.count("<span title=") == 2 * n_tokens
    assert "thought: " in content and "&#8629;" in content  # the newline of the text is shown
    assert content.count("reward=none (window past the text)") == 2 * look_ahead and "nan" not in content


def test_token_texts_keep_leading_spaces_and_whole_characters(mistral_tokenizer):
    text = "Q: 12 + 30 = ?\nA: 42 café 𝔘"  # 𝔘 is not in the vocabulary: four byte tokens
    ids = mistral_tokenizer(text).input_ids
    pieces = token_texts(mistral_tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == mistral_tokenizer.decode(ids)
    assert pieces[:4] == ["<s>", " Q", ":", " "] and " café" in pieces and "\n" in pieces
    assert pieces[-4:] == ["", "", "", "𝔘"]
    assert [mistral_tokenizer.decode([token]) for token in ids[:4]] == ["<s>", "Q", ":", ""]  # what decoding alone gives


def test_thoughts_keep_the_leading_space_of_their_first_token(mistral_tokenizer):
    ids = mistral_tokenizer("Q: 12 + 30", add_special_tokens=False).input_ids
    assert decode_after(mistral_tokenizer, ids[:2], ids[2:]) == " 12 + 30"
    assert mistral_tokenizer.decode(ids[2:]) == "12 + 30"  # decoding the thought alone would lose it


def test_rewards_are_base_minus_mixed_nll_of_the_next_tokens(tmp_path):
    model, tokenizer = load_checkpoint(str(save_tiny_checkpoint(tmp_path / "ckpt")))
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    model.config.n_ahead_talk = 1
    with torch.no_grad():
        base = F.cross_entropy(model(ids, thinking=False).logits[0, :-1], ids[0, 1:], reduction="none")
        returned = model(ids).logits[0]  # the thought-mixed prediction, the two meta tokens masked out
        mixed_logits = model.lm_head(model.run_parallel_thoughts(ids, n_ahead_talk=1).talk_hidden[0])[0]
    meta_ids = [model.config.start_thought_token_id, model.config.end_thought_token_id]
    assert meta_ids == [len(tokenizer) - 2, len(tokenizer) - 1]
    text_vocabulary = slice(0, len(tokenizer) - 2)
    torch.testing.assert_close(returned[:, text_vocabulary], mixed_logits[:, text_vocabulary], rtol=1e-5, atol=1e-5)
    mixed = F.cross_entropy(mixed_logits[:-1], ids[0, 1:], reduction="none")  # over the whole vocabulary, as in training
    report = inspect_text(model, tokenizer, TEXT)
    torch.testing.assert_close(report.base_nll[:-1], base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(report.mixed_nll[:-1], mixed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(report.rewards[:-1], base - mixed, rtol=1e-5, atol=1e-5)
    model.config.n_ahead_talk = 3
    deeper = inspect_text(model, tokenizer, TEXT)
    assert report.rewards[-1].isnan() and deeper.rewards[-3:].isnan().all()
    assert report.thoughts == deeper.thoughts and not torch.allclose(report.rewards[:-3], deeper.rewards[:-3])


def test_readme_example_passes_a_real_newline():
    command = next(line for line in README.read_text().splitlines() if line.startswith("python -m quietstar.eval.inspector"))
    argument = re.search(r"--text (\$'[^']*'|\"[^\"]*\"|'[^']*')", command).group(1)
    text = subprocess.run(["bash", "-c", f"printf %s {argument}"], capture_output=True, text=True, check=True).stdout
    assert "\n" in text and "\\n" not in text


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope"), "--text", "1 + 1 = 2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m quietstar.eval.inspector: error: no such checkpoint directory: {tmp_path / 'nope'}\n"
    )


def test_help_explains_every_argument_with_its_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per argument
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    expected = {
        "checkpoint": "quietstar checkpoint directory",
        "--text TEXT": "(required)",
        "--html HTML": "(default: thoughts.html)",
        "--thought-temperature THOUGHT_TEMPERATURE": "(default: 0.0)",
        "--seed SEED": "(default: 0)",
        "--device DEVICE": "(default: auto)",
        "--dtype {auto,float32,bfloat16,float16}": "(default: auto)",
    }
    entries = []  # one per argument: its name line and the help lines under it
    for line in lines[lines.index("positional arguments:") :]:
        if line.startswith("   ") and entries:
            entries[-1] += " " + line.strip()
        elif line.startswith("  "):
            entries.append(line.strip())
    entries = [entry for entry in entries if not entry.startswith("-h, --help")]
    assert len(entries) == len(expected), entries
    for name, shown in expected.items():
        entry = next(entry for entry in entries if entry.startswith(name + " "))
        assert shown in entry and len(entry[len(name) :].strip()) > len(shown) + 10, entry  # help beyond the default


def test_a_base_checkpoint_is_one_line(tmp_path, capsys):
    base = save_tiny_base_checkpoint(tmp_path / "llama")
    capsys.readouterr()  # the progress output of saving it
    with pytest.raises(SystemExit) as exit_info:
        main([str(base), "--text", "1 + 1 = 2", "--html", str(tmp_path / "thoughts.html")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m quietstar.eval.inspector: error: {base} is not a quietstar checkpoint: its config has model_type "
        "'llama'; it has no thoughts to inspect\n"
    )
    assert not (tmp_path / "thoughts.html").exists()
