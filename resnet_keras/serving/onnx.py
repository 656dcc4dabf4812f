"""ONNX export for ONNX Runtime, checked on ONNX Runtime against the Keras model before it is written.

Conversion: the run's float32 model plus softmax is written as a SavedModel (the graph TFLite export
converts too), frozen and converted with tf2onnx (``tf_loader.from_saved_model`` then
``convert.from_graph_def``, opset ``OPSET``). That path gave the same probabilities as Keras to 1e-9;
converting the Keras model or a ``tf.function`` directly (``tf2onnx.convert.from_function``, which
Keras's own ``model.export(format="onnx")`` uses on TensorFlow) left the ``normalize`` layer's mean and
variance as extra required graph inputs. So the float32 file is compared with Keras on the run's
validation images (random pixels when the data is unreadable) and refused above
``FLOAT32_TOLERANCE``: a converter is not trusted unchecked.

File: input ``image`` float32 ``[batch, H, W, 3]`` raw RGB pixels 0..255 after the evaluation
resize/crop (``preprocessing.eval_view``); output ``probabilities`` float32 ``[batch, C]``. The class
names, preprocessing, image size and the check made at export travel in the model's
``metadata_props`` (``onnx.load(path).metadata_props`` or ONNX Runtime's
``session.get_modelmeta().custom_metadata_map``), so the file alone is enough to serve it.

``int8``: static quantization by ONNX Runtime (QDQ format, int8 weights per output channel, uint8
activations, min-max calibration on images from the run's train split or ``--calibration-data``),
kept only when it passes the same accuracy gate as TFLite (``--max-accuracy-drop``). float16 is not
offered: ONNX Runtime's CPU provider runs few float16 kernels (it inserts casts around the rest), so
the file would be smaller but slower than float32 on the CPUs this export is for.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_keras.core.errors import ExportFailure, UsageError, first_line
from resnet_keras.core.storage import as_path, write_atomic
from resnet_keras.serving.export import DEFAULT_BASE_DIR, DEFAULT_CALIBRATION_SAMPLES
from resnet_keras.serving.predict_io import eval_view_record

QUANTIZATIONS = ("none", "int8")
OPSET = 17
INPUT = "image"
OUTPUT = "probabilities"
# Float32 ONNX vs Keras: the same arithmetic in a different runtime; measured differences are ~1e-9.
FLOAT32_TOLERANCE = 1e-4
METADATA_PREFIX = "resnet_keras."
INSTALL_HINT = 'ONNX files need the onnx extra: pip install "resnet-keras[onnx]" (onnx, onnxruntime, tf2onnx)'


def _require(*modules: str) -> None:
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"{INSTALL_HINT}; missing: {', '.join(missing)}")


def default_onnx_path(base_dir: str | os.PathLike, run_name: str, quantize: str) -> Path:
    return as_path(base_dir) / "onnx" / f"{run_name}_{'float32' if quantize == 'none' else quantize}.onnx"


# ----------------------------------------------------------------------------- conversion


def float32_saved_model(run, path: Path) -> None:
    """float32 pixels [batch, s, s, 3] -> probabilities [batch, C], as a SavedModel signature."""
    from resnet_keras.serving.export import probabilities_saved_model

    probabilities_saved_model(run, path, batch=None, input_name=INPUT, output_name=OUTPUT)


def _rename_value(graph, old: str, new: str) -> None:
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


@contextlib.contextmanager
def _quiet_tensorflow_warnings():
    """TensorFlow's logger at ERROR while tf2onnx runs: tf2onnx freezes the graph with TF1 APIs
    (`convert_variables_to_constants`, `extract_sub_graph`), whose deprecation notices say nothing
    to our user (each was printed twice, eight lines of noise around one line of result)."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def convert_float32(run, scratch: Path):
    """The run's float32 model as an ``onnx.ModelProto`` with input ``image`` and output ``probabilities``."""
    import tf2onnx
    from tf2onnx import tf_loader

    saved_model = scratch / "float32_saved_model"
    float32_saved_model(run, saved_model)
    try:
        with _quiet_tensorflow_warnings():
            graph_def, inputs, outputs = tf_loader.from_saved_model(
                str(saved_model), None, None, tag="serve", signatures=["serving_default"]
            )
            model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=OPSET)
    except Exception as error:  # noqa: BLE001 - the converter raises many kinds; report one line
        raise ExportFailure(f"ONNX conversion failed: {first_line(error)}") from error
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportFailure(
            f"ONNX conversion produced inputs {[v.name for v in graph.input]} and outputs "
            f"{[v.name for v in graph.output]}; expected one image input and one output"
        )
    _rename_value(graph, graph.input[0].name, INPUT)
    _rename_value(graph, graph.output[0].name, OUTPUT)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.name = run.name
    return model


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over float32 pixels, in batches of 16. (ONNX
    Runtime's min-max calibrator keeps only per-tensor minima and maxima of each batch, so memory
    does not grow with the number of images.)"""

    def __init__(self, images):
        self.batches = iter([images[i : i + 16] for i in range(0, len(images), 16)])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_int8(model, calibration, scratch: Path):
    """Static QDQ int8 of a float32 ModelProto, calibrated on ``calibration`` (float32 pixels)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
    source, prepared, output = scratch / "float32.onnx", scratch / "prepared.onnx", scratch / "int8.onnx"
    onnx.save(model, str(source))
    # Folds constants and fuses ops first, which ONNX Runtime recommends before quantizing; symbolic
    # shape inference is skipped (it needs sympy, and the shapes here are static but for the batch).
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(output),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # 7-bit weights: ONNX Runtime's u8s8 kernels on AVX2 and on AVX-512 without VNNI add pairs of
        # products in int16 and saturate (its quantization guide); the file may run on such a CPU even
        # when it was gated on one with VNNI, and one lost bit of weight precision costs far less.
        reduce_range=True,
    )
    return onnx.load(str(output))


