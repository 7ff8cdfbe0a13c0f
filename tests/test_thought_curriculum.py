"""The thought-length curriculum: lengths in force at each step, config errors, and train.py applying and resuming
it at the right (n_thought_tokens, n_ahead_talk)."""

import json
import shutil

import pytest
from test_training import _records, _train

from quietstar.training.config import ConfigError, ThoughtLengthStage, load_config
from quietstar.training.curriculum import thought_lengths_at

STAGES = [ThoughtLengthStage(1, 16, 8), ThoughtLengthStage(5, 12, 4), ThoughtLengthStage(9, 8, 4)]


@pytest.mark.parametrize(
    ("step", "expected"), [(0, (6, 3)), (1, (16, 8)), (4, (16, 8)), (5, (12, 4)), (8, (12, 4)), (9, (8, 4)), (500, (8, 4))]
)
def test_lengths_in_force_at_each_step(step, expected):
    assert thought_lengths_at(STAGES, step, initial=(6, 3)) == expected
    assert thought_lengths_at([], step, initial=(6, 3)) == (6, 3)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("[{step: 0, n_thought_tokens: 6, n_ahead_talk: 2}, {step: 0, n_thought_tokens: 4, n_ahead_talk: 2}]",
         r"train\.thought_curriculum\.1\.step must be greater than the previous stage's step \(0\)"),
        ("[{step: -1, n_thought_tokens: 6, n_ahead_talk: 2}]", r"train\.thought_curriculum\.0\.step must be >= 0"),
        ("[{step: 0, n_thought_tokens: 2, n_ahead_talk: 2}]", r"train\.thought_curriculum\.0\.n_thought_tokens must be >= 3"),
        ("[{step: 0, n_thought_tokens: 4, n_ahead_talk: 0}]", r"train\.thought_curriculum\.0\.n_ahead_talk must be >= 1"),
        ("[{step: 0, n_thought_tokens: 4, n_ahead_talk: 48}]",
         r"train\.thought_curriculum\.0\.n_ahead_talk \(48\) must be below data\.seq_len \(48\)"),
        ("[{step: 0, n_thought_tokens: 4}]", r"^train\.thought_curriculum\.0\.n_ahead_talk must be set$"),
        ("[[0, 4, 2]]", r"train\.thought_curriculum\.0 must be a mapping"),
    ],
)
def test_bad_curricula_name_the_stage_and_field(stages, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.tokenizer=builtin-mistral", "data.seq_len=48", f"train.thought_curriculum={stages}"])


CURRICULUM = (
    "--train.thought_curriculum=[{step: 0, n_thought_tokens: 5, n_ahead_talk: 3}, "
    "{step: 2, n_thought_tokens: 6, n_ahead_talk: 2}, {step: 3, n_thought_tokens: 3, n_ahead_talk: 1}]"
)


def test_train_applies_the_curriculum_and_a_resumed_run_continues_at_the_right_lengths(tmp_path):
    """Steps 1-2 (0-based 0-1) think with 5/3, step 3 with 6/2, step 4 with 3/1. Resumed from the checkpoint of
    step 2, the run trains steps 3 and 4 at the same lengths with the same losses."""
    _train(tmp_path, "--train.max_steps=4", CURRICULUM)
    records = _records(tmp_path)
    lengths = {r["step"]: (r["n_thought_tokens"], r["n_ahead_talk"]) for r in records}
    assert lengths == {1: (5, 3), 2: (5, 3), 3: (6, 2), 4: (3, 1)}
    final_config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert (final_config["n_thought_tokens"], final_config["n_ahead_talk"]) == (3, 1)
    step_2 = json.loads((tmp_path / "checkpoints" / "step_00000002" / "hf" / "config.json").read_text())
    assert (step_2["n_thought_tokens"], step_2["n_ahead_talk"]) == (5, 3)  # the export holds the lengths in force

    shutil.rmtree(tmp_path / "checkpoints" / "step_00000004")  # as if the run had died after step 3
    result = _train(tmp_path, "--train.max_steps=4", CURRICULUM, "--resume")
    assert "resumed from" in result.stderr and "step 2: thoughts of 6 tokens, 2 look-ahead tokens" in result.stderr
    resumed = {r["step"]: r for r in _records(tmp_path)}
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert (resumed[step]["n_thought_tokens"], resumed[step]["n_ahead_talk"]) == lengths[step]
        assert resumed[step]["loss"] == pytest.approx(records[step - 1]["loss"], rel=1e-5, abs=1e-6)
