"""The ahead-of-time compile report: every config the autotuner may pick at d = 64 and d = 128 compiles without
register spills for sm_90 and sm_80 (no GPU needed: triton compiles for a GPUTarget and its bundled ptxas assembles
the PTX)."""

import json
from pathlib import Path

import pytest
from scripts import load_script

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_report.py"


@pytest.fixture(scope="module")
def report_module():
    return load_script(REPORT, "kernel_report")  # registered: its worker processes pickle compile_one by name


@pytest.fixture(scope="module")
def kernels(report_module):
    module, _ = report_module.load_kernels()
    if module.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1: the autotune candidates and the compiler are those of the interpreter")
    return module


@pytest.fixture(scope="module")
def autotune(report_module, kernels):
    return report_module.load_kernels()[1]


def test_selectable_configs_compile_without_spills(report_module, kernels, tmp_path):
    if None in (report_module.ptxas_for(90), report_module.ptxas_for(80)):
        pytest.skip("ptxas (shipped with triton's NVIDIA backend) is not available here")
    report = report_module.main(["--head-dims", "64", "128", "--dtypes", "bf16", "--selectable-only",
                                 "--no-predictions", "--out-dir", str(tmp_path)])
    rows = report["compile"]
    assert {r["kernel"] for r in rows} == {name for name, _, _ in report_module.VARIANTS}
    assert {r["arch"] for r in rows} == {80, 90} and all(r["selectable"] for r in rows)
    for row in rows:
        assert "error" not in row, row
        assert 0 < row["registers"] <= 255 and row["shared_bytes"] >= 0, row
    spills = [(r["kernel"], r["arch"], r["config"], r["warps"], r["spill_stores"], r["spill_loads"])
              for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spills and not report["spills_in_selectable"], spills
    saved = json.loads((tmp_path / "kernel_report.json").read_text())
    assert saved["compile"] == rows and saved["meta"]["head_dims"] == [64, 128]
    assert "| fwd | sm_90 | 128 | bf16 |" in (tmp_path / "kernel_report.md").read_text()


def test_pruning_keeps_measured_configs_at_d64_and_d128_and_all_below(autotune):
    for key, prune in autotune.PRUNERS.items():
        candidates = autotune.CONFIGS[key]
        for fused in (True, False):
            args = dict(GROUPS=4, FUSED_DQ=fused)
            assert prune(candidates, {}, HEAD_DIM=32, **args) == candidates
            for head_dim in (64, 128):
                kept = prune(candidates, {}, HEAD_DIM=head_dim, **args)
                assert kept and all(c in candidates for c in kept), (key, head_dim)
            assert len(kept) < len(candidates), key
    dkv = autotune.CONFIGS["dkv"]
    fused = autotune.prune_dkv(dkv, {}, HEAD_DIM=128, FUSED_DQ=True)
    assert set(map(autotune.config_key, fused)) < set(map(autotune.config_key,
                                                          autotune.prune_dkv(dkv, {}, HEAD_DIM=128, FUSED_DQ=False)))
    # a wider GQA group shrinks the thought-backward rows: the (G, R, d) dQ accumulator stays bounded
    wide = autotune.prune_thought_bwd(autotune.CONFIGS["thought_bwd"], {}, HEAD_DIM=128, GROUPS=16)
    assert wide and all(c.kwargs["BLOCK_R"] * 16 * 128 // (32 * c.num_warps) <= 64 for c in wide)


def test_signature_follows_the_argument_naming(report_module, kernels):
    fn = report_module._jit_function(kernels.KERNELS["thought_bwd"])
    constexprs = dict(GROUPS=4, HEAD_DIM=128, BLOCK_G=4, BLOCK_R=8)
    signature, attrs = report_module.signature(fn, "bf16", constexprs)
    assert signature["Q"] == "*bf16" and signature["DQ_ACC"] == "*fp32" and signature["THOUGHT_KEY_PTRS"] == "*i64"
    assert signature["scaling"] == "fp32" and signature["seq_len"] == "i32" and signature["GROUPS"] == "constexpr"
    assert (fn.arg_names.index("stride_ql"),) in attrs and (fn.arg_names.index("seq_len"),) not in attrs


def test_ptxas_log_parsing(report_module):
    log = (
        "ptxas info    : Compiling entry function '_fwd_kernel' for 'sm_90a'\n"
        "ptxas info    : Function properties for _fwd_kernel\n"
        "    200 bytes stack frame, 196 bytes spill stores, 192 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 200 bytes cumulative stack size\n"
    )
    assert report_module.parse_ptxas(log) == dict(registers=255, spill_stores=196, spill_loads=192, stack=200)
    assert report_module.parse_ptxas("ptxas info    : Used 64 registers")["spill_stores"] == 0


def test_predictions_are_consistent(report_module):
    rows = report_module.predictions([1024, 2048], [1, 16], [1, 8])
    by_key = {(r["hardware"], r["batch"], r["L"], r["p"]): r for r in rows}
    assert len(by_key) == 16
    for (hardware, batch, length, passes), row in by_key.items():
        assert row["fwd_ms"] >= row["fwd_peak_bound_ms"] > 0 and row["bwd_deterministic_ms"] > row["bwd_ms"] > 0
        assert row["roofline_fwd_ms"] > 0 and row["fwd_vs_roofline"] == row["fwd_ms"] / row["roofline_fwd_ms"]
        assert sum(row["bwd_kernels_ms"].values()) == pytest.approx(row["bwd_ms"])
        if hardware == "H200":  # same FLOP rate, more bandwidth: never slower
            assert row["fwd_ms"] <= by_key[("H100", batch, length, passes)]["fwd_ms"]
            assert row["bwd_ms"] <= by_key[("H100", batch, length, passes)]["bwd_ms"]
    assert by_key[("H100", 1, 2048, 16)]["fwd_ms"] > by_key[("H100", 1, 2048, 1)]["fwd_ms"]
    costs = report_module.kernel_costs(1, 32, 8, 2048, 4, 128)
    deterministic = report_module.kernel_costs(1, 32, 8, 2048, 4, 128, deterministic=True)
    # 5 matrix products per backward tile fused, 7 (4 + 3) in deterministic mode
    assert (deterministic["dkv"]["mma"] + deterministic["dq"]["mma"]) / costs["dkv"]["mma"] == pytest.approx(7 / 5)
    assert "dq" not in costs and costs["dkv"]["launches"] == 3  # B = 1: head split, then two fixed-order sums
    assert report_module._rate({512: 100.0, 2048: 300.0}, 1024) == pytest.approx(200.0)
    assert report_module._rate({512: 100.0, 2048: 300.0}, 8192) == 300.0
    steps = report_module.step_aggregate(["H100"], [1024], [1], 4)
    per_pass = report_module.predictions([1024], [1, 2, 3, 4], [1])
    expected = sum(r["fwd_ms"] + r["bwd_ms"] for r in per_pass if r["hardware"] == "H100")
    assert steps[0]["step_ms"] == pytest.approx(expected)
