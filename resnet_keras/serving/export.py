"""Export a trained run for serving: versioned SavedModels for TF Serving, and TFLite files.

SavedModel (``export_saved_model``): ``<base_dir>/<model name>/<version>/``, the layout TF Serving
watches with ``--model_base_path=<base_dir>/<model name>``; versions are increasing integers. The
version directory is written as a hidden sibling (``.tmp-<version>-<host>-<pid>``, which TF Serving ignores
because it is not an integer), fsynced, checked against the Keras model and only then renamed into
place, so a server polling the base path never sees half a model (tensorflow/serving#1086) and a
failed export leaves nothing at the version path. Signatures (preprocessing inside the graph; the
model itself normalises raw pixels):

* ``serving_default``: ``image`` uint8 ``[batch, H, W, 3]`` raw RGB pixels at the model's input size.
* ``serving_bytes``: ``image_bytes`` tf.string ``[batch]`` encoded JPEG/PNG/GIF/BMP of any size,
  decoded to RGB and resized or centre-cropped exactly as the input pipeline does at evaluation
  (the same `resnet_keras.data.preprocessing` functions run), which is what TF Serving's REST API
  receives as ``{"b64": ...}``.

Both return ``probabilities`` float32 ``[batch, C]`` (softmax of the logits), ``top_k_indices`` int32,
``top_k_labels`` string and ``top_k_probabilities`` float32, each ``[batch, min(5, C)]``. The labels
travel as ``assets/labels.txt`` (one class per line, index order) and the graph reads them from
there (a lookup table initialised from the asset); ``assets.extra/export.json`` records the configs,
class names, preprocessing and the check made at export time.

TFLite (``export_tflite``): converted with ``TFLiteConverter.from_saved_model`` from a float32 copy
of the model plus softmax (``from_concrete_functions`` gives all-NaN outputs on Keras 3 models and a
mixed-precision model converts to Flex ops that the interpreter refuses). Input ``[1, H, W, 3]`` raw
RGB pixels after the evaluation resize/crop: float32 0..255 for ``none``/``float16``/``dynamic``;
uint8 for ``int8`` (full-integer, ``TFLITE_BUILTINS_INT8``, uint8 in and out: camera pixels feed in
directly; the calibrated input scale is 1 with zero point 0 whenever the calibration images span
0..255, and readers should apply the stored quantization parameters). Output: probabilities ``[1, C]``
(float32, or uint8 with scale 1/256 for int8). A ``<file>.json`` sidecar holds labels, preprocessing
and the measured agreement.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import ExportFailure, UsageError, expect, first_line, is_int
from resnet_keras.core.files import (
    fsync_tree,
    owner_tag,
    publish_dir,
    recover_replaced,
    remove_stale_temps,
    saved_size,
    space_for,
)
from resnet_keras.core.storage import as_path, local_folder, write_atomic
from resnet_keras.runs.rundir import WEIGHTS, RunDir
from resnet_keras.serving.predict_io import eval_view_record

PIXELS_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
PIXELS_INPUT = "image"
BYTES_INPUT = "image_bytes"
OUTPUTS = ("probabilities", "top_k_indices", "top_k_labels", "top_k_probabilities")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One `resnet-keras export --format`: what it writes, the function that writes it
    ("module:function", imported only when used) and the options it takes besides
    model_dir, overwrite, weights and log."""

    name: str
    description: str
    function: str
    options: tuple[str, ...]

    def run(self, model_dir, **options) -> dict[str, Any]:
        import importlib

        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)(model_dir, **options)


_FILE_OPTIONS = (
    "output",
    "quantize",
    "base_dir",
    "calibration_data",
    "calibration_samples",
    "eval_samples",
    "max_accuracy_drop",
)
EXPORT_FORMATS = {
    f.name: f
    for f in (
        ExportFormat(
            "saved_model",
            "a versioned SavedModel in the layout TF Serving watches",
            "resnet_keras.serving.export:export_saved_model",
            ("base_dir", "version"),
        ),
        ExportFormat(
            "tflite",
            "one .tflite file (float32 or quantized) with a JSON sidecar",
            "resnet_keras.serving.export:export_tflite",
            _FILE_OPTIONS,
        ),
        ExportFormat(
            "onnx",
            "one .onnx file for ONNX Runtime (float32 or int8), labels in its metadata",
            "resnet_keras.serving.onnx:export_onnx",
            _FILE_OPTIONS,
        ),
    )
}
LABELS_FILE = "labels.txt"
METADATA_FILE = "export.json"
MAX_TOP_K = 5
# Float32 SavedModel vs Keras: the same kernels run, so probabilities agree to rounding.
SAVED_MODEL_TOLERANCE = 1e-4
DEFAULT_BASE_DIR = "saved_models"
DEFAULT_CALIBRATION_SAMPLES = 200