# ----------------------------------------------------------------------------- running


class OnnxRunner:
    """Runs an ONNX classifier on ONNX Runtime's CPU provider: float32 pixels [n, s, s, 3] ->
    probabilities [n, C], ``batch_size`` images per call. ``metadata`` holds the export's metadata_props."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int | None = None):
        _require("onnxruntime")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.output_name = self.session.get_outputs()[0].name
        raw = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {
            key[len(METADATA_PREFIX) :]: value for key, value in raw.items() if key.startswith(METADATA_PREFIX)
        }

    @property
    def image_size(self) -> int:
        return int(self.input.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, images, batch_size: int = 64):
        import numpy as np

        images = np.asarray(images, dtype=np.float32)
        out = [
            self.session.run([self.output_name], {self.input.name: images[i : i + batch_size]})[0]
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out).astype(np.float32)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The export's metadata of an .onnx file: class_names (list), preprocessing, image_size (int), export (dict)."""
    _require("onnx")
    import onnx

    props = {
        p.key[len(METADATA_PREFIX) :]: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
    }
    return _decode_metadata(props)


def _decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(props)
    for key in ("class_names", "export", "eval_view"):
        if key in out:
            out[key] = json.loads(out[key])
    if "image_size" in out:
        out["image_size"] = int(out["image_size"])
    return out


# ----------------------------------------------------------------------------- export


def _check(run, runner: OnnxRunner, sample, quantize: str, max_accuracy_drop: float) -> dict[str, Any]:
    """Agreement and accuracy against the Keras model; raises ExportFailure when the file fails."""
    import numpy as np

    from resnet_keras.serving.export import keras_probabilities

    size = run.model_config.image_size
    if sample is None:
        images = np.random.default_rng(0).integers(0, 256, (16, size, size, 3)).astype(np.float32)
        labels, source = None, "16 random-pixel images (the run's data was not readable)"
    else:
        images, labels = sample
        source = f"{len(images)} validation images"
    keras_probs, onnx_probs = keras_probabilities(run.model, images), runner(images)
    check = dict(
        checked_on=source,
        eval_images=len(images),
        max_probability_difference=float(np.abs(keras_probs - onnx_probs).max()),
        top1_agreement=float((keras_probs.argmax(-1) == onnx_probs.argmax(-1)).mean()),
    )
    if quantize == "none" and check["max_probability_difference"] > FLOAT32_TOLERANCE:
        raise ExportFailure(
            f"the converted ONNX model differs from Keras by {check['max_probability_difference']:.3g} in probability "
            f"on {source} (tolerance {FLOAT32_TOLERANCE:g}); the converter produced a different function"
        )
    if labels is not None:
        keras_accuracy = float((keras_probs.argmax(-1) == labels).mean())
        accuracy = float((onnx_probs.argmax(-1) == labels).mean())
        check.update(keras_accuracy=keras_accuracy, accuracy=accuracy)
        drop = 100 * (keras_accuracy - accuracy)
        if drop > max_accuracy_drop:
            raise ExportFailure(
                f"{quantize} ONNX accuracy {100 * accuracy:.2f}% is {drop:.2f} points below the Keras model's "
                f"{100 * keras_accuracy:.2f}% on {len(labels)} validation images (limit --max-accuracy-drop "
                f"{max_accuracy_drop:g}); nothing was written"
            )
    return check


