"""`quietstar.eval`: the paper's whitelist metric (checked against the reference's algorithm), data and CLI."""

import json

import pytest
import torch
from tiny_checkpoint import save_tiny_checkpoint

from quietstar.eval import EvalSettings, evaluate_task, load_examples, score_examples, whitelist_token_ids
from quietstar.eval.__main__ import main as eval_main
from quietstar.eval.checkpoint import load_checkpoint

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 12 eggs. How many eggs are in 10 boxes?", "answer": "12 * 10 = 120\n#### 120"},
    {"question": "Ann pays 1,250 dollars twice. How much does she pay?", "answer": "2 * 1250 = 2500\n#### 2,500"},
]
CSQA_ROWS = [
    {
        "question": "Where would you put a plate after washing it?",
        "choices": {"label": list("ABCDE"), "text": ["cupboard", "river", "oven", "bed", "car"]},
        "answerKey": "A",
    },
    {
        "question": "What do people use to cut paper?",
        "choices": {"label": list("ABCDE"), "text": ["spoon", "scissors", "pillow", "cup", "rope"]},
        "answerKey": "B",
    },
]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    files = {}
    for name, rows in (("gsm8k", GSM8K_ROWS), ("csqa", CSQA_ROWS)):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return save_tiny_checkpoint(root / "ckpt"), files


def test_whitelists_are_the_reference_ids(mistral_tokenizer):
    assert whitelist_token_ids(mistral_tokenizer, "gsm8k") == [
        28740, 28750, 28770, 28781, 28782, 28784, 28787, 28783, 28774, 28734, 13
    ]
    assert whitelist_token_ids(mistral_tokenizer, "csqa") == [330, 365, 334, 384, 413, 13]


def test_prompts_follow_the_paper(fixtures):
    _, files = fixtures
    gsm8k = load_examples("gsm8k", str(files["gsm8k"]))
    assert gsm8k[0] == ("Q: " + GSM8K_ROWS[0]["question"] + "\nA:", " 7\n")
    csqa = load_examples("csqa", str(files["csqa"]), limit=1)
    assert csqa == [
        (
            "Q: Where would you put a plate after washing it?\n(A) cupboard\n(B) river\n(C) oven\n(D) bed\n(E) car\nA:",
            " A\n",
        )
    ]
    with pytest.raises(ValueError, match="unknown task"):
        load_examples("mmlu", str(files["csqa"]))
    with pytest.raises(ValueError, match="lacks the field"):
        load_examples("gsm8k", str(files["csqa"]))


def reference_score(tokenizer, ids: list[int], logits: torch.Tensor, numeric: bool) -> float:
    """The reference's `compute_metrics` for one example (decode-based answer search, renormalised product)."""
    marker = "\nA:"
    count = tokenizer.decode(ids).count(marker)
    for i in range(len(ids) - 1, 0, -1):
        if tokenizer.decode(ids[:i]).count(marker) < count:
            break
    valid = [28740, 28750, 28770, 28781, 28782, 28784, 28787, 28783, 28774, 28734, 13] if numeric else [330, 365, 334, 384, 413, 13]
    probs = torch.softmax(logits, dim=-1)
    score = 1.0
    for j in range(i + (1 if numeric else 0), len(ids) - 1):
        if ids[j + 1] not in valid:
            continue
        filtered = torch.zeros_like(probs[j])
        filtered[valid] = probs[j, valid]
        score *= float(filtered[ids[j + 1]] / filtered.sum())
    return score


@pytest.mark.parametrize("task", ["gsm8k", "csqa"])
def test_paper_score_equals_the_reference_algorithm(fixtures, task):
    checkpoint, files = fixtures
    model, tokenizer = load_checkpoint(str(checkpoint))
    examples = load_examples(task, str(files[task]))
    scores = score_examples(model, tokenizer, task, examples, thinking=True, settings=EvalSettings(batch_size=2))
    meta = [model.config.start_thought_token_id, model.config.end_thought_token_id]
    for (prompt, answer), score in zip(examples, scores):
        ids = tokenizer.encode(prompt + answer)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        logits[:, meta] = float("-inf")
        expected = reference_score(tokenizer, ids, logits, numeric=task == "gsm8k")
        assert score["paper_score"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert 0 < score["paper_score"] <= 1 and score["argmax"] in (0.0, 1.0)


def test_scores_do_not_depend_on_batching_and_thinking_changes_them(fixtures):
    checkpoint, files = fixtures
    model, tokenizer = load_checkpoint(str(checkpoint))
    examples = load_examples("gsm8k", str(files["gsm8k"]))
    one = evaluate_task(model, tokenizer, "gsm8k", examples, thinking=True, settings=EvalSettings(batch_size=1))
    three = evaluate_task(model, tokenizer, "gsm8k", examples, thinking=True, settings=EvalSettings(batch_size=3))
    base = evaluate_task(model, tokenizer, "gsm8k", examples, thinking=False, settings=EvalSettings(batch_size=3))
    assert one["paper_accuracy"] == pytest.approx(three["paper_accuracy"], rel=1e-5)
    assert base["paper_accuracy"] != pytest.approx(three["paper_accuracy"], rel=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        evaluate_task(model, tokenizer, "gsm8k", examples, thinking=True, settings=EvalSettings(max_length=3))


def test_cli_writes_results_with_config_and_checkpoint(fixtures, tmp_path, capsys):
    checkpoint, files = fixtures
    output = tmp_path / "results.json"
    eval_main([
        str(checkpoint), "--gsm8k", str(files["gsm8k"]), "--csqa", str(files["csqa"]), "--batch-size", "2",
        "--output", str(output),
    ])
    report = json.loads(output.read_text())
    assert report["checkpoint"] == str(checkpoint)
    assert report["model_config"]["model_type"] == "quietstar"
    assert report["model_config"]["inference_thought_temperature"] == 1.0
    assert report["settings"]["thought_temperature"] == 1.0
    for task, n in (("gsm8k", len(GSM8K_ROWS)), ("csqa", len(CSQA_ROWS))):
        assert report["results"][task]["source"] == str(files[task])
        for mode in ("thinking", "base"):
            scores = report["results"][task][mode]
            assert scores["n_examples"] == n
            assert 0 <= scores["argmax_accuracy"] <= 1 and 0 < scores["paper_accuracy"] <= 1
    assert "paper=" in capsys.readouterr().out
