"""The attention microbenchmark runs at the tiny preset on CPU and writes a complete JSON and markdown report."""

import json
from pathlib import Path

import pytest
import torch
from scripts import load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_attention")


def test_tiny_cpu_run_writes_json_and_markdown(bench, tmp_path, capsys):
    report = bench.main(["--preset", "tiny", "--device", "cpu", "--lengths", "16", "24", "--passes", "1", "3",
                         "--batches", "1", "2", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "attention_cpu.json").read_text())
    assert saved["results"] == report["results"] and saved["complete"] is True  # rewritten whole at the end
    meta = saved["meta"]
    assert meta["device"] == "cpu" and meta["preset"] == "tiny" and meta["batches"] == [1, 2]
    assert meta["torch"] == torch.__version__ and meta["triton"] and "Roofline" in meta["assumptions"]
    assert meta["copy_bandwidth_GBps"] > 0 and meta["lengths"] == [16, 24] and meta["passes"] == [1, 3]
    # CUDA-only peers are skipped with a reason instead of failing
    for provider in ("flex", "sdpa_cudnn", "fa3", "fa2"):
        assert "CUDA" in saved["skipped"][provider] or "not installed" in saved["skipped"][provider]

    rows = {(r["provider"], r["B"], r["L"], r["p"]): r for r in saved["results"]}
    expected = {(p, b, L, n) for p in ("torch", "dense") for b in (1, 2) for L in (16, 24) for n in (1, 3)}
    expected |= {("sdpa", b, L, 0) for b in (1, 2) for L in (16, 24)}
    if "triton" not in saved["skipped"]:
        expected |= {("triton", b, L, n) for b in (1, 2) for L in (16, 24) for n in (1, 3)}
    assert expected <= set(rows)
    for key in expected:
        row = rows[key]
        assert "error" not in row, row
        assert row["fwd_ms"] > 0 and row["bwd_ms"] > 0 and row["fwd_timer"] == row["bwd_timer"] == "perf_counter"
        assert row["fwd_tflops"] > 0 and row["fwd_GBps"] > 0 and row["bwd_GBps"] > 0
        if key[0] != "sdpa":
            assert row["fwd_vs_roofline"] > 0 and row["bwd_vs_roofline"] > 0

    roofs = {(r["B"], r["L"], r["p"]): r for r in saved["roofline"]}
    assert set(roofs) == {(b, L, n) for b in (1, 2) for L in (16, 24) for n in (1, 3)}
    small, large = roofs[(1, 16, 1)], roofs[(1, 16, 3)]
    assert large["thought_bytes"] == 3 * small["thought_bytes"] and large["fwd_ms"] > small["fwd_ms"]
    assert small["fwd_peer"] == "sdpa" and small["causal_fwd_ms"] == rows[("sdpa", 1, 16, 0)]["fwd_ms"]

    steps = {(s["provider"], s["B"], s["L"]): s for s in saved["step"]}
    torch_step = steps[("torch", 1, 16)]
    measured = {n: rows[("torch", 1, 16, n)]["fwd_ms"] + rows[("torch", 1, 16, n)]["bwd_ms"] for n in (1, 3)}
    # p = 1, 2, 3 with p = 2 interpolated halfway
    assert torch_step["P"] == 3 and not torch_step["exact"]
    assert torch_step["step_ms"] == pytest.approx(measured[1] + (measured[1] + measured[3]) / 2 + measured[3])

    table = (tmp_path / "attention_cpu.md").read_text()
    assert "| 2 | 16 | 3 | dense |" in table and "skipped `flex`" in table and "step / roof" in table
    assert table in capsys.readouterr().out


def test_default_output_directory_is_ignored_by_git(bench):
    assert bench.DEFAULT_OUT_DIR.name == "benchmark_runs"
    args = bench.parse_args(["--device", "cpu"])
    assert args.out_dir == bench.DEFAULT_OUT_DIR and args.preset in ("tiny", "mistral-7b")


def test_interpolation_in_passes(bench):
    points = {1: 2.0, 4: 5.0, 8: 9.0}
    assert bench._interpolated(points, 4) == 5.0
    assert bench._interpolated(points, 2) == pytest.approx(3.0)
    assert bench._interpolated(points, 6) == pytest.approx(7.0)
    assert bench._interpolated(points, 16) == pytest.approx(17.0)  # extrapolated with the last slope
    assert bench._interpolated({2: 4.0}, 5) == pytest.approx(10.0)  # a single point scales linearly


def test_cost_model(bench):
    # causal pairs L(L+1)/2 plus L*p thought pairs, 4 d FLOPs per pair and head
    assert bench.useful_flops(1, 1, 4, 2, 8) == 4 * 8 * (10 + 8)
    assert bench.useful_flops(1, 1, 4, 2, 8, causal_only=True) == 4 * 8 * 10
    forward, backward = bench.minimal_bytes(1, 2, 1, 4, 3, 8, 2)
    q, kv, thought, lse = 2 * 4 * 8 * 2, 2 * 4 * 8 * 2, 2 * 3 * 4 * 8 * 2, 4 * 2 * 4
    assert forward == 2 * q + kv + thought + lse
    assert backward == 4 * q + lse + 2 * kv + 2 * thought


def test_dense_baseline_matches_the_oracle(bench):
    from quietstar.ops.thought_attention.naive import naive_thought_attention

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 9, 16, generator=generator)
    base_key, base_value = (torch.randn(1, 2, 9, 16, generator=generator) for _ in range(2))
    thought_keys = [torch.randn(1, 2, 9, 16, generator=generator) for _ in range(3)]
    thought_values = [torch.randn(1, 2, 9, 16, generator=generator) for _ in range(3)]
    dense = bench.dense_repeated(q, base_key, base_value, thought_keys, thought_values, 0.25)
    expected, _ = naive_thought_attention(q, base_key, base_value, thought_keys, thought_values, None, 0.25)
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)