@dataclasses.dataclass
class TrainedRun:
    """A run directory's float32 Keras model with what serving needs to know about it."""

    model_dir: Path
    model_config: ModelConfig
    data_config: Any  # data.DataConfig
    model: Any  # keras.Model, float32, raw pixels -> logits
    class_names: tuple[str, ...]
    weights_file: str
    preprocessing: str  # "cifar", "none" (resize) or "imagenet" (resize shorter side + centre crop)

    @property
    def name(self) -> str:
        return self.model_config.name

    @property
    def top_k(self) -> int:
        return min(MAX_TOP_K, self.model_config.num_classes)


# ----------------------------------------------------------------------------- loading a run


def load_run(model_dir: str | os.PathLike, weights: str = "final") -> TrainedRun:
    """The run's model as float32 (a mixed-precision run is copied into a float32 build).

    Raises UsageError for a directory that is not a run or holds no finished model.
    """
    from resnet_keras.data import preprocessing

    expect(weights in WEIGHTS, "weights", weights, "'final' or 'best'")
    from resnet_keras.zoo.models import build_model, dtype_policy

    run = RunDir(model_dir)
    model_config, data_config = run.model_config(), run.data_config()
    class_names = run.class_names(model_config.num_classes, data_config)
    trained = run.load_model(weights, model_config)
    with dtype_policy("float32"):
        model = build_model(model_config)
    model.set_weights(trained.get_weights())  # same builder, same variable order
    return TrainedRun(
        run.path,
        model_config,
        data_config,
        model,
        class_names,
        run.weights_file(weights),
        preprocessing.view_family(data_config, model_config.image_size),
    )


# ----------------------------------------------------------------------------- SavedModel


def _build_archive(run: TrainedRun, labels_path: Path):
    """A Keras ExportArchive with the two serving signatures."""
    import tensorflow as tf
    from keras.export import ExportArchive

    from resnet_keras.data import preprocessing

    size = run.model_config.image_size
    table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            str(labels_path),
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
        ),
        default_value="",
    )
    model, top_k = run.model, run.top_k
    view = preprocessing.eval_view(run.preprocessing, size, run.model_config.eval_view)

    def outputs(pixels):
        probabilities = tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32), axis=-1)
        top = tf.math.top_k(probabilities, k=top_k)
        return {
            "probabilities": probabilities,
            "top_k_indices": top.indices,
            "top_k_labels": table.lookup(tf.cast(top.indices, tf.int64)),
            "top_k_probabilities": top.values,
        }

    def serve_pixels(image):
        return outputs(tf.cast(image, tf.float32))

    def serve_bytes(image_bytes):
        def decode(data):  # refused before decoding: more than MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS
            return view(preprocessing.decode_image_checked(data))

        pixels = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return outputs(pixels)

    archive = ExportArchive()
    archive.track(model)
    archive.track(table)
    archive.add_endpoint(
        PIXELS_SIGNATURE, serve_pixels, [tf.TensorSpec([None, size, size, 3], tf.uint8, name=PIXELS_INPUT)]
    )
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes, [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    return archive


def versions(model_base: str | os.PathLike) -> list[int]:
    """The integer version folders of a model base path, ascending (what TF Serving would serve)."""
    model_base = Path(model_base)
    if not model_base.is_dir():
        return []
    return sorted(int(p.name) for p in model_base.iterdir() if p.is_dir() and p.name.isdigit())


def _sample_images(run: TrainedRun, split: str, limit: int | None):
    """(float32 pixels [n, s, s, 3], int32 labels [n]) of the run's own split, evaluation view."""
    import numpy as np

    from resnet_keras.data import pipeline as data_lib

    size = run.model_config.image_size
    ds = data_lib.make_dataset(
        run.data_config,
        split,
        image_size=size,
        batch_size=64,
        training=False,
        drop_remainder=False,
        eval_view=run.model_config.eval_view,
    )
    images, labels, count = [], [], 0
    for batch_images, batch_labels in ds:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
        count += len(labels[-1])
        if limit is not None and count >= limit:
            break
    if not images:
        raise UsageError(f"split {split!r} of the run's dataset {run.data_config.dataset!r} is empty")
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images[:limit], labels[:limit]) if limit is not None else (images, labels)