def export_onnx(
    model_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    quantize: str = "none",
    base_dir: str | os.PathLike = DEFAULT_BASE_DIR,
    calibration_data: str | os.PathLike | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    eval_samples: int | None = None,
    max_accuracy_drop: float = 1.0,
    overwrite: bool = False,
    weights: str = "final",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Converts a run to ``output`` (default ``<base_dir>/onnx/<name>_<float32|int8>.onnx``).

    Checked on ONNX Runtime against the Keras float32 model on the run's validation split (first
    ``eval_samples`` images, all by default) before anything is written: float32 must match to
    ``FLOAT32_TOLERANCE``, and no file may lose more than ``max_accuracy_drop`` points of accuracy
    (ExportFailure otherwise, exit 1, no file). int8 needs calibration images and the validation
    data (UsageError without them). Returns the export report (also stored in the file's metadata).
    """
    from resnet_keras.serving.export import check_file_export_options

    check_file_export_options(
        quantize, QUANTIZATIONS, calibration_samples, eval_samples, max_accuracy_drop, calibration_data
    )
    _require("onnx", "onnxruntime", "tf2onnx")
    from resnet_keras.serving import export as export_lib

    run = export_lib.load_run(model_dir, weights)
    output = as_path(output) if output is not None else default_onnx_path(base_dir, run.name, quantize)
    if output.suffix != ".onnx":
        raise UsageError(f"Received: output={str(output)!r}; expected a path ending in .onnx")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite or another --output")
    calibration = (
        export_lib.calibration_images(run, calibration_data, calibration_samples) if quantize == "int8" else None
    )
    sample = export_lib.held_out_sample(run, eval_samples, log)
    if sample is None and quantize == "int8":
        raise UsageError("int8 export checks accuracy on the run's validation split, which cannot be read")

    import onnx

    with tempfile.TemporaryDirectory() as scratch:
        model = convert_float32(run, Path(scratch))
        if quantize == "int8":
            try:
                model = quantize_int8(model, calibration, Path(scratch))
            except Exception as error:  # noqa: BLE001 - one line for any quantizer failure
                raise ExportFailure(f"ONNX int8 quantization failed: {first_line(error)}") from error
    blob = model.SerializeToString()
    check = _check(run, OnnxRunner(blob), sample, quantize, max_accuracy_drop)
    report = dict(
        format="onnx",
        quantize=quantize,
        path=str(output),
        model_name=run.name,
        weights=run.weights_file,
        opset=OPSET,
        input=f"{INPUT}: float32 [batch, {run.model_config.image_size}, {run.model_config.image_size}, 3] pixels 0-255",
        output=f"{OUTPUT}: float32 [batch, {run.model_config.num_classes}]",
        calibration_images=len(calibration) if calibration is not None else None,
        **check,
    )
    metadata = dict(
        class_names=json.dumps(list(run.class_names)),
        preprocessing=run.preprocessing,
        eval_view=json.dumps(eval_view_record(run)),
        image_size=str(run.model_config.image_size),
        export=json.dumps(
            dict(
                report,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                source_run=str(as_path(model_dir).resolve()),
                model=run.model_config.to_dict(),
            )
        ),
    )
    onnx.helper.set_model_props(model, {METADATA_PREFIX + key: value for key, value in metadata.items()})
    model.producer_name, model.doc_string = "resnet-keras", f"{run.name}: raw RGB pixels -> class probabilities"
    blob = model.SerializeToString()
    report["size_bytes"] = len(blob)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, blob)
    accuracy = (
        f", accuracy {100 * check['accuracy']:.2f}% (Keras {100 * check['keras_accuracy']:.2f}%)"
        if "accuracy" in check
        else ""
    )
    precision = "float32" if quantize == "none" else quantize
    log(
        f"Exported {run.name} ONNX ({precision}) to {output} ({len(blob) / 1e6:.3f} MB); on ONNX Runtime, "
        f"{check['checked_on']}: max |p difference| vs Keras {check['max_probability_difference']:.2g}, top-1 "
        f"agreement {100 * check['top1_agreement']:.1f}%{accuracy}."
    )
    return report


# ----------------------------------------------------------------------------- predict


class OnnxPredictor:
    """``predict``'s predictor for .onnx files: image bytes -> probabilities, with the evaluation view
    and labels read from the file's metadata (class indices and a plain resize, with a note, for an
    ONNX classifier exported by other tools)."""

    def __init__(self, path: Path):
        _require("onnxruntime", "onnx")
        import tensorflow as tf

        from resnet_keras.data.preprocessing import eval_view
        from resnet_keras.serving.predict_io import stored_eval_view

        self.tf, self.path, self.notes = tf, path, []
        try:
            self.runner = OnnxRunner(path)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise UsageError(f"{path} is not a valid ONNX model ({first_line(error)})") from None
        meta = _decode_metadata(self.runner.metadata)
        if "class_names" in meta and "preprocessing" in meta:
            self.labels, preprocessing = list(meta["class_names"]), meta["preprocessing"]
            view = stored_eval_view(meta.get("eval_view"))
        else:
            self.labels, preprocessing, view = [str(i) for i in range(self.runner.num_classes)], "none", None
            self.notes.append(
                f"Note: {path} has no resnet-keras metadata: labels are class indices, images only resized."
            )
        self.view = eval_view(preprocessing, self.runner.image_size, view)

    def batch(self, datas: list[bytes]):
        from resnet_keras.serving.predict_io import decode_batch

        return decode_batch(self, datas, self.runner)

    def __call__(self, data: bytes):
        return self.batch([data])[0]
