"""`resnet-keras benchmark` and resnet_keras.bench.benchmark: options, output and anchors (not speed)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_keras.bench.benchmark import BenchmarkConfig, op_time_by_type, plain_keras_cifar_resnet, step_stats
from resnet_keras.cli.main import cli

TINY = ["--width", "0.25", "--batch-size", "4", "--steps", "2", "--warmup", "1"]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def json_lines(output: str) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert rows and rows[-1]["summary"] is True, output[-2000:]
    return rows[:-1], rows[-1]


def check_stats(row: dict, batch: int):
    assert row["batch_size"] == batch and row["steps"] == len(row["step_ms"])
    assert row["step_ms_min"] <= row["step_ms_p10"] <= row["step_ms_median"] <= row["step_ms_p90"] <= row["step_ms_max"]
    assert row["images_per_sec"] == pytest.approx(batch / row["step_ms_median"] * 1e3, rel=0.01)


def test_step_stats_median_and_spread():
    stats = step_stats([0.1, 0.2, 0.3, 0.4, 1.0], batch=10)
    assert stats["step_ms_median"] == 300 and stats["images_per_sec"] == pytest.approx(33.33, abs=0.01)
    assert stats["step_ms_min"] == 100 and stats["step_ms_max"] == 1000 and stats["step_ms_iqr"] == 200
    assert 100 < stats["step_ms_p10"] < 200 and 400 < stats["step_ms_p90"] < 1000


def test_plain_keras_anchor_is_the_keras_example_resnet20():
    # The keras-team CIFAR-10 example's ResNet20 v1 has 274,442 parameters (BN statistics included).
    assert plain_keras_cifar_resnet(20).count_params() == 274_442


def test_op_time_by_type_sums_kernel_events_per_step(tmp_path):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    for key, name in enumerate(
        [
            "train_step",
            "model/conv/Conv2D:Conv2D",
            "grad/conv:Conv2DBackpropFilter",
            "ExecutorState::Process",
            "EagerLocalExecute: __inference_f",
        ],
        start=1,
    ):
        plane.event_metadata[key].name = name
    line = plane.lines.add()
    for metadata_id, ms in [(1, 10), (1, 10), (2, 3), (2, 5), (3, 6), (4, 9), (5, 9)]:
        line.events.add(metadata_id=metadata_id, duration_ps=int(ms * 1e9))
    path = tmp_path / "host.xplane.pb"
    path.write_bytes(space.SerializeToString())
    step_ms, rows = op_time_by_type(path, steps=2)
    assert step_ms == 10
    assert rows == [
        dict(op="Conv2D", ms_per_step=4.0, share=round(8 / 14, 3), count=1),
        dict(op="Conv2DBackpropFilter", ms_per_step=3.0, share=round(6 / 14, 3), count=0),
    ]


@pytest.mark.slow
def test_json_compare_and_profile_on_a_tiny_cifar_net(tmp_path):
    result = run("benchmark", "--depth", "8", *TINY, "--compare", "--profile", str(tmp_path / "trace"), "--json")
    assert result.exit_code == 0, result.output[-3000:]
    rows, summary = json_lines(result.output)
    assert {(r["model"], r["mode"]) for r in rows} == {
        (m, mode) for m in ("resnet8_w0.25", "keras_plain_resnet8") for mode in ("train", "infer")
    }
    for row in rows:
        check_stats(row, 4)
        assert row["image_size"] == 32 and row["precision"] == "none" and row["xla"] is False
    assert all(math.isfinite(r["final_loss"]) for r in rows if r["mode"] == "train")
    ratios = summary["ratios"]["resnet8_w0.25/keras_plain_resnet8"]
    assert set(ratios) == {"train", "train_paired", "infer", "infer_paired"} and all(v > 0 for v in ratios.values())
    profile = summary["profile"]
    assert Path(profile["trace"]).is_file() and profile["step_ms"] > 0
    ops = {row["op"].removeprefix("_MklNative") for row in profile["top_ops"]}  # oneDNN kernels' names
    assert {"Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput"} <= ops
    assert summary["gpu_reference"] is None and summary["data"] is None and summary["memory"] is None


@pytest.mark.slow
def test_folder_data_pipeline_speed_real_over_synthetic_and_memory(image_data):
    result = run(
        "benchmark",
        "--depth",
        "8",
        *TINY,
        "--data",
        str(image_data / "cifar10-mini"),
        "--mode",
        "train",
        "--pipeline-batches",
        "3",
        "--memory",
        "--json",
    )
    assert result.exit_code == 0, result.output[-3000:]
    rows, summary = json_lines(result.output)
    modes = {r["mode"]: r for r in rows}
    assert set(modes) == {"train", "pipeline", "train_real_data", "train_synthetic_data"}
    assert modes["pipeline"]["model"] == "folder:cifar10-mini" and modes["pipeline"]["steps"] == 3
    for row in rows:
        check_stats(row, 4)
    data = summary["data"]
    assert data["real_over_synthetic_step_time"] == pytest.approx(
        modes["train_real_data"]["step_ms_median"] / modes["train_synthetic_data"]["step_ms_median"], rel=0.01
    )
    assert data["pipeline_images_per_sec"] == modes["pipeline"]["images_per_sec"]
    assert summary["model_config"]["num_classes"] == 10  # from the folder's classes
    memory = summary["memory"]["peak_rss_mb"]
    assert set(memory) == {"ours", "tensorflow_alone"} and memory["tensorflow_alone"] > 100
    assert memory["ours"] >= memory["tensorflow_alone"] * 0.95  # TF plus a model cannot be much smaller


def test_pipeline_only_prints_one_json_line_of_images_per_cpu_second(image_data):
    folder = str(image_data / "cifar10-mini")
    args = ["--data", folder, "--batch-size", "8", "--pipeline-batches", "3", "--warmup", "1"]
    result = run("benchmark", "--pipeline-only", "--recipe", "torchvision", *args)
    assert result.exit_code == 0, result.output[-3000:]
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    row = json.loads(lines[0])
    assert row["mode"] == "pipeline_only" and row["recipe"] == "torchvision"
    assert (row["image_size"], row["train_image_size"]) == (224, 176)  # the recipe's FixRes training size
    want = dict(auto_augment="ta_wide", random_erasing=0.1, mixup=0.2, cutmix=1.0, flip="random")
    assert row["augmentations"] == want
    assert row["images"] == 24 and row["cpu_seconds"] > 0
    # cpu_seconds is printed to the millisecond, which on a fast CPU (0.027 s) is a few per cent of it.
    low, high = 24 / (row["cpu_seconds"] + 0.0005) - 0.05, 24 / max(row["cpu_seconds"] - 0.0005, 1e-9) + 0.05
    assert low <= row["images_per_cpu_second"] <= high
    assert row["private_threads"] >= 1

    result = run("benchmark", "--pipeline-only", "--recipe", "rsb_a3", "--train-image-size", "128", *args)
    assert result.exit_code == 0, result.output[-3000:]
    row = json.loads(result.output.strip().splitlines()[-1])
    assert row["train_image_size"] == 128 and row["augmentations"]["auto_augment"].startswith("rand_")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--pipeline-only", "--recipe", "nosuch", "--data", "."], "--recipe"),
        (["--pipeline-only", "--recipe", "torchvision"], "--data"),
        (["--recipe", "torchvision"], "--pipeline-only"),
    ],
)
def test_pipeline_only_mistakes_are_one_error_line_and_exit_code_2(args, fragment):
    result = run("benchmark", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output


@pytest.mark.slow
def test_resnet50_compare_prints_ratios_and_published_gpu_figures():
    # A thin ResNet-50 at 32 pixels (small stem) next to keras.applications.ResNet50 at 32 pixels.
    result = run(
        "benchmark",
        "--depth",
        "50",
        "--image-size",
        "32",
        "--num-classes",
        "10",
        "--width",
        "0.25",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--mode",
        "train",
        "--compare",
    )
    assert result.exit_code == 0, result.output[-3000:]
    out = result.output
    assert "keras_applications_resnet50" in out and "ratio resnet50_w0.25/keras_applications_resnet50" in out
    assert "1x A100 40GB, TF32 + XLA, batch 256: 909 images/s" in out
    assert "mixed precision (AMP) + XLA, batch 256: 2375 images/s" in out
    assert "load average" in out


@pytest.mark.slow
@pytest.mark.parametrize("precision, xla", [("bfloat16", False), ("float16", True)])
def test_precision_and_xla_options(precision, xla):
    result = run("benchmark", "--depth", "8", *TINY, "--precision", precision, "--xla" if xla else "--no-xla", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    rows, summary = json_lines(result.output)
    assert {(r["precision"], r["xla"]) for r in rows} == {(precision, xla)}
    assert all(math.isfinite(r["final_loss"]) for r in rows if r["mode"] == "train")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--precision", "float8"], "'--precision'"),
        (["--steps", "0"], "steps=0"),
        (["--warmup", "-1"], "warmup=-1"),
        (["--batch-size", "0"], "batch_size=0"),
        (["--depth", "51"], "depth=51"),
        (["--depth", "20", "--preset", "resnet20"], "not both"),
        (["--mode", "fit"], "'--mode'"),
        (["--intra-op-threads", "-1"], "--intra-op-threads"),
        (["--data", "./no/such/folder"], "not a folder"),
    ],
)
def test_bad_options_are_one_line_and_exit_code_2(args, fragment):
    result = run("benchmark", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output


def test_benchmark_config_validates_modes():
    with pytest.raises(ValueError, match="modes"):
        BenchmarkConfig(modes=("train", "fit"))
    assert BenchmarkConfig().resolved_batch(__import__("resnet_keras").ModelConfig(depth=50)) == 16


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, first_import, expected_on, expect_hint",
    [
        (None, "import resnet_keras", True, False),  # our import turns TensorFlow's oneDNN kernels on
        ("0", "import resnet_keras", False, False),  # an explicit 0 is respected, and needs no hint
        # TensorFlow imported first: on a CPU with AVX-512 VNNI/BF16 (Zen 5), TensorFlow 2.21 decides
        # at its first oneDNN query and still gets the kernels; on an AVX2-only CPU (Zen 3) it
        # decides at import and they stay off. Either way, train() must say so exactly when off.
        (None, "import tensorflow", None, None),
        # Decided off before our import (here: queried while the switch was 0): off, and train() says so.
        (
            "0",
            "import os, tensorflow\nfrom resnet_keras.core.tf_compat import onednn_enabled as query\nquery()\n"
            "os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1'",
            False,
            True,
        ),
    ],
)
def test_import_turns_on_onednn_kernels_unless_told_otherwise(setting, first_import, expected_on, expect_hint):
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = (
        f"{first_import}\n"
        "from resnet_keras.training.distribute import onednn_hint\n"
        "from resnet_keras.core.tf_compat import onednn_enabled\n"
        "print(onednn_enabled(), onednn_hint() is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    on, hint = result.stdout.split()
    if expected_on is None:  # the CPU decides (see above): the hint must follow what happened
        assert hint == str(on == "False"), result.stdout
    else:
        assert [on, hint] == [str(expected_on), str(expect_hint)]


def test_memory_child_reports_its_own_peak_not_its_parents():
    # Linux's ru_maxrss survives exec, so a child of a 1.5 GB parent used to report 1.5 GB.
    import numpy as np

    from resnet_keras.bench.benchmark import measure_peak_memory
    from resnet_keras.config.schema import ModelConfig

    ballast = np.ones(int(1.5e9 // 8))
    baseline = measure_peak_memory("baseline", ModelConfig.preset("resnet20"), BenchmarkConfig())
    assert 100 < baseline < 1200 and ballast[-1] == 1.0  # TensorFlow alone: ~0.6 GB here
