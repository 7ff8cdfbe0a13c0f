"""`quietstar.eval`: the paper's whitelist metric (checked against the reference's algorithm), data and CLI."""

import contextlib
import io
import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

import quietstar
from tiny_checkpoint import save_tiny_base_checkpoint, save_tiny_checkpoint

from quietstar.eval import EvalSettings, evaluate_task, load_examples, score_examples, whitelist_token_ids
from quietstar.eval.__main__ import main as eval_main
from quietstar.eval.__main__ import parse_args
from quietstar.eval.checkpoint import load_checkpoint, resolve_checkpoint
from quietstar.errors import UserError
from quietstar.checkpoint_files import CheckpointError

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
    with pytest.raises(UserError, match=r"lacks the field\(s\) \['answer'\]; a gsm8k file needs \"question\""):
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
    assert report["checkpoint"] == str(checkpoint.resolve())
    assert report["model_config"]["model_type"] == "quietstar"
    assert report["model_config"]["inference_thought_temperature"] == 1.0
    assert report["settings"]["thought_temperature"] == 1.0
    for task, n in (("gsm8k", len(GSM8K_ROWS)), ("csqa", len(CSQA_ROWS))):
        assert report["results"][task]["source"] == str(files[task].resolve())
        for mode in ("thinking", "base"):
            scores = report["results"][task][mode]
            assert scores["n_examples"] == n
            assert 0 <= scores["argmax_accuracy"] <= 1 and 0 < scores["paper_accuracy"] <= 1
    assert "paper=" in capsys.readouterr().out


def test_cli_records_absolute_paths(fixtures, tmp_path, monkeypatch):
    checkpoint, files = fixtures
    monkeypatch.chdir(tmp_path)
    shutil.copy(files["gsm8k"], tmp_path / "gsm8k.jsonl")
    (tmp_path / "ckpt").symlink_to(checkpoint)
    eval_main(["./ckpt", "--tasks", "gsm8k", "--gsm8k", "gsm8k.jsonl", "--modes", "base", "--output", "out/r.json"])
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert report["checkpoint"] == str(checkpoint.resolve())
    assert report["results"]["gsm8k"]["source"] == str(tmp_path / "gsm8k.jsonl")


def _cli_error(argv) -> str:
    """The one line a failing `python -m quietstar.eval` run writes to stderr before it exits with status 2, without
    its `python -m quietstar.eval: ` prefix."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        eval_main(argv)
    assert exit_info.value.code == 2
    prog, message = stderr.getvalue().splitlines()[-1].split(": ", 1)  # after any progress output of `datasets`
    assert prog == "python -m quietstar.eval" and "\n" not in message
    return message


def test_cli_nonexistent_checkpoint_says_no_such_directory(fixtures, tmp_path, monkeypatch):
    _, files = fixtures
    monkeypatch.chdir(tmp_path)
    data = ["--tasks", "gsm8k", "--gsm8k", str(files["gsm8k"])]
    for missing in ("./outputs/tiny/final", str(tmp_path / "nope"), "outputs/tiny/final"):
        assert _cli_error([missing, *data]) == f"error: no such checkpoint directory: {tmp_path / missing}"
    (tmp_path / "not_a_checkpoint").mkdir()
    assert _cli_error(["not_a_checkpoint", *data]) == (
        f"error: {tmp_path / 'not_a_checkpoint'} is not a checkpoint directory: it has no config.json"
    )
    # A name that could be a hub id is tried on the hub (offline here) and the error says both things.
    assert resolve_checkpoint("someone/model") == "someone/model"
    with pytest.raises(CheckpointError, match=r"^no such checkpoint directory: .*someone/model, and no hub model 'someone/model'"):
        load_checkpoint("someone/model")


def test_cli_missing_empty_and_malformed_data_files(fixtures, tmp_path):
    checkpoint, files = fixtures

    def error_for(path) -> str:
        return _cli_error([str(checkpoint), "--tasks", "gsm8k", "--gsm8k", str(path)])

    assert error_for(tmp_path / "gsm8k_test.jsonl") == f"error: gsm8k data file {tmp_path / 'gsm8k_test.jsonl'} does not exist"
    assert error_for("data/gsm8k.jsonl").startswith("error: gsm8k data file /") and "does not exist" in error_for("data/gsm8k.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert error_for(empty) == f"error: gsm8k data file {empty} is empty: it holds no examples"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(files["gsm8k"].read_text() + '{"question": "x", "answer": }\n')
    assert error_for(bad) == (
        f"error: gsm8k data file {bad} line {len(GSM8K_ROWS) + 1} is not valid JSON: Expecting value (column 29)"
    )
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"question": "q", "answer": "12"}) + "\n")
    assert error_for(no_answer) == f"error: gsm8k data {no_answer} example 1: answer without '#### <number>': '12'"


def test_help_names_the_fields_of_local_files(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert '"question" (text) and "answer" (worked solution ending in "#### <number>")' in text
    assert '"choices" ({"label": ["A", ...], "text": [...]}) and "answerKey"' in text
    assert "--gsm8k GSM8K hub data set id or local .csv/.json/.jsonl/.parquet file with the fields question, answer" in text


def test_truncated_weights_name_the_file(fixtures, tmp_path):
    checkpoint, files = fixtures
    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    weights = damaged / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as file:
        file.truncate(size // 2)
    with pytest.raises(CheckpointError, match=rf"^{weights} is truncated or damaged \({size // 2} bytes\): incomplete metadata, file not fully covered$"):
        load_checkpoint(str(damaged))
    message = _cli_error([str(damaged), "--tasks", "gsm8k", "--gsm8k", str(files["gsm8k"])])
    assert message == f"error: {weights} is truncated or damaged ({size // 2} bytes): incomplete metadata, file not fully covered"


def test_a_base_checkpoint_is_scored_as_it_is_in_base_mode(fixtures, tmp_path):
    # A plain Llama checkpoint (no Quiet-STaR parts) scores in --modes base exactly as the same weights loaded as a
    # Quiet-STaR model with thinking off; asking it to think is one line naming the checkpoint and its model_type.
    _, files = fixtures
    base = save_tiny_base_checkpoint(tmp_path / "llama")
    output = tmp_path / "base.json"
    data = ["--gsm8k", str(files["gsm8k"]), "--csqa", str(files["csqa"])]
    eval_main([str(base), *data, "--modes", "base", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report["model_config"]["model_type"] == "llama" and report["settings"]["modes"] == ["base"]

    model = quietstar.from_base(str(base), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    quietstar.add_thought_tokens(model, tokenizer)
    for task in ("gsm8k", "csqa"):
        examples = load_examples(task, str(files[task]))
        expected = evaluate_task(model.eval(), tokenizer, task, examples, thinking=False)
        assert report["results"][task].keys() == {"source", "base"}
        for key, value in expected.items():
            assert report["results"][task]["base"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (task, key)

    assert _cli_error([str(base), *data, "--output", str(output)]) == (
        f"error: {base} is not a quietstar checkpoint: its config has model_type 'llama'; score it "
        "without thinking with --modes base"
    )
    plain, plain_tokenizer = load_checkpoint(str(base), plain=True)
    with pytest.raises(ValueError, match=r"^thinking needs a Quiet-STaR model; LlamaForCausalLM is a plain causal LM"):
        score_examples(plain, plain_tokenizer, "gsm8k", load_examples("gsm8k", str(files["gsm8k"])), thinking=True)
