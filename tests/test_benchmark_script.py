"""scripts/benchmark_models.py runs and prints machine-readable results (its speed is not tested)."""

import json
import subprocess
import sys

from conftest import REPO


def test_quick_benchmark_prints_json_lines_and_a_summary():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_models.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summary = records[-1]
    assert summary["summary"] is True
    modes = {(r["model"], r["mode"]) for r in records[:-1]}
    assert modes == {("resnet20_w0.25", "train"), ("resnet20_w0.25", "infer")}
    assert all(r["images_per_sec"] > 0 and r["step_ms_min"] <= r["step_ms_median"] <= r["step_ms_max"]
               for r in records[:-1])
