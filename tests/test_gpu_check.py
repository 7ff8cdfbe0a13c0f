"""The plumbing of scripts/gpu_check.sh and benchmarks/gpu_check.py on CPU: the no-GPU path, arguments, the stage
runner's time limits and prerequisites, the collectors and the report writer (the GPU stages themselves need one)."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def check():
    return load_script(REPO / "benchmarks" / "gpu_check.py", "gpu_check")


def fake_nvidia_smi(directory: Path, listing: str) -> dict:
    """An environment whose PATH starts with a fake nvidia-smi that prints `listing` for `-L`."""
    directory.mkdir(exist_ok=True)
    fake = directory / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(listing)}\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}"}


def test_without_a_gpu_the_script_says_so_in_one_line_at_once(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    assert subprocess.run(["sh", "-c", "command -v nvidia-smi"], env=env, capture_output=True).returncode != 0
    for environment, reason in [(env, "nvidia-smi is not installed"),
                                (fake_nvidia_smi(tmp_path / "bin", "No devices were found\n"), "lists no GPU")]:
        start = time.monotonic()
        result = subprocess.run(["bash", str(SCRIPT), "--out-dir", str(tmp_path / "runs")], env=environment,
                                capture_output=True, text=True, timeout=60)
        assert time.monotonic() - start < 10
        assert result.returncode == 2 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("gpu_check: no CUDA device:") and reason in line
        assert not (tmp_path / "runs").exists()  # nothing made, nothing installed


def test_script_with_a_gpu_listed_runs_the_stages_and_reports_torch_seeing_none(tmp_path):
    """With nvidia-smi listing a GPU the script hands over to the driver; here torch sees no CUDA device, so the
    device stage fails, every GPU stage is skipped for it, and the report (JSON + markdown) says so."""
    env = fake_nvidia_smi(tmp_path / "bin", "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\n")
    result = subprocess.run(["bash", str(SCRIPT), "--out-dir", str(tmp_path), "--python", sys.executable],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    (run_dir,) = tmp_path.glob("gpu_check_*")
    report = json.loads((run_dir / "report.json").read_text())
    status = {stage["name"]: stage["status"] for stage in report["stages"]}
    assert status.pop("environment") == "passed" and status.pop("device") == "failed"
    assert set(status.values()) == {"skipped"} and len(status) == 7
    device = report["stages"][1]
    assert device["log_tail"][-1].startswith("gpu_check: no CUDA device visible to torch")
    assert all(stage["reason"] == "not started: device did not pass" for stage in report["stages"][2:])
    markdown = (run_dir / "report.md").read_text()
    assert "| cuda_tests | skipped |" in markdown and "| device | failed |" in markdown
    assert markdown in result.stdout


def test_help_needs_no_gpu():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], env={**os.environ, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "kernel_sweep" in result.stdout and "--out-dir" in result.stdout


def test_arguments(check, tmp_path):
    args = check.parse_args([])
    assert args.out_dir == REPO / "benchmark_runs" and args.python is None and args.budget_s == 470
    assert args.limits == check.STAGE_LIMITS and set(args.stages) == set(check.STAGE_LIMITS) - {"environment", "device"}
    assert sum(check.STAGE_LIMITS.values()) <= args.budget_s < 8 * 60
    args = check.parse_args(["--out-dir", str(tmp_path), "--limit", "cuda_tests=150", "--limit", "generate=5",
                             "--stages", "generate"])
    assert args.out_dir == tmp_path and args.stages == ["generate"]
    assert args.limits == {**check.STAGE_LIMITS, "cuda_tests": 150.0, "generate": 5.0}
    assert args.budget_s == 470 + 55 - 20  # the sum of the limits, unless --budget-s sets it
    assert check.parse_args(["--limit", "cuda_tests=150", "--budget-s", "300"]).budget_s == 300
    for bad, message in [(["--limit", "nope=3"], "NAME one of environment"),
                         (["--limit", "cuda_tests=soon"], "is not a number"),
                         (["--limit", "cuda_tests=0"], "must be positive"),
                         (["--stages", "device"], "invalid choice"),
                         (["--budget-s", "-1"], "--budget-s must be positive")]:
        with pytest.raises(SystemExit):
            check.parse_args(bad)


def test_a_run_directory_is_never_reused(check, tmp_path):
    import datetime

    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    run_dir = check.make_run_dir(tmp_path / "runs", now)
    assert run_dir == tmp_path / "runs" / "gpu_check_20260102T030405Z" and run_dir.is_dir()
    with pytest.raises(SystemExit, match="already exists: a run directory is never reused"):
        check.make_run_dir(tmp_path / "runs", now)


def test_stage_commands_are_accepted_by_the_scripts_they_run(check, tmp_path, monkeypatch):
    """Every benchmark and train.py flag of the default stages parses (the GPU is only needed to run them)."""
    stages = {s.name: s for s in check.default_stages(Path(sys.executable), tmp_path, check.STAGE_LIMITS, False)}
    assert list(stages) == list(check.STAGE_LIMITS)
    assert stages["environment"].command == ["bash", str(REPO / "scripts" / "setup_cuda_env.sh")]
    for name, script in [("train_step", "bench_train_step"), ("generate", "bench_generate"),
                         ("bench_attention", "bench_attention")]:
        command = stages[name].command
        assert command[1] == f"benchmarks/{script}.py" and (REPO / command[1]).exists()
        module = load_script(REPO / command[1], f"{script}_for_gpu_check")
        argv = command[2:]
        if name == "bench_attention":  # --device defaults to cuda only where there is one
            argv = [*argv, "--device", "cpu"]
        args = module.parse_args(argv)
        assert args.out_dir == tmp_path / name
    train_step = load_script(REPO / "benchmarks" / "bench_train_step.py", "bench_train_step_for_gpu_check")
    args = train_step.parse_args(stages["train_step"].command[2:])
    assert (args.preset, args.layers, args.dtype, args.attention_impl) == ("mistral-7b", 4, "bf16", "triton")
    assert args.activation_checkpointing and args.time_seq_lens == [256]
    monkeypatch.chdir(REPO)  # the stages run from the repository root
    torchrun = stages["fsdp_nccl"].command
    assert torchrun[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    from quietstar.training import loop as train
    config, overwrite, _ = train.parse_args(torchrun[torchrun.index("train.py") + 1:])
    assert config.train.device == "cuda" and config.train.param_dtype == "bfloat16" and not overwrite
    assert config.model.quietstar["attention_impl"] == "triton" and config.train.activation_checkpointing
    assert check.cuda_test_files() == ["tests/test_triton_attention.py"]
    assert stages["cuda_tests"].command[-1] == "tests/test_triton_attention.py"
    sweep = stages["kernel_sweep"].command
    assert sweep[sweep.index("-k") + 1] == "test_cuda_kernel_sweep_against_torch"
    assert "def test_cuda_kernel_sweep_against_torch(" in (REPO / sweep[-1]).read_text()


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a killed orphan waits as one until init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stage(check, name, code, limit, needs=()):
    return check.Stage(name, f"{name} stage", [sys.executable, "-c", code], limit, needs=needs)


def test_a_stage_over_its_limit_is_killed_with_its_children_and_the_next_stage_runs(check, tmp_path):
    child_pid = tmp_path / "child.pid"
    sleeper = (  # the stage starts a grandchild of its own, which must die with it
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    stages = [
        stage(check, "slow", sleeper, limit=1.5),
        stage(check, "after", "print('ran')", limit=30),
        stage(check, "fails", "import sys; sys.exit(3)", limit=30),
        stage(check, "needs_fails", "print('never')", limit=30, needs=("fails",)),
        stage(check, "needs_after", "print('ran too')", limit=30, needs=("after",)),
    ]
    seen = []
    start = time.monotonic()
    records = check.run_stages(stages, tmp_path, budget_s=60, env=dict(os.environ),
                               on_record=lambda records: seen.append(len(records)))
    assert time.monotonic() - start < 20
    slow, after, fails, needs_fails, needs_after = records
    assert slow["status"] == "timed_out" and slow["returncode"] is None and 1.5 <= slow["seconds"] < 10
    assert re.match(r"timed out after 1\.\d+ s: killed", slow["reason"]) and slow["log_tail"] == ["started"]
    assert not running(int(child_pid.read_text()))
    assert after["status"] == "passed" and (tmp_path / "after.log").read_text() == "ran\n"
    assert fails["status"] == "failed" and fails["returncode"] == 3 and fails["reason"] == "exit status 3"
    assert needs_fails == {"name": "needs_fails", "description": "needs_fails stage", "status": "skipped",
                           "reason": "not started: fails did not pass"}
    assert needs_after["status"] == "passed"
    assert seen == [1, 2, 3, 4, 5]  # the report is rewritten after every stage


def test_the_overall_budget_caps_a_stage_and_skips_what_no_longer_fits(check, tmp_path):
    stages = [stage(check, "first", "import time; time.sleep(60)", limit=100),
              stage(check, "second", "print('never')", limit=100)]
    records = check.run_stages(stages, tmp_path, budget_s=check.MIN_STAGE_S + 1, env=dict(os.environ))
    assert records[0]["status"] == "timed_out" and records[0]["effective_limit_s"] <= check.MIN_STAGE_S + 1
    assert records[1]["status"] == "skipped" and "left in the overall budget" in records[1]["reason"]
    selected = check.run_stages([stage(check, "a", "print(1)", 10), stage(check, "b", "print(2)", 10)], tmp_path,
                                budget_s=60, env=dict(os.environ), selected={"b"})
    assert [r["status"] for r in selected] == ["skipped", "passed"]
    assert selected[0]["reason"] == "not selected (--stages)"
    assert 19 < selected[1]["effective_limit_s"] <= 20  # its 10 s and the 10 s of the stage not run


def test_time_a_stage_leaves_unused_goes_to_the_next(check, tmp_path):
    stages = [stage(check, "quick", "print(1)", limit=8), stage(check, "slow", "import time; time.sleep(60)", 2),
              stage(check, "last", "print(3)", limit=7)]
    quick, slow, last = check.run_stages(stages, tmp_path, budget_s=17, env=dict(os.environ))
    assert quick["status"] == "passed" and quick["seconds"] < 8
    # the slow stage gets its own 2 s and what the quick one left of its 8 s, and the last stage still its 7 s
    assert slow["status"] == "timed_out" and 8 < slow["effective_limit_s"] + quick["seconds"] <= 10.1
    assert last["status"] == "passed" and 5 < last["effective_limit_s"] <= 7.1


def test_pytest_results_from_junit_and_from_a_stopped_run(check, tmp_path):
    (tmp_path / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_triton_attention" name="test_a[bf16]" time="1.5"/>'
        '<testcase classname="tests.test_triton_attention" name="test_b" time="0.2">'
        '<failure message="AssertionError: dq: triton error 0.5&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.test_x" name="test_c" time="0"><skipped message="needs a CUDA GPU"/></testcase>'
        '</testsuite></testsuites>'
    )
    results = check.pytest_results(tmp_path, "")
    assert results["counts"] == {"passed": 1, "failed": 1, "skipped": 1} and results["source"] == "junit.xml"
    assert results["tests"][0] == {"name": "tests/test_triton_attention.py::test_a[bf16]", "outcome": "passed",
                                   "seconds": 1.5, "message": ""}
    assert results["tests"][1]["message"] == "AssertionError: dq: triton error 0.5"
    with pytest.raises(check.CheckFailed, match=r"1 test\(s\) skipped on the GPU machine") as failed:
        check.all_tests_ran(tmp_path, "")
    assert failed.value.results == results
    with pytest.raises(check.CheckFailed, match="no test ran"):
        check.all_tests_ran(tmp_path / "missing", "collected 0 items\n")
    log = ("tests/test_triton_attention.py::test_a[bf16-64] PASSED      [ 10%]\n"
           "tests/test_triton_attention.py::test_a[fp16-64] FAILED      [ 20%]\nsome other line\n")
    stopped = check.pytest_results(tmp_path / "missing", log)
    assert stopped["counts"] == {"passed": 1, "failed": 1} and stopped["source"].startswith("log")
    assert [t["name"] for t in stopped["tests"]] == ["tests/test_triton_attention.py::test_a[bf16-64]",
                                                      "tests/test_triton_attention.py::test_a[fp16-64]"]
    assert check.all_tests_ran(tmp_path / "missing", log) == stopped


def attention_json(device: str) -> dict:
    base = dict(fwd_timer="do_bench", bwd_timer="do_bench", fwd_GBps=1.0, bwd_GBps=1.0, peak_mem_MiB=10.0)
    return {
        "meta": {"device": device, "copy_bandwidth_GBps": 3000.0},
        "skipped": {"fa3": "flash_attn_interface is not installed"},
        "results": [
            dict(base, provider="triton", B=1, L=1024, p=4, fwd_ms=0.076, bwd_ms=0.364, fwd_tflops=150.0,
                 bwd_tflops=80.0, fwd_vs_roofline=2.0, bwd_vs_roofline=2.5),
            dict(base, provider="sdpa_cudnn", B=1, L=1024, p=0, fwd_ms=0.02, bwd_ms=0.1, fwd_tflops=400.0,
                 bwd_tflops=180.0),
            dict(provider="dense", B=1, L=1024, p=4, error="out of memory"),
        ],
        "roofline": [dict(B=1, L=1024, p=4, fwd_ms=0.062, bwd_ms=0.292)],
        "step": [],
        "complete": True,
    }


def test_attention_results_against_the_committed_predictions(check, tmp_path):
    kernel_report = json.loads(check.PREDICTIONS.read_text())
    (prediction,) = [p for p in kernel_report["predictions"]
                     if (p["hardware"], p["batch"], p["L"], p["p"]) == ("H100", 1, 1024, 4)]
    (tmp_path / "attention_nvidia-h100-80gb-hbm3.json").write_text(json.dumps(attention_json("NVIDIA H100 80GB HBM3")))
    results = check.attention_results(tmp_path, kernel_report)
    assert results["predictions_for"] == "H100" and results["skipped_providers"] == {"fa3": "flash_attn_interface is "
                                                                                             "not installed"}
    triton, sdpa, dense = results["rows"]
    assert triton["fwd_vs_predicted"] == pytest.approx(0.076 / prediction["fwd_ms"])
    assert triton["bwd_vs_predicted"] == pytest.approx(0.364 / prediction["bwd_ms"])
    assert triton["predicted_fwd_ms"] == prediction["fwd_ms"] and "fwd_vs_predicted" not in sdpa
    assert dense == {"provider": "dense", "B": 1, "L": 1024, "p": 4, "error": "out of memory"}
    (roof,) = results["rooflines"]
    assert roof["fwd_vs_predicted"] == pytest.approx(0.062 / prediction["roofline_fwd_ms"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "attention_a100.json").write_text(json.dumps(attention_json("NVIDIA A100-SXM4-80GB")))
    unpredicted = check.attention_results(other, kernel_report)
    assert unpredicted["predictions_for"] is None and "fwd_vs_predicted" not in unpredicted["rows"][0]
    assert results["complete"] and "Stopped before" not in "\n".join(check._attention_section(results))
    partial = dict(attention_json("NVIDIA H100 80GB HBM3"), roofline=[], complete=False)
    (other / "attention_a100.json").write_text(json.dumps(partial))
    stopped = check.attention_results(other, kernel_report)
    assert not stopped["complete"] and stopped["rooflines"] == [] and len(stopped["rows"]) == 3
    assert check._attention_section(stopped)[0].startswith("Stopped before the sweep ended")


def test_training_results_fail_the_stage_on_a_non_finite_loss(check, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.25}\n')
    with pytest.raises(check.CheckFailed, match="no checkpoint in"):
        check.training_results(tmp_path)
    (tmp_path / "checkpoints" / "step_00000003").mkdir(parents=True)
    (tmp_path / "final").mkdir()
    assert check.training_results(tmp_path) == {"losses": {1: 2.5, 2: 2.25}, "checkpoints": ["step_00000003"],
                                                "final_export": True}
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": NaN}\n')
    with pytest.raises(check.CheckFailed, match=r"non-finite loss at steps \[2\]") as failed:
        check.training_results(tmp_path)
    assert failed.value.results["checkpoints"] == ["step_00000003"]  # the report keeps what was found
    failing = check.Stage("fsdp", "train", [sys.executable, "-c", "print('done')"], 30,
                          collect=lambda d, log: check.training_results(tmp_path))
    (record,) = check.run_stages([failing], tmp_path, budget_s=60, env=dict(os.environ))
    assert record["status"] == "failed" and record["reason"] == "non-finite loss at steps [2]"


def test_report_writer(check, tmp_path):
    device = dict(device="NVIDIA H100 80GB HBM3", capability="9.0", memory_GiB=79.1, multiprocessors=132, devices=1,
                  torch="2.13.0+cu130", cuda="13.0", cudnn=91000, triton="3.7.0", transformers="5.23.0",
                  python="3.12.3")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "attention_h100.json").write_text(json.dumps(attention_json(device["device"])))
    tests = dict(source="junit.xml", counts={"passed": 1, "failed": 1}, tests=[
        dict(name="tests/test_triton_attention.py::test_ok", outcome="passed", seconds=0.5, message=""),
        dict(name="tests/test_triton_attention.py::test_bad[fp16]", outcome="failed", seconds=1.0,
             message="AssertionError: dq | off"),
    ])
    train_step = dict(
        source="train_step_h100.json",
        meta=dict(device=device["device"], model=dict(hidden_size=4096, num_hidden_layers=4), batch=1, n_thoughts=2,
                  n_ahead_talk=4, dtype="bf16", attention_impl="triton", activation_checkpointing=True),
        time=[dict(n_thought_tokens=8, passes=12, seq_len=256, status="ok", quietstar_seconds=0.9,
                   plain_seconds=0.05, ratio=1.5)],
        memory=[dict(n_thought_tokens=4, passes=8, seq_len=256, status="ok", cuda_max_allocated_bytes=12 * 2**30,
                     cuda_peak_bytes=3 * 2**30, union_bytes=2 * 2**30),
                dict(n_thought_tokens=8, passes=12, seq_len=256, status="oom")],
    )
    stages = [
        dict(name="device", description="torch sees the CUDA device", status="passed", seconds=3.0, limit_s=20.0,
             effective_limit_s=20.0, results=device),
        dict(name="cuda_tests", description="CUDA tests", status="failed", seconds=80.0, limit_s=100.0,
             reason="exit status 1", results=tests, log="cuda_tests.log", log_tail=["1 failed, 1 passed"]),
        dict(name="bench_attention", description="attention", status="passed", seconds=50.0, limit_s=60.0,
             results=check.attention_results(tmp_path / "bench", json.loads(check.PREDICTIONS.read_text()))),
        dict(name="train_step", description="training step", status="passed", seconds=40.0, limit_s=55.0,
             results=train_step),
        dict(name="generate", description="generate", status="timed_out", seconds=25.0, limit_s=25.0,
             reason="timed out after 25 s: killed, the rest of it skipped", log="generate.log", log_tail=["step 3"]),
        dict(name="fsdp_nccl", description="torchrun", status="skipped", reason="not started: 3 s left in the "
             "overall budget"),
    ]
    report = dict(check="gpu_check", started="2026-01-02T03:04:05+00:00", revision="abc1234", budget_s=470.0,
                  python="/x/python", run_dir=str(tmp_path), device=device, stages=stages,
                  summary=check.summary_counts(stages), elapsed_s=201.0)
    check.write_report(tmp_path, report)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# GPU check: NVIDIA H100 80GB HBM3\n")
    assert "3 passed, 1 failed, 1 timed out, 1 skipped of 6 stages, in 201 s of a 470 s budget" in markdown
    assert "torch 2.13.0+cu130 (CUDA 13.0, cuDNN 91000), triton 3.7.0" in markdown
    assert "| generate | timed out | 25 | 25 | generate | timed out after 25 s: killed" in markdown
    assert "| fsdp_nccl | skipped | - | - | torchrun | not started: 3 s left in the overall budget |" in markdown
    failed_row = "| `tests/test_triton_attention.py::test_bad[fp16]` | failed | 1 | AssertionError: dq / off |"
    assert failed_row in markdown and markdown.index(failed_row) < markdown.index("test_ok`")  # failures first
    assert "```\n1 failed, 1 passed\n```" in markdown and "Last lines of generate.log" in markdown
    prediction = next(p for p in json.loads(check.PREDICTIONS.read_text())["predictions"]
                      if (p["hardware"], p["batch"], p["L"], p["p"]) == ("H100", 1, 1024, 4))
    assert f"| 1 | 1024 | 4 | triton | 0.076 | 0.364 | 150 | 80 | {0.076 / prediction['fwd_ms']:.3g} |" in markdown
    assert "| 1 | 1024 | 4 | dense | out of memory |" in markdown and "fa3: flash_attn_interface" in markdown
    assert "| 8 | 12 | 256 | 0.9 | 0.05 | 1.5 |" in markdown
    assert "| 4 | 8 | 256 | 12.00 | 3.00 | 2.00 |" in markdown and "| 8 | 12 | 256 | oom | | |" in markdown
    stages[3]["results"] = {"unexpected": True}  # a collector's surprise is reported, not raised
    assert "## train_step: passed\n\n(results not rendered: KeyError: 'meta'" in check.markdown_report(report)
