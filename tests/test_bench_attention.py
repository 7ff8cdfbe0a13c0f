"""The attention microbenchmark runs at tiny CPU size and writes a complete JSON and markdown report."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_writes_json_and_markdown(bench, tmp_path):
    bench.main(["--cpu-smoke", "--lengths", "16", "24", "--passes", "1", "3", "--out-dir", str(tmp_path)])
    report = json.loads((tmp_path / "attention_cpu.json").read_text())
    meta = report["meta"]
    assert meta["device"] == "cpu" and meta["mode"] == "cpu-smoke"
    assert meta["torch"] == torch.__version__ and meta["triton"]
    assert meta["copy_bandwidth_GBps"] > 0 and meta["lengths"] == [16, 24] and meta["passes"] == [1, 3]
    # CUDA-only peers are skipped with a reason instead of failing
    assert "CUDA" in report["skipped"]["flex"] and "CUDA" in report["skipped"]["flash_attn"]

    rows = {(r["provider"], r["L"], r["p"]): r for r in report["results"]}
    expected = {(p, L, n) for p in ("torch", "dense") for L in (16, 24) for n in (1, 3)}
    expected |= {("sdpa_causal", L, 0) for L in (16, 24)}
    if "triton" not in report["skipped"]:
        expected |= {("triton", L, n) for L in (16, 24) for n in (1, 3)}
    assert expected <= set(rows)
    for key in expected:
        row = rows[key]
        assert "error" not in row, row
        assert row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0
        assert row["fwd_tflops"] > 0 and row["fwd_GBps"] > 0 and row["fwdbwd_GBps"] > 0
        if key[0] != "sdpa_causal":
            assert row["fwd_vs_roofline"] > 0 and row["bwd_vs_roofline"] is not None

    roofs = {(r["L"], r["p"]): r for r in report["roofline"]}
    assert set(roofs) == {(L, n) for L in (16, 24) for n in (1, 3)}
    small, large = roofs[(16, 1)], roofs[(16, 3)]
    assert large["thought_bytes"] == 3 * small["thought_bytes"] and large["fwd_ms"] > small["fwd_ms"]

    table = (tmp_path / "attention_cpu.md").read_text()
    assert "| 16 | 3 | dense |" in table and "skipped `flex`" in table


def test_cost_model(bench):
    # causal pairs L(L+1)/2 plus L*p thought pairs, 4 d FLOPs per pair and head
    assert bench.useful_flops(1, 1, 4, 2, 8) == 4 * 8 * (10 + 8)
    assert bench.useful_flops(1, 1, 4, 2, 8, causal_only=True) == 4 * 8 * 10
    forward, backward = bench.minimal_bytes(1, 2, 1, 4, 3, 8, 2)
    q, kv, thought, lse = 2 * 4 * 8 * 2, 2 * 4 * 8 * 2, 2 * 3 * 4 * 8 * 2, 4 * 2 * 4
    assert forward == 2 * q + kv + thought + lse
    assert backward == 4 * q + lse + 2 * kv + 2 * thought
