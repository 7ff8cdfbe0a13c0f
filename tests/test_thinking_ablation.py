"""benchmarks/thinking_ablation.py: its task data, its argument checks, and a `--quick` study end to end (the
outputs' structure, not the outcome)."""

import json
import random
from pathlib import Path

import pytest
import torch
from scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "thinking_ablation.py"


@pytest.fixture(scope="module")
def ablation():
    return load_script(SCRIPT, "thinking_ablation")


def test_problems_hold_their_sums_and_answers_keep_a_look_ahead_window(ablation):
    settings = ablation.StudySettings(operands=4, modulus=7, seq_len=40, n_ahead_talk=3)
    ids, answers = ablation.make_batch(random.Random(3), settings, 16, worked_fraction=0.5)
    assert ids.shape == answers.shape == (16, 40) and answers.any()
    vocab = ablation.VOCAB
    for row in range(16):
        text = [vocab[t] for t in ids[row].tolist()]
        problems = " ".join(text).split(";")
        for problem in problems[:-1]:
            tokens = problem.split()
            digits = [int(t) for t in tokens[:4]]
            assert all(d < 7 for d in digits)
            if tokens[4] == "?":
                assert tokens[5:] == [str(sum(digits) % 7)]
            else:
                assert tokens[4] == "=" and tokens[5:] == [str(sum(digits[: k + 1]) % 7) for k in range(1, 4)]
        assert set(problems[-1].split()) <= {"."}
        for col in answers[row].nonzero().flatten().tolist():
            assert text[col - 1] == "?" and text[col + 1] == ";"
            assert col + settings.n_ahead_talk - 1 < 40  # the thought at "?" is scored on a complete window


def test_data_is_a_function_of_the_seed_and_the_splits_differ(ablation):
    settings = ablation.StudySettings()
    offsets = ablation.SPLIT_SEED_OFFSET

    def batch(seed):
        return ablation.make_batch(random.Random(seed), settings, 4, worked_fraction=0.0)[0]

    assert torch.equal(batch(offsets["test"]), batch(offsets["test"]))
    assert not torch.equal(batch(offsets["test"]), batch(offsets["validation"]))
    assert len(set(offsets.values())) == 3


def test_worked_mask_marks_the_prediction_of_the_last_partial_sum(ablation):
    settings = ablation.StudySettings(operands=3, seq_len=16)  # "d d d = s2 s3 ;": s3 is predicted at s2
    ids, mask = ablation.worked_final_sums(random.Random(0), settings, 2)
    assert int(mask.sum()) == 4  # two 7-token problems per row
    for row in range(2):
        for col in mask[row].nonzero().flatten().tolist():
            assert [ablation.VOCAB[t] for t in (ids[row, col - 1], ids[row, col + 2])] == ["=", ";"]


def test_learning_rate_warms_up_then_decays_to_a_tenth(ablation):
    rates = [ablation.learning_rate(step, 100, 1.0, 10) for step in range(101)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[100] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "1"], "--seeds needs at least 2"),
        (["--worked-fraction", "1.0"], "--worked-fraction must be in [0, 1)"),
        (["--modulus", "11"], "--modulus must be in [2, 10]"),
        (["--seq-len", "5"], "--seq-len must be >= 7"),
        (["--n-thought-tokens", "2"], "n_thought_tokens must be an integer >= 3"),
        (["--eval-split", "train"], "invalid choice"),
    ],
)
def test_bad_arguments_are_one_line_errors(ablation, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        ablation.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_study_writes_every_figure_a_table_a_plot_and_a_verdict(ablation, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ablation.main(["--quick", "--out-dir", str(tmp_path)])
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["thinking_ablation.json", "thinking_ablation.md", "thinking_ablation.png"]
    result = json.loads((tmp_path / "thinking_ablation.json").read_text())
    settings = result["settings"]
    assert settings["seeds"] == [0, 1] and settings["eval_split"] == "test"

    steps = list(range(0, settings["arm_steps"], settings["eval_every"])) + [settings["arm_steps"]]
    assert sorted((r["arm"], r["seed"]) for r in result["runs"]) == sorted(
        (arm, seed) for arm in ("plain", "quiet-star", "no-policy") for seed in (0, 1)
    )
    for run in result["runs"]:
        assert [record["step"] for record in run["curve"]] == steps
        final = run["curve"][-1]
        assert len(final["answer_nll_thinking_by_tercile"]) == 3
        assert 0 <= final["answer_acc_thinking"] <= 1 and final["answer_nll_thinking"] > 0
        if run["arm"] == "plain":  # thinking off: the mixing head never trains, so thoughts never change a prediction
            assert final["answer_mixing_weight"] == 0 and final["answer_nll_thinking"] == final["answer_nll_plain"]
        else:
            assert {"train_policy_loss", "train_mean_reward", "train_mean_mixing_weight"} <= set(final)
    for run in result["runs"]:  # every arm starts from the same base model
        assert run["curve"][0]["answer_nll_plain"] == pytest.approx(result["base"]["final"]["answer_nll_plain"], rel=1e-5)

    summary = result["summary"]
    for arm in ("plain", "quiet-star", "no-policy"):
        last = summary[arm]["curve"][-1]
        assert set(last["answer_nll_thinking"]) == {"mean", "std"}
        compute = summary[arm]["compute"]
        assert compute["token_passes_per_step"] == compute["passes_per_step"] * settings["batch_size"] * settings["seq_len"]
    thinking_passes = settings["n_thoughts"] * (settings["n_thought_tokens"] + settings["n_ahead_talk"])
    assert summary["quiet-star"]["compute"]["passes_per_step"] == thinking_passes
    assert summary["plain"]["compute"]["passes_per_step"] == 1

    assert len(result["verdict"]) == 5 and "quiet-star" in result["verdict"][0]
    for moment in ("start", "end"):
        shown = result["thoughts"][moment]
        assert len(shown) == settings["shown_thoughts"]
        assert all(len(t["thought"].split()) == settings["n_thought_tokens"] - 2 for t in shown)
        assert all(t["problem"].endswith("?") for t in shown)

    table = (tmp_path / "thinking_ablation.md").read_text()
    assert table.count("\n| plain |") == 1 and "Verdict:" in table
    assert (tmp_path / "thinking_ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert "Verdict:" in capsys.readouterr().out
