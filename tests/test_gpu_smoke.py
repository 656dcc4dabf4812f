"""scripts/gpu_smoke.py in its CPU-only form: the cases a GPU user runs first, on logical CPUs."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "gpu_smoke.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


@pytest.mark.slow
def test_cpu_form_runs_one_device_and_mirrored_cases_and_refuses_multi_replica_xla(tmp_path):
    cases = "one-float16-xla,all-float16-noxla,all-bfloat16-xla"
    record = tmp_path / "smoke.jsonl"
    args = ["--steps", "4", "--depth", "8", "--image-size", "32", "--batch-size", "4", "--only", cases]
    done = subprocess.run(
        [sys.executable, SCRIPT, *args, "--json", str(record)], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "gpu smoke: 3 passed, 0 failed", done.stdout
    by_case = {line.split()[0]: line for line in lines[:-1]}
    assert set(by_case) == set(cases.split(","))
    assert "replicas=1" in by_case["one-float16-xla"] and "images/s=" in by_case["one-float16-xla"]
    assert "replicas=2" in by_case["all-float16-noxla"] and "loss " in by_case["all-float16-noxla"]
    assert "refused: Received: xla=True with 2 replicas" in by_case["all-bfloat16-xla"]
    assert len(record.read_text().splitlines()) == 3


def test_unknown_case_is_exit_2_with_one_error_line():
    done = subprocess.run([sys.executable, SCRIPT, "--only", "three-gpus"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 2
    assert done.stderr.count("Error:") == 1 and "unknown case(s) three-gpus" in done.stderr
