"""ONNX export checked on ONNX Runtime, and `predict` over folders and globs in batches for every format.

Reuses test_export's tiny ResNet-8 trained on the real cifar10-mini JPEGs (one training per module).
"""

import csv
import json
import os
import re

import numpy as np
import pytest
from test_export import cli_run, decode, keras_probabilities, one_error_line, quiet, run_dir, trained, val_files  # noqa: F401

from resnet_keras.serving import export as export_lib
from resnet_keras.serving import onnx as onnx_export

# int8 (7-bit weights) of a barely trained 8-layer net agreed with Keras on 96-97 % of the 200 fixture val
# images (Zen 5, 2026-12-02); the floor leaves room.
INT8_AGREEMENT_FLOOR = 0.8


@pytest.fixture(scope="module")
def onnx_float32(run_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    result = cli_run("export", "--model-dir", run_dir, "--format", "onnx", "--output", out, "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.mark.slow
def test_onnx_float32_matches_keras_on_plain_onnxruntime(onnx_float32, trained, val_files):  # noqa: F811
    import onnxruntime as ort

    path, report = onnx_float32
    assert report["format"] == "onnx" and report["eval_images"] == 200 and report["top1_agreement"] == 1.0
    assert report["accuracy"] == report["keras_accuracy"] and report["size_bytes"] == path.stat().st_size
    # Nothing of ours is needed to run it: plain onnxruntime, one input, labels in the metadata.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["resnet_keras.class_names"]) == list(trained.class_names)
    assert meta["resnet_keras.preprocessing"] == trained.preprocessing and meta["resnet_keras.image_size"] == "32"
    pixels = np.stack([decode(p) for p in val_files]).astype(np.float32)
    (probabilities,) = session.run(["probabilities"], {"image": pixels})
    np.testing.assert_allclose(probabilities, keras_probabilities(trained, pixels), atol=onnx_export.FLOAT32_TOLERANCE)
    assert onnx_export.read_metadata(path)["export"]["max_probability_difference"] <= onnx_export.FLOAT32_TOLERANCE


@pytest.mark.slow
def test_onnx_int8_passes_the_accuracy_gate(run_dir, trained, tmp_path):  # noqa: F811
    report = onnx_export.export_onnx(run_dir, tmp_path / "q.onnx", quantize="int8", max_accuracy_drop=100, log=quiet)
    assert report["calibration_images"] > 0 and report["top1_agreement"] >= INT8_AGREEMENT_FLOOR
    session = onnx_export.OnnxRunner(tmp_path / "q.onnx")
    assert any(node.op_type == "QuantizeLinear" for node in __import__("onnx").load(tmp_path / "q.onnx").graph.node)
    assert session.metadata["preprocessing"] == trained.preprocessing
    # The gate: calibrated on near-black images, int8 clips every real pixel; accuracy collapses, refused.
    import tensorflow as tf

    dark = tmp_path / "dark"
    dark.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        (dark / f"{i}.png").write_bytes(tf.io.encode_png(rng.integers(0, 3, (32, 32, 3), np.uint8)).numpy())
    result = cli_run(
        "export", "--model-dir", run_dir, "--format", "onnx", "--quantize", "int8", "--calibration-data", dark,
        "--output", tmp_path / "r.onnx", "--max-accuracy-drop", "1",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    one_error_line(result, "points below the Keras model's")
    assert not (tmp_path / "r.onnx").exists()


def test_a_converter_that_changes_the_function_is_refused(run_dir, tmp_path, monkeypatch):  # noqa: F811
    """The float32 check is real: a graph that computes something else is not written."""
    real_call = onnx_export.OnnxRunner.__call__
    monkeypatch.setattr(onnx_export.OnnxRunner, "__call__", lambda self, images: real_call(self, images[:, ::-1]))
    result = cli_run("export", "--model-dir", run_dir, "--format", "onnx", "--output", tmp_path / "m.onnx")
    assert result.exit_code == 1
    one_error_line(result, "the converter produced a different function")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--quantize", "float16"], "expected one of none, int8"),
        (["--output", "model.bin"], "expected a path ending in .onnx"),
        (["--version", "3"], "--version applies to --format saved_model"),
        (["--calibration-data", "."], "only int8 is calibrated"),
    ],
)
def test_onnx_bad_options(run_dir, tmp_path, args, fragment):  # noqa: F811
    args = [tmp_path / a if a == "model.bin" else a for a in args]
    result = cli_run("export", "--model-dir", run_dir, "--format", "onnx", "--base-dir", tmp_path / "out", *args)
    assert result.exit_code == 2
    one_error_line(result, fragment)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- predict in batches


@pytest.mark.slow
def test_predict_folders_and_globs_in_batches_for_every_format(run_dir, trained, onnx_float32, val_files, tmp_path):  # noqa: F811
    """SavedModel, TFLite and ONNX give Keras's top-1 for a folder and a glob scored in batches of 7,
    with one undecodable file costing only its own row."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in val_files[:9]:
        os.symlink(path, folder / f"{os.path.basename(os.path.dirname(path))}_{os.path.basename(path)}")
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    files = sorted(str(p) for p in folder.iterdir())
    pixels = np.stack([decode(f) for f in files[:9]])
    expected = [trained.class_names[i] for i in keras_probabilities(trained, pixels).argmax(-1)]
    saved = export_lib.export_saved_model(run_dir, tmp_path / "sm", log=quiet)["path"]
    tflite = tmp_path / "m.tflite"
    export_lib.export_tflite(run_dir, tflite, log=quiet)
    for model in (saved, tflite, onnx_float32[0]):
        out = tmp_path / f"{os.path.basename(str(model))}.csv"
        result = cli_run("predict", model, folder, "--batch-size", "7", "--top-k", "2", "--output", out)
        assert result.exit_code == 1, result.output  # the broken file
        assert "Wrote 9 predictions (1 images failed)" in result.stdout
        rows = list(csv.DictReader(out.open()))
        assert [r["image"] for r in rows if r["rank"] == "1"] == files[:9]
        assert [r["label"] for r in rows if r["rank"] == "1"] == expected, model
        assert [r["image"] for r in rows if r["error"]] == [files[9]]
    out = tmp_path / "glob.json"
    result = cli_run("predict", onnx_float32[0], str(folder / "*_01*.jpg"), "--output", out)
    assert result.exit_code == 0, result.output
    entries = json.loads(out.read_text())
    assert [e["image"] for e in entries] == [f for f in files if "_01" in os.path.basename(f)] and entries


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["EMPTY"], "No image files under folder"),
        (["NOMATCH*.jpg"], "No files match"),
        (["IMAGE", "--output", "out.txt"], "expected a file ending in .csv or .json"),
    ],
)
def test_predict_bad_inputs(onnx_float32, val_files, tmp_path, args, fragment):  # noqa: F811
    (tmp_path / "empty").mkdir()
    swap = {"EMPTY": tmp_path / "empty", "NOMATCH*.jpg": tmp_path / "NOMATCH*.jpg", "IMAGE": val_files[0]}
    result = cli_run("predict", onnx_float32[0], *[swap.get(a, a) for a in args])
    assert result.exit_code == 2
    one_error_line(result, fragment)


def test_the_export_command_prints_its_result_without_tensorflow_noise(run_dir, tmp_path):  # noqa: F811
    # A fresh process: TensorFlow prints each deprecation notice once per process.
    import subprocess
    import sys

    out = tmp_path / "m.onnx"
    argv = [sys.executable, "-m", "resnet_keras.cli", "export", "--model-dir", str(run_dir), "--format", "onnx"]
    result = subprocess.run([*argv, "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.match(rf"Exported \S+ ONNX \(float32\) to {re.escape(str(out))} ", result.stdout), result.stdout
    noise = [line for line in result.stderr.splitlines() if "deprecated" in line or "Instructions for updating" in line]
    assert not noise, noise
