"""experiments/real_model_study.py and benchmarks/bench_real_model_step.py: the difficulty deciles, the held-out
word problems, and `--quick` runs on SmolLM2-135M end to end (the records' structure and invariants, not the
outcome)."""

import json
from pathlib import Path

import pytest
import torch
from scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    return load_script(REPO_ROOT / "experiments" / "real_model_study.py", "real_model_study")


def test_difficulty_deciles_partition_tokens_by_base_nll_even_with_ties(study):
    torch.manual_seed(0)
    nll = torch.cat([torch.rand(95) * 5, torch.zeros(18)]).view(1, 113)  # 18 tied easiest tokens
    deciles = study.difficulty_deciles(nll)
    assert deciles.shape == nll.shape
    sizes = torch.bincount(deciles.flatten(), minlength=10)
    assert sizes.sum() == 113 and int(sizes.max() - sizes.min()) <= 1
    maxima = [float(nll[deciles == d].max()) for d in range(10)]
    minima = [float(nll[deciles == d].min()) for d in range(10)]
    assert all(maxima[d] <= minima[d + 1] for d in range(9))  # every token of decile d is no harder than d + 1's


def test_answer_problems_are_word_problems_with_their_numeric_answers(study):
    class Documents:
        def __init__(self):
            self.texts = iter([
                "Compute 3 + 4. So 3 + 4 = 7.\n\nAda has 3 coins and buys 2 bags with 4 coins each, then gives away 1. "
                "How many coins does Ada have? The bags hold 2 * 4 = 8 coins. The answer is 10.",
                "Ben has 5 cards and buys 2 bags with 2 cards each, then gives away 3. How many cards does Ben have? "
                "The bags hold 2 * 2 = 4 cards. The answer is 6.",
            ])

        def next_document(self):
            return next(self.texts)

    pairs = study.answer_problems(Documents(), 2)
    assert pairs[0] == (
        "Q: Ada has 3 coins and buys 2 bags with 4 coins each, then gives away 1. How many coins does Ada have?\nA:",
        " 10\n",
    )
    assert pairs[1][1] == " 6\n"


@pytest.mark.slow
def test_quick_study_records_resumes_refuses_other_settings_and_saves_the_model(study, tmp_path):
    run_dir, model_dir = tmp_path / "runs", tmp_path / "model"
    result = study.main(["--quick", "--run-dir", str(run_dir), "--out-dir", str(tmp_path), "--save-model", str(model_dir)])
    settings = study.QUICK
    assert set(result["arms"]) == {"plain", "no-policy T=4", "low-policy T=3", "quiet-star T=4", "quiet-star T=3"}
    for arm, thought_length, seed in settings.runs():
        record = json.loads((run_dir / f"{study.run_name(arm, thought_length, seed)}.json").read_text())
        assert len(record["curve"]) == settings.steps
        nll, base_nll = torch.tensor(record["token_nll"]), torch.tensor(record["base_token_nll"])
        assert nll.shape == base_nll.shape == (settings.heldout_rows, settings.seq_len - 1)
        assert torch.isfinite(nll).all() and 0 <= record["answer"]["answer_probability"] <= 1
        if arm == "plain":
            assert all(step["mean_mixing_weight"] == 0 and step["mean_reward"] == 0 for step in record["curve"])
            assert "token_nll_thinking_off" not in record
        else:
            # the mixing head starts at w = 0, so before training thinking predicts exactly as the base model
            assert record["curve"][0]["mean_mixing_weight"] == 0
            assert torch.tensor(record["token_nll_thinking_off"]).shape == nll.shape
    for label, arm in result["arms"].items():
        assert len(arm["gain_by_decile"]) == 10 and arm["heldout_nll"]["n"] == 1
    assert (tmp_path / "real_model_study.md").read_text().count("\n| ") >= 4 + 6
    assert (tmp_path / "real_model_study.png").stat().st_size > 0

    config = json.loads((model_dir / "config.json").read_text())
    assert config["n_thought_tokens"] == max(settings.thought_lengths) and (tmp_path / "model.READY").exists()
    assert (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists()

    finished = {path: path.stat().st_mtime_ns for path in run_dir.glob("*.json")}
    study.main(["--quick", "--run-dir", str(run_dir), "--out-dir", str(tmp_path)])  # all done: nothing reruns
    assert {path: path.stat().st_mtime_ns for path in run_dir.glob("*.json")} == finished
    with pytest.raises(SystemExit, match="other settings"):
        study.main(["--quick", "--steps", "3", "--run-dir", str(run_dir), "--out-dir", str(tmp_path)])


@pytest.mark.slow
def test_quick_step_benchmark_times_both_steps_and_measures_peak_rss(tmp_path):
    bench = load_script(REPO_ROOT / "benchmarks" / "bench_real_model_step.py", "bench_real_model_step")
    report = bench.main(["--quick", "--out-dir", str(tmp_path)])
    study_settings = bench.load_study().QUICK
    assert [row["thought_length"] for row in report["rows"]] == list(study_settings.thought_lengths)
    for row in report["rows"]:
        assert row["passes"] == row["thought_length"] + study_settings.n_ahead_talk
        assert row["ratio_to_passes_x_plain"] == pytest.approx(
            row["seconds_per_step"] / (row["passes"] * row["plain_seconds_per_step"])
        )
        for kind in ("plain", "quiet-star"):
            assert row["memory"][kind]["peak_rss_mib"] >= row["memory"][kind]["rss_before_mib"] > 0
    assert json.loads((tmp_path / "real_model_step_cpu.json").read_text())["rows"] == report["rows"]
    assert (tmp_path / "real_model_step_cpu.md").read_text().count("\n| ") == 1 + len(report["rows"])
