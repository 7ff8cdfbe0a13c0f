"""benchmarks/bench_generate.py runs, reports thinking cost as model calls per generated token, prints a table and
writes JSON, markdown and a PNG outside the tracked files unless asked to."""

import json
from pathlib import Path

import pytest
from scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks" / "bench_generate.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_generate")


def test_bench_generate_writes_tokens_per_second_table_and_plot(bench, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    bench.main([
        "--device", "cpu", "--prompt-length", "8", "--new-tokens", "3", "--thought-lengths", "3", "4",
        "--repeats", "1", "--out-dir", str(tmp_path),
    ])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["generate_cpu.json", "generate_cpu.md", "generate_cpu.png"]
    report = json.loads((tmp_path / "generate_cpu.json").read_text())
    assert report["device"].startswith("cpu") and report["preset"] == "tiny" and report["settings"]["dtype"] == "fp32"
    base, *thinking = report["results"]
    assert base["thinking"] is False and base["model_calls_per_token"] == 1
    assert [row["n_thought_tokens"] for row in thinking] == [3, 4]
    for row in thinking:
        assert row["model_calls_per_token"] == row["n_thought_tokens"] + 1 and row["tokens_per_s"] > 0

    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| thinking | n_thought_tokens | tokens/s") and set(table[1]) <= {"|", "-"}
    assert [line.split("|")[1].strip() for line in table[2:]] == ["no", "yes", "yes"]
    assert (tmp_path / "generate_cpu.md").read_text().count("\n| yes |") == 2
    assert (tmp_path / "generate_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_go_to_an_untracked_directory_by_default(bench):
    args = bench.parse_args(["--device", "cpu"])
    assert args.out_dir == REPO_ROOT / "benchmark_runs" and (args.preset, args.dtype) == ("tiny", "fp32")
    assert "benchmark_runs/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert bench.parse_args(["--device", "cpu", "--out-dir", "benchmarks/results"]).out_dir == Path("benchmarks/results")


def test_presets_match_the_other_benchmarks(bench):
    assert list(bench.PRESETS) == ["tiny", "mistral-7b"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--preset", "small"])
