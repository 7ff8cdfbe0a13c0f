"""benchmarks/bench_adaptive_thinking.py: the whole pipeline on a tiny checkpoint (gate fit, distilled and control
runs through train.py, every setting scored), calls per token as the gate decided, and the verdict."""

import json
from pathlib import Path

import pytest
from scripts import load_script
from tiny_checkpoint import save_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO_ROOT / "benchmarks" / "bench_adaptive_thinking.py", "bench_adaptive_thinking")


@pytest.mark.slow
def test_pipeline_reports_every_setting_with_calls_as_the_gate_decided(bench, tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "checkpoint", n_thought_tokens=4)
    report = bench.main([
        "--checkpoint", str(checkpoint), "--distill-steps", "1", "--held-out-rows", "4", "--held-out-length", "24",
        "--gate-rows", "4", "--problems", "3", "--prompts", "2", "--new-tokens", "3", "--out-dir", str(tmp_path / "out"),
        "--work-dir", str(tmp_path / "work"),
    ])
    stem = "adaptive_thinking_checkpoint_cpu"  # named by the checkpoint directory
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {f"{stem}.json", f"{stem}.md"}
    assert json.loads((tmp_path / "out" / f"{stem}.json").read_text())["records"] == report["records"]
    records = {r["setting"]: r for r in report["records"]}
    adaptive = [r for name, r in records.items() if name.startswith("adaptive-")]
    assert set(records) - {r["setting"] for r in adaptive} == {"always", "never", "distilled", "never-continued"}
    assert len(adaptive) == 4
    thought_length = 4
    assert records["always"]["calls_per_token"] == thought_length + 1  # prefill + thought, then base step + thought
    assert records["always"]["thought_fraction_scored"] == 1
    for name in ("never", "distilled", "never-continued"):
        assert records[name]["calls_per_token"] == 1
    for record in adaptive:  # batch 1: a token costs 1 call, plus n_thought_tokens where the gate let it think
        expected = 1 + thought_length * record["thought_fraction_generated"]
        assert record["calls_per_token"] == pytest.approx(expected)
    # the highest threshold skips at least as many scored positions as the lowest
    assert adaptive[-1]["thought_fraction_scored"] <= adaptive[0]["thought_fraction_scored"]
    if report["target"]["nll_gain_always"] > 0:  # a gate's set of thinking positions never beats the best one
        for record in adaptive:
            assert record["oracle_gain_kept"] >= record["nll_gain_kept"] - 1e-4
    assert report["target"]["verdict"]
    assert [p.name for p in (tmp_path / "work").iterdir()][0].startswith("tiny-")


def test_verdict_from_the_numbers(bench):
    def records(always_nll, adaptive_nll, adaptive_calls):
        return [
            {"setting": "always", "nll": always_nll, "calls_per_token": 5.0},
            {"setting": "adaptive-0.1", "nll": adaptive_nll, "calls_per_token": adaptive_calls},
            {"setting": "never", "nll": 2.0, "calls_per_token": 1.0},
        ]

    met = bench.judge(records(1.0, 1.05, 2.5), oracle=0.97)
    assert met["met_by"] == ["adaptive-0.1"] and met["verdict"].startswith("Target met") and "97%" in met["verdict"]
    assert bench.judge(records(1.0, 1.2, 2.5))["met_by"] == []  # keeps 80 % of the gain
    assert bench.judge(records(1.0, 1.05, 2.6))["met_by"] == []  # more than half the calls
    no_gain = bench.judge(records(2.1, 2.0, 2.0))
    assert no_gain["met_by"] == [] and "no NLL gain" in no_gain["verdict"]


def test_oracle_gate_keeps_the_largest_gains(bench):
    import torch

    gains = torch.tensor([0.5, -0.2, 2.0, 0.1, 1.0, -0.4])  # total 3.0
    assert bench.oracle_gain_kept(gains, 2 / 6) == pytest.approx(3.0 / 3.0)
    assert bench.oracle_gain_kept(gains, 0.5) == pytest.approx(3.5 / 3.0)  # more than all of it: skips the losses
    assert bench.oracle_gain_kept(gains, 1.0) == pytest.approx(1.0)
