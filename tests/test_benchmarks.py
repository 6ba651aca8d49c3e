"""The benchmark scripts' smoke modes run end to end and report what their readers look for; their numbers
mean nothing here."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, make_workspace, minilm_dir, sst2_dir

sys.path.insert(0, str(REPO / "benchmarks"))

from _common import SIZES, data_sheet_peak_tflops, step_matmul_flops
from epoch_time import round_order


def _benchmark(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=REPO, capture_output=True, text=True, env=env, timeout=600
    )


def _report(done: subprocess.CompletedProcess) -> tuple[str, dict]:
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return "\n".join(lines[:-1]), json.loads(lines[-1])


@pytest.mark.slow
def test_device_check_quick_prints_one_table_and_the_json():
    # A bf16 peak given, none for float32: on a CPU only the given one grades the step.
    table, result = _report(_benchmark(["benchmarks/device_check.py", "--quick", "--peak-tflops", "1"]))
    assert "| part | dtype | shape |" in table
    assert sum(line.startswith("|---") for line in table.splitlines()) == 1
    for row in (
        "| step | bfloat16 | 8 x 16 |",
        "| step | float32 | 8 x 16 |",
        "| teacher pass | bfloat16 |",
        "| 5-step run | bfloat16 |",
    ):
        assert row in table
    assert result["benchmark"] == "device_check" and result["platform"] == "cpu"
    assert {"steps", "teacher_pass", "run", "device_kind", "peak_device_mib"} <= result.keys()
    bf16, fp32 = result["steps"]
    assert (bf16["dtype"], fp32["dtype"]) == ("bfloat16", "float32")
    for step in (bf16, fp32):
        assert step["n"] == 5 and step["matmul_flops"] == step_matmul_flops(SIZES["tiny"], 8, 16)
        assert step["xla_flops"] is None or step["xla_flops"] > 0
        assert step["first_call_s"] > 0 and step["median_s"] > 0
    assert (bf16["peak_tflops"], bf16["peak_source"]) == (1, "--peak-tflops") and bf16["mfu"] > 0
    assert fp32["peak_tflops"] is None and fp32["mfu"] is None and "| n/a |" in table
    teacher = result["teacher_pass"]
    assert teacher["sentences"] == 200 and teacher["examples_per_s"] > 0
    assert set(teacher["cache_bytes"]) == {"kl.logits", "cos.last_hidden_state"}
    run = result["run"]
    assert run["steps"] == 5 and run["examples"] == 40 and run["steady_steps"] + len(run["shapes"]) == 5
    assert run["traces"] == len(run["shapes"])


def test_device_check_grades_against_the_data_sheet_by_device_name():
    assert data_sheet_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
    assert data_sheet_peak_tflops("NVIDIA H100 PCIe", "tf32") == 378.0
    assert data_sheet_peak_tflops("NVIDIA H200", "tf32") == 494.7
    assert data_sheet_peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 19.5
    assert data_sheet_peak_tflops("cpu", "bfloat16") is None


def test_epoch_time_rounds_alternate_the_order():
    orders = [round_order(["f", "e", "d"], i) for i in range(3)]
    assert orders == [["f", "e", "d"], ["d", "e", "f"], ["f", "e", "d"]]


@pytest.mark.slow
def test_epoch_time_quick_reports_each_ratio_over_rounds():
    args = [
        "benchmarks/epoch_time.py",
        "--quick",
        "--variants",
        "b,e",
        "--rounds",
        "2",
        "--torch-threads",
        "1",
        "--tokenizer",
        str(minilm_dir()),
        "--data-dir",
        str(sst2_dir()),
    ]
    done = _benchmark(args)
    table, result = _report(done)
    parent = [line for line in done.stderr.splitlines() if line.startswith("[parent] round")]
    order = [line.split(", variant ")[1][0] for line in parent]
    assert order == ["b", "e", "e", "b"]
    assert result["rounds"] == 2 and [sorted(r) for r in result["round_results"]] == [["b", "e"], ["b", "e"]]
    ratio = result["ratios"]["b/e"]
    assert set(ratio) == {"1_epochs", "steady_epoch", "timed_steps"}
    for value in ratio.values():
        assert len(value["rounds"]) == 2 and value["min"] <= value["median"] <= value["max"]
        assert value["min"] == min(value["rounds"]) and value["max"] == max(value["rounds"])
    rounds = result["round_results"]
    per_round = [r["b"]["measured_examples_per_s"] / r["e"]["measured_examples_per_s"] for r in rounds]
    assert ratio["timed_steps"]["rounds"] == pytest.approx(per_round)
    assert "medians over 2 rounds" in table and "median over 2 rounds" in table
    assert f"| b/e | {ratio['1_epochs']['median']:.2f}x ({ratio['1_epochs']['min']:.2f}-" in table


@pytest.mark.slow
def test_packing_throughput_runs_each_arm_and_reports_it(tmp_path):
    """One round of buckets against one packed shape, on a tiny teacher over the first SST-2 rows."""
    workspace = make_workspace(tmp_path, {"train": 80, "dev": 20})
    teacher = workspace / "teacher"
    table, result = _report(
        _benchmark(
            [
                "benchmarks/packing_throughput.py",
                "--rounds",
                "1",
                "--steps",
                "100",
                "--warm",
                "0",
                "--packed",
                "2x64x8",
                "--set",
                f"data_dir={workspace / 'data'}",
                f"teacher_model={teacher}",
                f"tokenizer_name={teacher}",
                "max_length=64",
                "student_init_layers=[0,1]",
            ]
        )
    )
    assert set(result) == {"buckets", "2x64x8"}
    for runs in result.values():
        (run,) = runs
        assert run["sentences_per_s"] > 0 and run["programs"] >= 1
    assert "| 2x64x8 |" in table and "| buckets |" in table
    assert result["2x64x8"][0]["programs"] < result["buckets"][0]["programs"]  # one shape against several


@pytest.mark.slow
def test_teacher_pass_runs_each_arm_and_the_arms_cache_the_same_values(tmp_path):
    """One round of the bucketed pass against a packed one, on a tiny teacher over the first SST-2 rows."""
    workspace = make_workspace(tmp_path, {"train": 60})
    table, result = _report(
        _benchmark(
            [
                "benchmarks/teacher_pass.py",
                "--rounds",
                "1",
                "--arms",
                "buckets:16",
                "packed:4x64x8",
                "--weights",
                str(workspace / "teacher"),
                "--train",
                str(workspace / "data" / "train.tsv"),
            ]
        )
    )
    buckets, packed = result["results"]["buckets:16"][0], result["results"]["packed:4x64x8"][0]
    assert buckets["examples"] == packed["examples"] == 60
    assert packed["programs"] == 1 < buckets["programs"]
    assert packed["real_tokens"] > buckets["real_tokens"]
    assert result["max_difference"]["packed:4x64x8"] < 1e-4
    assert "| packed:4x64x8 |" in table and "| buckets:16 |" in table