def held_out_sample(run: TrainedRun, limit: int | None = None, log: Callable[[str], None] = print):
    """The run's validation split (images, labels), or None with a note when the data cannot be read."""
    from resnet_keras.core.errors import DataError

    try:
        return _sample_images(run, "val", limit)
    except DataError as error:
        log(f"Note: the run's validation data cannot be read ({error}).")
        return None


def keras_probabilities(model, images, batch_size: int | None = None):
    import numpy as np
    import tensorflow as tf

    # An eager call keeps every activation of the batch: at batch 64, 224x224 ResNet-50 took 9.5 GB.
    # The default holds a batch to ~256K pixels (64 images at 64x64, 5 at 224x224).
    batch_size = batch_size or max(1, min(64, (64 * 64 * 64) // (images.shape[1] * images.shape[2])))

    out = [
        tf.nn.softmax(tf.cast(model(images[i : i + batch_size], training=False), tf.float32)).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def _check_saved_model(path: Path, run: TrainedRun, sample) -> dict:
    """Loads the written SavedModel and compares both signatures with the Keras model."""
    import numpy as np
    import tensorflow as tf

    from resnet_keras.data import preprocessing

    if sample is None:  # no data: random pixels still check that the graph computes the same function
        images = np.random.default_rng(0).integers(0, 256, (16,) + (run.model_config.image_size,) * 2 + (3,))
        images, source = images.astype(np.float32), "16 random-pixel images (the run's data was not readable)"
    else:
        images, source = sample[0][:64], f"{min(len(sample[0]), 64)} validation images"
    pixels = np.clip(np.round(images), 0, 255).astype(np.uint8)  # serving_default takes uint8
    expected = keras_probabilities(run.model, pixels.astype(np.float32))
    loaded = tf.saved_model.load(str(path))
    got = loaded.signatures[PIXELS_SIGNATURE](**{PIXELS_INPUT: tf.constant(pixels)})
    difference = float(np.abs(got["probabilities"].numpy() - expected).max())
    labels = [label.decode() for label in got["top_k_labels"].numpy()[:, 0]]
    expected_labels = [run.class_names[i] for i in expected.argmax(-1)]
    png = tf.io.encode_png(tf.constant(pixels[0]))
    via_bytes = loaded.signatures[BYTES_SIGNATURE](**{BYTES_INPUT: tf.stack([png])})["probabilities"].numpy()
    size = run.model_config.image_size
    viewed = preprocessing.eval_view(run.preprocessing, size, run.model_config.eval_view)(tf.constant(pixels[0]))
    direct = keras_probabilities(run.model, viewed[None].numpy())
    bytes_difference = float(np.abs(via_bytes - direct).max())
    del loaded
    if difference > SAVED_MODEL_TOLERANCE or bytes_difference > SAVED_MODEL_TOLERANCE or labels != expected_labels:
        raise ExportFailure(
            f"the exported SavedModel disagrees with the Keras model (max |p difference| "
            f"{difference:.3g}, via image bytes {bytes_difference:.3g}); nothing was exported"
        )
    return dict(
        checked_on=source, max_probability_difference=difference, max_probability_difference_bytes=bytes_difference
    )


def export_saved_model(
    model_dir: str | os.PathLike,
    base_dir: str | os.PathLike = DEFAULT_BASE_DIR,
    *,
    version: int | None = None,
    overwrite: bool = False,
    weights: str = "final",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes ``<base_dir>/<model name>/<version>/`` atomically; returns a report dict.

    ``version`` defaults to one more than the highest existing version (1 for the first). An
    existing version is refused (UsageError) unless ``overwrite``. Before the rename, the written
    model is loaded back and compared with the Keras model on the run's validation images (random
    pixels when the data is not readable); a mismatch raises ExportFailure and leaves nothing.
    """
    expect(version is None or (is_int(version) and version >= 1), "version", version, "an integer >= 1")
    base_dir = local_folder(base_dir, what="a SavedModel version")
    run = load_run(model_dir, weights)
    model_base = base_dir / run.name
    existing = versions(model_base)
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    final = model_base / str(version)
    if final.exists() and not overwrite:
        raise UsageError(f"{final} exists; choose another --version or pass --overwrite")
    model_base.mkdir(parents=True, exist_ok=True)
    recover_replaced(model_base)
    remove_stale_temps(model_base)
    sample = held_out_sample(run, 64, log)
    tmp = model_base / f".tmp-{version}-{owner_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # A SavedModel is its weights (variables/) and a graph of about their size: both must fit.
    with space_for(final, 2 * saved_size(run.model)):
        try:
            with tempfile.TemporaryDirectory() as scratch:
                labels_path = Path(scratch) / LABELS_FILE
                labels_path.write_text("\n".join(run.class_names) + "\n", encoding="utf-8")
                _build_archive(run, labels_path).write_out(str(tmp), verbose=False)
            check = _check_saved_model(tmp, run, sample)
            metadata = dict(
                model_name=run.name,
                version=version,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                source_run=str(as_path(model_dir).resolve()),
                weights=run.weights_file,
                class_names=list(run.class_names),
                preprocessing=run.preprocessing,
                image_size=run.model_config.image_size,
                top_k=run.top_k,
                signatures={
                    PIXELS_SIGNATURE: f"{PIXELS_INPUT}: uint8 [batch, H, W, 3]",
                    BYTES_SIGNATURE: f"{BYTES_INPUT}: string [batch] (JPEG/PNG)",
                },
                outputs=list(OUTPUTS),
                check=check,
                model=run.model_config.to_dict(),
                data=run.data_config.to_dict(),
            )
            (tmp / "assets.extra").mkdir(exist_ok=True)
            (tmp / "assets.extra" / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
            fsync_tree(tmp)
            publish_dir(tmp, final, overwrite=overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    log(
        f"Exported {run.name} version {version} to {final} ({size / 1e6:.2f} MB); signatures "
        f"{PIXELS_SIGNATURE} (uint8 pixels) and {BYTES_SIGNATURE} (image bytes); max |p difference| vs Keras "
        f"{check['max_probability_difference']:.2g} on {check['checked_on']}."
    )
    return dict(
        format="saved_model",
        path=str(final),
        model_base_path=str(model_base),
        model_name=run.name,
        version=version,
        size_bytes=size,
        weights=run.weights_file,
        **check,
    )


# ----------------------------------------------------------------------------- TFLite


def _interpreter_class():
    """LiteRT's interpreter (what TF 2.21 recommends: tf.lite.Interpreter is deprecated); TF's otherwise."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # ai-edge-litert has no wheel for this platform
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def _builtin_without_delegates(Interpreter):
    """The OpResolverType that skips the default delegates, from the interpreter's own module."""
    import importlib

    return importlib.import_module(Interpreter.__module__).OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


class TFLiteRunner:
    """Runs a .tflite classifier one image at a time: float32 pixels [n, s, s, 3] -> probabilities [n, C]."""

    def __init__(
        self, model_path: str | None = None, model_content: bytes | None = None, num_threads: int | None = None
    ):
        import numpy as np

        self.np = np
        Interpreter = _interpreter_class()
        #: why LiteRT's default XNNPACK delegate was not used (None when it was). XNNPACK refuses some
        #: int8 graphs whose requantization scales fall outside its range (calibration on unrepresentative
        #: images makes them); LiteRT's builtin kernels run every op of the standard op set.
        self.xnnpack_refused: str | None = None
        try:
            self.interpreter = Interpreter(model_path=model_path, model_content=model_content, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except RuntimeError as error:
            if "XNNPACK" not in str(error) and "Delegate" not in str(error):
                raise
            self.xnnpack_refused = str(error).strip()
            self.interpreter = Interpreter(
                model_path=model_path,
                model_content=model_content,
                num_threads=num_threads,
                experimental_op_resolver_type=_builtin_without_delegates(Interpreter),
            )
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @property
    def image_size(self) -> int:
        return int(self.input["shape"][1])

    def __call__(self, images):
        np = self.np
        results = []
        for image in images:
            x = image[None].astype(np.float32)
            if self.input["dtype"] != np.float32:
                scale, zero = self.input["quantization"]
                info = np.iinfo(self.input["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max)
            self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self.output["index"])[0]
            if self.output["dtype"] != np.float32:
                scale, zero = self.output["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            results.append(y.astype(np.float32))
        return np.stack(results)


def calibration_images(run: TrainedRun, calibration_data: str | os.PathLike | None, limit: int):
    """float32 pixels [n, s, s, 3] for int8 calibration: a folder of images (any layout, searched
    recursively, labels not needed), or by default the run's own train split."""
    import numpy as np
    import tensorflow as tf

    from resnet_keras.core.errors import DataError
    from resnet_keras.data import preprocessing

    if calibration_data is None:
        try:
            return _sample_images(run, "train", limit)[0]
        except DataError as error:
            raise UsageError(
                f"int8 needs calibration images: the run's dataset {run.data_config.dataset!r} cannot "
                f"be read ({error}); pass --calibration-data DIR (a folder of images)"
            ) from error
    root = Path(calibration_data)
    if not root.is_dir():
        raise UsageError(f"Received: calibration_data={str(root)!r}; expected a folder of images")
    files = [path for path in preprocessing.list_image_files(root) if preprocessing.is_image_file(path)]
    if not files:
        raise UsageError(f"No images ({', '.join(preprocessing.IMAGE_EXTENSIONS)}) under calibration folder {root}")
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:limit]]
    view = preprocessing.eval_view(run.preprocessing, run.model_config.image_size, run.model_config.eval_view)
    images = []
    for path in files:
        try:
            images.append(view(preprocessing.decode_image(tf.io.read_file(path))).numpy())
        except tf.errors.InvalidArgumentError:
            continue
    if not images:
        raise UsageError(f"None of the images under calibration folder {root} can be decoded")
    return np.stack(images)


def probabilities_saved_model(
    run: TrainedRun, path: Path, *, batch: int | None, input_name: str = "image", output_name: str | None = None
) -> None:
    """A bare float32 SavedModel, raw pixels [batch, s, s, 3] -> softmax probabilities [batch, C], that
    the converters start from (TFLite, ONNX). `output_name` names the output (else TensorFlow's default)."""
    import tensorflow as tf
    from keras.export import ExportArchive

    size, model = run.model_config.image_size, run.model

    def probabilities(image):
        out = tf.nn.softmax(tf.cast(model(image, training=False), tf.float32), axis=-1)
        return out if output_name is None else {output_name: out}

    archive = ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([batch, size, size, 3], tf.float32, name=input_name)
    archive.add_endpoint("serving_default", probabilities, [spec])
    with space_for(path, 2 * saved_size(model)):  # a scratch folder, which its caller removes
        archive.write_out(str(path), verbose=False)


def _convert(run: TrainedRun, quantize: str, calibration, scratch: Path) -> bytes:
    """A float32 SavedModel (raw pixels -> probabilities) converted with TFLiteConverter.from_saved_model."""
    import tensorflow as tf

    path = scratch / "float32_saved_model"
    probabilities_saved_model(run, path, batch=1)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=["serving_default"])
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None].astype("float32")] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    try:
        return converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises many kinds; report one line
        raise ExportFailure(f"TFLite conversion ({quantize}) failed: {first_line(error)}") from error


def check_file_export_options(
    quantize, quantizations, calibration_samples, eval_samples, max_accuracy_drop, calibration_data
) -> None:
    """The options every checked single-file export (TFLite, ONNX) takes, validated alike."""
    expect(quantize in quantizations, "quantize", quantize, "one of " + ", ".join(quantizations))
    expect(
        is_int(calibration_samples) and calibration_samples >= 1,
        "calibration_samples",
        calibration_samples,
        "an integer >= 1",
    )
    expect(
        eval_samples is None or (is_int(eval_samples) and eval_samples >= 1),
        "eval_samples",
        eval_samples,
        "None or an integer >= 1",
    )
    expect(
        isinstance(max_accuracy_drop, (int, float))
        and not isinstance(max_accuracy_drop, bool)
        and max_accuracy_drop >= 0,
        "max_accuracy_drop",
        max_accuracy_drop,
        "a number of points >= 0",
    )
    if calibration_data is not None and quantize != "int8":
        raise UsageError(f"Received: calibration_data with quantize={quantize!r}; only int8 is calibrated")


def default_tflite_path(base_dir: str | os.PathLike, run_name: str, quantize: str) -> Path:
    return as_path(base_dir) / "tflite" / f"{run_name}_{'float32' if quantize == 'none' else quantize}.tflite"


def export_tflite(
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
    """Converts a run to ``output`` (default ``<base_dir>/tflite/<name>_<quantize>.tflite``) plus a JSON sidecar.

    Measures on the run's validation split (first ``eval_samples`` images, all by default):
    the Keras float32 accuracy, this file's accuracy and their top-1 agreement. Refuses
    (ExportFailure, exit 1, no file written) when the accuracy is more than ``max_accuracy_drop``
    percentage points below Keras. int8 needs calibration images (UsageError without them) and
    the validation data (it is the check that int8 is still good).
    """
    check_file_export_options(
        quantize, QUANTIZATIONS, calibration_samples, eval_samples, max_accuracy_drop, calibration_data
    )
    run = load_run(model_dir, weights)
    output = as_path(output) if output is not None else default_tflite_path(base_dir, run.name, quantize)
    if output.suffix != ".tflite":
        raise UsageError(f"Received: output={str(output)!r}; expected a path ending in .tflite")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite or another --output")
    calibration = calibration_images(run, calibration_data, calibration_samples) if quantize == "int8" else None
    sample = held_out_sample(run, eval_samples, log)
    if sample is None and quantize == "int8":
        raise UsageError("int8 export checks accuracy on the run's validation split, which cannot be read")

    import numpy as np

    with tempfile.TemporaryDirectory() as scratch:
        blob = _convert(run, quantize, calibration, Path(scratch))
    report = dict(
        format="tflite",
        quantize=quantize,
        path=str(output),
        model_name=run.name,
        size_bytes=len(blob),
        weights=run.weights_file,
        calibration_images=len(calibration) if calibration is not None else None,
    )
    runner = TFLiteRunner(model_content=blob)
    if runner.xnnpack_refused:
        log(
            "Note: LiteRT's XNNPACK delegate refused this model "
            f"({runner.xnnpack_refused.split('(')[0].strip()}); it was checked with LiteRT's builtin kernels, "
            "which devices use when XNNPACK is unavailable (slower)."
        )
    report.update(
        xnnpack=runner.xnnpack_refused is None,
        input_dtype=np.dtype(runner.input["dtype"]).name,
        input_quantization=[float(v) for v in runner.input["quantization"]],
        output_dtype=np.dtype(runner.output["dtype"]).name,
    )
    if sample is not None:
        images, labels = sample
        keras_probs = keras_probabilities(run.model, images)
        tflite_probs = runner(images)
        keras_accuracy = float((keras_probs.argmax(-1) == labels).mean())
        accuracy = float((tflite_probs.argmax(-1) == labels).mean())
        report.update(
            eval_images=len(labels),
            keras_accuracy=keras_accuracy,
            accuracy=accuracy,
            top1_agreement=float((keras_probs.argmax(-1) == tflite_probs.argmax(-1)).mean()),
            max_probability_difference=float(np.abs(keras_probs - tflite_probs).max()),
        )
        drop = 100 * (keras_accuracy - accuracy)
        if drop > max_accuracy_drop:
            raise ExportFailure(
                f"{quantize} TFLite accuracy {100 * accuracy:.2f}% is {drop:.2f} points below the Keras model's "
                f"{100 * keras_accuracy:.2f}% on {len(labels)} validation images (limit --max-accuracy-drop "
                f"{max_accuracy_drop:g}); {output} was not written"
            )
    sidecar = dict(
        report,
        class_names=list(run.class_names),
        preprocessing=run.preprocessing,
        eval_view=eval_view_record(run),
        image_size=run.model_config.image_size,
        model=run.model_config.to_dict(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        source_run=str(as_path(model_dir).resolve()),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, blob)
    write_atomic(output.with_name(output.name + ".json"), json.dumps(sidecar, indent=2) + "\n")
    measured = (
        f"; on {report['eval_images']} validation images: accuracy {100 * report['accuracy']:.2f}% "
        f"(Keras {100 * report['keras_accuracy']:.2f}%), top-1 agreement {100 * report['top1_agreement']:.1f}%"
        if sample is not None
        else "; not measured (no validation data)"
    )
    log(f"Exported {run.name} TFLite ({quantize}) to {output} ({len(blob) / 1e6:.3f} MB){measured}.")
    return report
