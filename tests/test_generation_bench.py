"""benchmarks/bench_generate.py runs and reports thinking cost as model calls per generated token."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generate.py"


def test_bench_generate_writes_tokens_per_second(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_generate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    output = tmp_path / "generate.json"
    bench.main([
        "--prompt-length", "8", "--new-tokens", "3", "--thought-lengths", "3", "4", "--repeats", "1",
        "--output", str(output),
    ])
    report = json.loads(output.read_text())
    assert report["device"].startswith("cpu") and report["preset"] == "tiny"
    base, *thinking = report["results"]
    assert base["thinking"] is False and base["model_calls_per_token"] == 1
    assert [row["n_thought_tokens"] for row in thinking] == [3, 4]
    for row in thinking:
        assert row["model_calls_per_token"] == row["n_thought_tokens"] + 1 and row["tokens_per_s"] > 0
