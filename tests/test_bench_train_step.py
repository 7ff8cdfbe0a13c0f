"""benchmarks/bench_train_step.py runs at tiny size and reports memory parts, a linear fit and a time ratio."""

import json
from pathlib import Path

import pytest
import torch
from scripts import load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_step.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_train_step")


def test_fit_separates_linear_from_quadratic_growth(bench):
    passes = [7, 10, 15, 20]
    linear = bench.linear_fit(passes, [1000 + 300 * p for p in passes])
    assert abs(linear["a_bytes"] - 1000) < 1e-6 and abs(linear["b_bytes_per_pass"] - 300) < 1e-6
    assert linear["max_abs_relative_residual"] < 1e-12 and abs(linear["quadratic_share_at_max_p"]) < 1e-12
    quadratic = bench.linear_fit(passes, [1000 + 300 * p + 20 * p * p for p in passes])
    assert quadratic["max_abs_relative_residual"] > 1e-3
    assert abs(quadratic["quadratic_share_at_max_p"] - 20 * 400 / (1000 + 6000 + 8000)) < 1e-9


@pytest.mark.slow
def test_quick_run_writes_memory_fit_and_time(bench, tmp_path):
    bench.main(["--preset", "tiny", "--quick", "--device", "cpu", "--out-dir", str(tmp_path), "--label", "smoke"])

    report = json.loads((tmp_path / "train_step_smoke_cpu.json").read_text())
    assert (tmp_path / "train_step_smoke_cpu.md").read_text().startswith("# Training step memory and time")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (tmp_path / "train_step_smoke_cpu.png").exists()
    else:
        assert (tmp_path / "train_step_smoke_cpu.png").stat().st_size > 0
    meta = report["meta"]
    assert meta["preset"] == "tiny" and meta["attention_impl"] == "torch" and meta["n_ahead_talk"] == 4

    memory = report["memory"]
    assert [(r["study"], r["n_thought_tokens"], r["seq_len"]) for r in memory] == [
        ("thought_length", 3, 8), ("thought_length", 4, 8), ("thought_length", 5, 8), ("seq_len", 4, 8), ("seq_len", 4, 12)
    ]
    for row in memory:
        assert row["passes"] == row["n_thought_tokens"] + 4
        assert row["kv_store_bytes"] > 0 and row["autograd_saved_bytes"] > 0  # the K/V store was found
        assert row["layer_input_bytes"] == 0  # nothing is checkpointed
        assert row["union_bytes"] == row["autograd_saved_bytes"] + row["kv_store_bytes"] - row["shared_bytes"]
        assert 0 <= row["shared_bytes"] <= min(row["kv_store_bytes"], row["autograd_saved_bytes"])
        assert row["vocab_sized_bytes"] <= row["autograd_saved_bytes"] and row["cuda_peak_bytes"] is None
    by_length = [r["union_bytes"] for r in memory[:3]]
    assert by_length == sorted(by_length) and by_length[0] < by_length[-1]  # more passes keep more
    assert memory[3]["union_bytes"] < memory[4]["union_bytes"]  # and so do longer sequences

    fit = report["fit"]
    assert fit["b_bytes_per_pass"] > 0 and len(fit["relative_residuals"]) == 3
    assert fit["max_abs_relative_residual"] == max(abs(r) for r in fit["relative_residuals"])

    (timing,) = report["time"]
    assert timing["seq_len"] == 8 and timing["passes"] == 8
    assert timing["quietstar_seconds"] > 0 and timing["plain_seconds"] > 0
    (ratio,) = timing["round_ratios"]  # --quick times one round after the warm-up
    assert timing["ratio"] == ratio > 0


@pytest.mark.slow
def test_checkpointed_layers_are_counted_by_their_inputs(bench):
    """Under activation checkpointing the layers save nothing in forward; what they keep is their inputs."""
    rows = {}
    for flags in ([], ["--activation-checkpointing"]):
        args = bench.parse_args(["--preset", "tiny", "--quick", "--device", "cpu", *flags])
        rows[bool(flags)] = bench.memory_row(args, "thought_length", 4, 8, torch.device("cpu"))
    full, checkpointed = rows[False], rows[True]
    assert full["layer_input_bytes"] == 0 and full["autograd_saved_bytes_by_node"]
    # the per-node walk would read the checkpointed nodes' saved tensors and so recompute the layers: it is skipped
    assert checkpointed["autograd_saved_bytes_by_node"] == {} and checkpointed["layer_input_bytes"] > 0
    assert checkpointed["union_bytes"] == (
        checkpointed["autograd_saved_bytes"] + checkpointed["kv_store_bytes"] - checkpointed["shared_bytes"]
        + checkpointed["layer_input_bytes"]
    )
    assert checkpointed["autograd_saved_storages"] < full["autograd_saved_storages"] / 2
    assert checkpointed["union_bytes"] < full["union_bytes"]
