"""Top-k predictions for image files, in batches, from an exported model (SavedModel, .tflite or .onnx),
a run directory, or weights installed with the package (`cifar10`, `resnet-keras:resnet20.cifar10`).

A SavedModel runs its ``serving_bytes`` signature, so decoding, resizing and cropping happen in
the exported graph, exactly as TF Serving would do them. A .tflite file takes pixels: the same
evaluation view (``preprocessing.eval_view``) is applied here, with the preprocessing and labels
read from the ``<file>.tflite.json`` sidecar written by the export (without it: indices as labels
and a plain resize, with a note). An .onnx file takes pixels too, with its labels and preprocessing
read from the file's own metadata (``onnx_export.OnnxPredictor``). A run directory (its final model,
else its best weights) and our installed weights run in Keras, on the evaluation view of their model
config, with the class names of labels.txt or of the set's card.

Each predictor's ``batch(list of image bytes)`` scores a batch in one graph call (``predict``'s
``batch_size``); a batch holding an undecodable image is retried image by image, so one bad file
costs only its own result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from resnet_keras.core.errors import UsageError, expect, is_int
from resnet_keras.serving.predict_io import NOT_AN_IMAGE, decode_batch, decode_failure


def resolve_saved_model(path: Path) -> Path:
    """A SavedModel version folder, or the latest integer version under a model base path."""
    if (path / "saved_model.pb").exists():
        return path
    from resnet_keras.serving.export import versions

    found = [v for v in versions(path) if (path / str(v) / "saved_model.pb").exists()]
    if not found:
        raise UsageError(
            f"{path} is neither a SavedModel folder (saved_model.pb) nor a model base path with "
            f"integer version folders, nor a .tflite file"
        )
    return path / str(found[-1])


class _SavedModelPredictor:
    def __init__(self, path: Path):
        import tensorflow as tf

        from resnet_keras.serving.export import BYTES_INPUT, BYTES_SIGNATURE, LABELS_FILE

        self.tf = tf
        self.path = resolve_saved_model(path)
        loaded = tf.saved_model.load(str(self.path))
        if BYTES_SIGNATURE not in loaded.signatures:
            raise UsageError(f"{self.path} has no {BYTES_SIGNATURE!r} signature; export it with resnet-keras export")
        self._loaded = loaded
        self._signature = loaded.signatures[BYTES_SIGNATURE]
        self._input = BYTES_INPUT
        self.labels = (self.path / "assets" / LABELS_FILE).read_text(encoding="utf-8").splitlines()

    def __call__(self, data: bytes):
        tf = self.tf
        try:
            out = self._signature(**{self._input: tf.constant([data])})
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(decode_failure(error)) from error
        return out["probabilities"].numpy()[0]

    def batch(self, datas: list[bytes]):
        tf = self.tf
        try:
            out = self._signature(**{self._input: tf.constant(datas)})
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(decode_failure(error)) from error
        return out["probabilities"].numpy()


class _TFLitePredictor:
    def __init__(self, path: Path):
        import tensorflow as tf

        from resnet_keras.data.preprocessing import eval_view
        from resnet_keras.serving.export import TFLiteRunner
        from resnet_keras.serving.predict_io import stored_eval_view

        self.tf = tf
        self.path = path
        try:
            self.runner = TFLiteRunner(model_path=str(path))
        except ValueError as error:
            raise UsageError(f"{path} is not a valid TFLite model ({error})") from error
        sidecar = path.with_name(path.name + ".json")
        self.notes = []
        num_classes = int(self.runner.output["shape"][-1])
        if sidecar.exists():
            meta = json.loads(sidecar.read_text())
            self.labels, preprocessing = list(meta["class_names"]), meta["preprocessing"]
            view = stored_eval_view(meta.get("eval_view"))
        else:
            self.labels, preprocessing, view = [str(i) for i in range(num_classes)], "none", None
            self.notes.append(f"Note: {sidecar} is missing: labels are class indices and images are only resized.")
        self.view = eval_view(preprocessing, self.runner.image_size, view)

    def __call__(self, data: bytes):
        from resnet_keras.data.preprocessing import decode_image_checked as decode_image

        tf = self.tf
        try:
            image = decode_image(data)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(decode_failure(error)) from error
        return self.runner(self.view(image).numpy()[None])[0]

    def batch(self, datas: list[bytes]):
        return decode_batch(self, datas, self.runner)


class _KerasPredictor:
    """Our own weights in Keras: a run directory or a weight set installed with the package."""

    def __init__(self, text: str):
        import tensorflow as tf

        from resnet_keras.data.preprocessing import eval_view
        from resnet_keras.pretrained import resolve, shipped
        from resnet_keras.runs.rundir import RunDir

        self.tf = tf
        source = resolve.resolve(text, log=lambda line: None)
        self.path = source.path
        self.model, config = resolve.build(source, log=lambda line: None)
        if source.weight_set is not None:
            self.labels = list(shipped.labels(source.weight_set))
        else:
            self.labels = list(RunDir(text).class_names(config.num_classes))
        if not config.include_top or len(self.labels) != config.num_classes:
            raise UsageError(f"{text}: {len(self.labels)} class names for {config.num_classes} outputs")
        self.view = eval_view(config.family, config.image_size, config.eval_view)

    def batch(self, datas: list[bytes]):
        from resnet_keras.serving.export import keras_probabilities

        return decode_batch(self, datas, lambda pixels: keras_probabilities(self.model, pixels.astype("float32")))


def read_image_file(path: str) -> bytes:
    """The bytes of an image file: a regular file (a FIFO or device would block or never end) of at
    most MAX_IMAGE_BYTES that starts like a JPEG/PNG/GIF/BMP; ValueError or OSError otherwise."""
    from resnet_keras.data.preprocessing import MAX_IMAGE_BYTES, open_regular_file, starts_like_image

    with open_regular_file(path) as handle:
        if os.fstat(handle.fileno()).st_size > MAX_IMAGE_BYTES:
            raise ValueError(f"larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        data = handle.read(MAX_IMAGE_BYTES + 1)
    if not starts_like_image(data):
        raise ValueError(NOT_AN_IMAGE)
    return data


def load_predictor(model: str | os.PathLike):
    """A predictor with ``.batch(list of image bytes) -> probabilities [n, C]``, ``.labels`` and ``.path``."""
    from resnet_keras.pretrained import registry, resolve

    path = Path(model)
    name = resolve.shipped_name(str(model))
    if registry.is_weight_name(name) and name.startswith(f"{registry.OURS}:"):
        return _KerasPredictor(name)
    if not path.exists():
        raise UsageError(
            f"Model not found: {path}; expected a SavedModel folder, a .tflite or .onnx file, a run directory or "
            f"weights installed with the package ({', '.join(registry.SHIPPED_TAGS)})"
        )
    if path.is_file():
        if path.suffix == ".onnx":
            from resnet_keras.serving.onnx import OnnxPredictor

            return OnnxPredictor(path)
        if path.suffix != ".tflite":
            raise UsageError(f"Received: model={str(path)!r}; expected a SavedModel folder, a .tflite or an .onnx file")
        return _TFLitePredictor(path)
    if (path / "config.json").is_file() and not (path / "saved_model.pb").exists():
        return _KerasPredictor(str(path))
    return _SavedModelPredictor(path)


def predict(
    model: str | os.PathLike,
    images: list[str],
    top_k: int = 5,
    on_error: Callable[[str], None] | None = None,
    batch_size: int = 32,
) -> list[dict]:
    """One result per image: ``{"image", "predictions": [{"rank", "index", "label", "probability"}]}``
    or ``{"image", "error"}`` for a file that cannot be read or decoded (the others still run).

    Images are scored ``batch_size`` at a time, one graph call per batch. ``on_error(message)`` is
    called with one line per failed image. Raises UsageError for a bad model path, top_k or batch_size.
    """
    import numpy as np

    expect(is_int(top_k) and top_k >= 1, "top_k", top_k, "an integer >= 1")
    expect(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    predictor = load_predictor(model)
    for note in getattr(predictor, "notes", []):
        if on_error:
            on_error(note)
    top_k = min(top_k, len(predictor.labels))

    def failed(image, error):
        message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        if on_error:
            on_error(f"Error: {image}: {message}")
        return dict(image=image, error=message)

    def ranked(image, probabilities):
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        return dict(
            image=image,
            predictions=[
                dict(rank=rank, index=int(i), label=predictor.labels[i], probability=float(probabilities[i]))
                for rank, i in enumerate(order, start=1)
            ],
        )

    results: dict[int, dict] = {}
    for start in range(0, len(images), batch_size):
        readable = []  # (position, image, bytes)
        for position in range(start, min(start + batch_size, len(images))):
            image = images[position]
            try:
                readable.append((position, image, read_image_file(image)))
            except (OSError, ValueError) as error:
                results[position] = failed(image, error)
        if not readable:
            continue
        try:
            probabilities = predictor.batch([data for _, _, data in readable])
        except ValueError:  # one image in the batch does not decode: score them one by one
            probabilities = None
        for row, (position, image, data) in enumerate(readable):
            if probabilities is not None:
                results[position] = ranked(image, probabilities[row])
                continue
            try:
                results[position] = ranked(image, predictor.batch([data])[0])
            except ValueError as error:
                results[position] = failed(image, error)
    return [results[position] for position in range(len(images))]
