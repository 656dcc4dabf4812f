"""What ``resnet-keras predict`` reads and writes: image arguments that are files, folders or glob
patterns, and result files (CSV or JSON), so a few thousand images are one command and one file."""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path

from resnet_keras.core.errors import UsageError

NOT_AN_IMAGE = "not a JPEG, PNG, GIF or BMP image"

OUTPUT_SUFFIXES = (".csv", ".json")
CSV_COLUMNS = ("image", "rank", "index", "label", "probability", "error")
_GLOB_CHARS = set("*?[")


def _images_under(folder: str) -> list[str]:
    from resnet_keras.data.preprocessing import IMAGE_EXTENSIONS

    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(parent, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and n[0] != "."]
    return sorted(found)


def expand_images(arguments: list[str]) -> list[str]:
    """Image paths in argument order: a folder gives its image files (recursive, by extension,
    sorted), a pattern with ``*``, ``?`` or ``[`` the files it matches (``**`` recurses), anything
    else is kept as given (a missing file becomes that image's error). UsageError for a folder with
    no images or a pattern that matches nothing."""
    images = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = _images_under(argument)
            if not found:
                raise UsageError(f"No image files under folder {argument}")
            images += found
        elif not os.path.exists(argument) and _GLOB_CHARS & set(argument):
            found = sorted(path for path in glob.glob(argument, recursive=True) if os.path.isfile(path))
            if not found:
                raise UsageError(f"No files match {argument!r}")
            images += found
        else:
            images.append(argument)
    return images


def check_output(path: str | os.PathLike | None) -> None:
    """UsageError unless ``path`` is None or a .csv/.json file in an existing folder."""
    if path is None:
        return
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"Received: output={str(path)!r}; expected a file ending in .csv or .json")
    if not path.parent.is_dir():
        raise UsageError(f"Received: output={str(path)!r}; the folder {path.parent} does not exist")


def write_results(results: list[dict], path: str | os.PathLike) -> None:
    """JSON: the list ``predict`` returns. CSV: one row per image and rank (``image, rank, index,
    label, probability``), one row with ``error`` for an image that could not be scored."""
    check_output(path)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            if path.suffix.lower() == ".json":
                json.dump(results, handle, indent=2)
                handle.write("\n")
            else:
                writer = csv.DictWriter(handle, CSV_COLUMNS)
                writer.writeheader()
                for result in results:
                    if "error" in result:
                        writer.writerow(dict(image=result["image"], error=result["error"]))
                    for p in result.get("predictions", []):
                        writer.writerow(dict(image=result["image"], **p))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def decode_batch(predictor, datas: list[bytes], runner):
    """``runner`` (pixels [n, s, s, 3] -> probabilities) on the evaluation view (``predictor.view``) of
    each encoded image; ValueError when one does not decode."""
    import numpy as np

    from resnet_keras.data.preprocessing import decode_image_checked as decode_image

    tf = predictor.tf
    pixels = []
    for data in datas:
        try:
            pixels.append(predictor.view(decode_image(data)).numpy())
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(decode_failure(error)) from error
    return runner(np.stack(pixels))


def decode_failure(error) -> str:
    """Why an image did not decode: a size limit of the signature (its own words), else not an image."""
    import re

    found = re.search(r"image (has more than \d+ megapixels|larger than \d+ MB)", str(error))
    return found.group(0) if found else NOT_AN_IMAGE


def eval_view_record(run) -> dict:
    """The evaluation view of an exported run (`export.TrainedRun`), for its TFLite sidecar and ONNX
    metadata: the shorter side to resize to, the crop, the interpolation, the rounding convention and
    the normalisation, which the model applies itself (raw RGB 0-255 in)."""
    config = run.model_config
    return dict(
        view=run.preprocessing,
        **config.eval_view.describe(config.image_size),
        mean=list(config.input_mean),
        std=list(config.input_std),
        normalisation="inside the model",
    )


def stored_eval_view(record: dict | None):
    """The `config.schema.EvalView` of an `eval_view_record` (None for exports made before it)."""
    from resnet_keras.config.schema import EvalView

    if not record:
        return None
    return EvalView(record["crop_fraction"], record["interpolation"], record["convention"])
