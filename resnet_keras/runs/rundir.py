"""`RunDir`: the one owner of a training run's folder and the names of its files.

    runs/resnet20-cifar10/
      config.json        the model, data and train configs (`resnet_keras.config.schema`)
      labels.txt         class names in label order, one per line
      checkpoints/       model, optimizer and epoch of the last two epochs (tf.train.Checkpoint)
      best.weights.h5    the weights of the epoch with the best validation accuracy
      model.keras        the final model
      history.csv        one row per epoch (HISTORY_FIELDS)
      metrics.json       the run's summary
      curves.png         loss and accuracy curves
      logs/              TensorBoard event files
      eval-<split>.json, confusion.png   written by `evaluate`

Every file is written atomically (`storage.write_atomic`), so a killed run leaves whole files.
Training, evaluation, export, fine-tuning and tuning all reach a run through this class. The
folder may be a URL (``gs://bucket/run``, any scheme tf.io.gfile opens): `path` is then a
`storage.UrlPath`, and what that store makes atomic is said in `resnet_keras.core.storage`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from resnet_keras.config.schema import DataConfig, ModelConfig, TrainConfig
from resnet_keras.core.errors import UsageError, expect
from resnet_keras.core.files import remove_own_temps
from resnet_keras.core.storage import UrlPath, as_path, check_reachable, local_copy, rmtree, write_atomic
from resnet_keras.runs.runstate import check_class_names, check_keras_file, parse_history, read_labels, validate_configs
from resnet_keras.zoo.portable import save_model_atomic

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "finished_at")
WEIGHTS = ("final", "best")
# Set to a folder to keep each non-chief worker's copies there (worker-<task id>/) for inspection.
KEEP_SCRATCH_ENV = "RESNET_KERAS_WORKER_SCRATCH"


class RunDir:
    """A run directory at `path` (which may not exist yet)."""

    CONFIG = "config.json"
    LABELS = "labels.txt"
    CHECKPOINTS = "checkpoints"
    BEST_WEIGHTS = "best.weights.h5"
    FINAL_MODEL = "model.keras"
    HISTORY = "history.csv"
    METRICS = "metrics.json"
    CURVES = "curves.png"
    LOGS = "logs"
    CONFUSION = "confusion.png"

    def __init__(self, path: str | os.PathLike | UrlPath):
        self.path = as_path(path)
        check_reachable(self.path)  # offline, a bucket fails here in one line, before any write

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path | UrlPath:
        return self.path / name

    @property
    def checkpoint_dir(self) -> Path | UrlPath:
        return self.path / self.CHECKPOINTS

    def eval_file(self, split: str) -> Path | UrlPath:
        return self.path / f"eval-{split.replace('/', '_')}.json"

    # -- configs -------------------------------------------------------------------------

    def is_run(self) -> bool:
        return self.file(self.CONFIG).is_file()

    def read_configs(self) -> dict:
        """config.json as a dict of "model", "data" and "train" sections."""
        if not self.path.is_dir():
            raise UsageError(f"Run directory not found: {self.path} (no {self.CONFIG})")
        if not self.is_run():
            raise UsageError(f"{self.path} is not a run directory: no {self.CONFIG}")
        try:
            configs = json.loads(self.file(self.CONFIG).read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"{self.file(self.CONFIG)} is not a valid run config ({error})") from None
        if not isinstance(configs, dict) or not {"model", "data"} <= set(configs):
            raise UsageError(f"{self.file(self.CONFIG)} is not a valid run config (no model and data sections)")
        return validate_configs(configs, self.file(self.CONFIG))  # the validators `train` uses

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.read_configs()["model"])

    def data_config(self) -> DataConfig:
        return DataConfig.from_dict(self.read_configs()["data"])

    def check_resumable(self, configs: dict, overwrite: bool) -> bool:
        """True when the folder holds a run of `configs` to resume (only `train.epochs` may differ).

        Raises UsageError for a run of another config (naming the fields) or a non-empty folder
        that is not a run, which is never deleted, even with `overwrite`. With `overwrite`, an
        existing run is deleted here.
        """
        if not self.is_run():
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise UsageError(
                    f"{self.path} exists, is not empty and is not a run directory (no {self.CONFIG}); "
                    "use another --model-dir"
                )
            return False
        if overwrite:
            rmtree(self.path)
            return False
        try:
            old = _flatten(json.loads(self.file(self.CONFIG).read_text()))
        except (ValueError, AttributeError) as error:
            raise UsageError(
                f"{self.file(self.CONFIG)} is not a valid run config ({error}); use --overwrite or another --model-dir"
            ) from None
        new = _flatten(json.loads(json.dumps(configs)))
        # A run written before a config field existed resumes when the new field keeps its default.
        defaults = {
            f"{section}.{field.name}": field.default
            for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))
            for field in dataclasses.fields(cls)
            if field.default is not dataclasses.MISSING
        }
        old.update({key: new[key] for key in set(new) - set(old) if key in defaults and new[key] == defaults[key]})
        # ... or the value its recipe gives the field today (fields left None are filled from the recipe).
        if missing := set(new) - set(old):
            resolved = _resolved_configs(self.file(self.CONFIG).read_text())
            old.update({key: new[key] for key in missing if key in resolved and resolved[key] == new[key]})
        differing = sorted(
            key
            for key in set(old) | set(new)
            if key != "train.epochs" and old.get(key, "<missing>") != new.get(key, "<missing>")
        )
        if differing:
            details = ", ".join(
                f"{key} ({old.get(key, '<missing>')!r} -> {new.get(key, '<missing>')!r})" for key in differing
            )
            raise UsageError(
                f"{self.path} holds a run with a different config: {details}; use --overwrite or another --model-dir"
            )
        return True

    def start(self, configs: dict, class_names: tuple[str, ...]) -> None:
        """Makes the folder a run: writes config.json and labels.txt (the labels need no data later)."""
        check_class_names(class_names, where=str(self.path))
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_temps()
        self.write_json(self.CONFIG, configs, sort_keys=True)
        write_atomic(self.file(self.LABELS), "".join(f"{name}\n" for name in class_names))

    def class_names(self, num_classes: int, data_config: DataConfig | None = None) -> tuple[str, ...]:
        """labels.txt, or for runs written before it existed the dataset's listing (needs the data)."""
        labels = self.file(self.LABELS)
        if labels.exists():
            names = read_labels(labels, num_classes)  # bounded: a huge file is refused, not read
        else:
            from resnet_keras.data.pipeline import describe

            try:
                names = tuple(describe(data_config or self.data_config()).class_names)
            except UsageError as error:
                raise UsageError(
                    f"{self.path} has no {self.LABELS} and its dataset cannot be read for the class names "
                    f"({error}); write the {num_classes} class names, one per line, to {labels}"
                ) from error
        if len(names) != num_classes:
            raise UsageError(f"{self.path}: {len(names)} class names for a model with {num_classes} outputs")
        bad = [name for name in names if not name or "\n" in name or "\r" in name]
        if bad:
            raise UsageError(f"{self.path}: class names must be non-empty single lines; received {bad[:3]!r}")
        return names

    def remove_temps(self) -> None:
        """Deletes what a killed (or an older, disk-full) writer left: hidden `.<name>.tmp-<pid>`
        files and TensorFlow's `checkpoints/ckpt-<n>_temp/` folders. The caller holds the run's
        writer lock, so no other process is writing them."""
        if isinstance(self.path, UrlPath):
            return
        remove_own_temps(self.path)
        for folder in self.path.glob(f"{self.CHECKPOINTS}/ckpt-*_temp"):
            shutil.rmtree(folder, ignore_errors=True)

    # -- records -------------------------------------------------------------------------

    def write_json(self, name: str, data: Any, *, sort_keys: bool = False) -> Path | UrlPath:
        path = self.file(name)
        write_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
        return path

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.file(name).read_text())
        except ValueError as error:
            raise UsageError(f"{self.file(name)} is not valid JSON ({error}); correct or delete it") from None

    def read_history(self) -> list[dict]:
        path = self.file(self.HISTORY)
        if not path.exists():
            return []
        with io.StringIO(path.read_text(), newline="") as handle:
            return parse_history(path, csv.DictReader(handle), HISTORY_FIELDS)  # typed, in order, or UsageError

    def write_history(self, rows: list[dict]) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.file(self.HISTORY), out.getvalue())

    def write_png(self, name: str, png: bytes) -> Path | UrlPath:
        write_atomic(self.file(name), png)
        return self.file(name)

    # -- models --------------------------------------------------------------------------

    def latest_checkpoint(self) -> str | None:
        import tensorflow as tf

        return tf.train.latest_checkpoint(str(self.checkpoint_dir))

    def save_best_weights(self, model) -> None:
        from resnet_keras.core import tf_compat

        # Rendered in memory: HDF5 never writes to the disk, whose full state it reports badly.
        write_atomic(self.file(self.BEST_WEIGHTS), tf_compat.weights_h5_bytes(model))

    def save_final_model(self, model) -> None:
        save_model_atomic(model, self.file(self.FINAL_MODEL))

    def weights_file(self, weights: str = "final") -> str:
        """The file `load_model(weights)` reads: model.keras for "final" when it exists, else best."""
        expect(weights in WEIGHTS, "weights", weights, "'final' or 'best'")
        return self.FINAL_MODEL if weights == "final" and self.file(self.FINAL_MODEL).exists() else self.BEST_WEIGHTS

    def load_model(self, weights: str = "final", model_config: ModelConfig | None = None):
        """The trained Keras model: "final" (model.keras, else the best weights) or "best".

        Raises UsageError when the run has neither (it never finished an epoch).
        """
        import keras

        import resnet_keras.zoo.blocks  # noqa: F401  registers the custom layers (ZeroPadShortcut) for loading

        name = self.weights_file(weights)
        if name == self.FINAL_MODEL:
            with local_copy(self.file(name)) as local:  # Keras reads local files
                check_keras_file(local)  # a truncated zip would load as "File not found"
                return keras.saving.load_model(str(local), safe_mode=True, compile=False)
        if self.file(self.BEST_WEIGHTS).exists():
            from resnet_keras.zoo.models import build_model

            model = build_model(model_config or self.model_config())
            with local_copy(self.file(self.BEST_WEIGHTS)) as local:
                model.load_weights(str(local))
            return model
        raise UsageError(
            f"{self.path} has no trained model ({self.FINAL_MODEL} or {self.BEST_WEIGHTS}); train it first"
        )

    # -- multi-worker --------------------------------------------------------------------

    def worker_scratch(self, task_id: int) -> RunDir:
        """A fresh local run directory for a non-chief worker's copies of the run files.

        Under MultiWorkerMirroredStrategy every worker must save checkpoints (the save is a
        collective), but only the chief's files are the run; the others write here, and the
        folder is removed at exit unless `KEEP_SCRATCH_ENV` names a folder to keep them in.
        """
        import atexit
        import tempfile

        keep = os.environ.get(KEEP_SCRATCH_ENV)
        if keep:
            scratch = Path(keep) / f"worker-{task_id}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            return RunDir(scratch)
        scratch = Path(tempfile.mkdtemp(prefix=f"resnet-keras-worker-{self.path.name}-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return RunDir(scratch)


def _resolved_configs(text: str) -> dict:
    """A config.json's sections as the current dataclasses resolve them, flattened ({} if they cannot)."""
    try:
        raw = json.loads(text)
        return _flatten(
            {
                section: cls.from_dict(raw[section]).to_dict()
                for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))
            }
        )
    except Exception:  # an old or hand-edited file that no longer validates: no field is filled in
        return {}


def _flatten(configs: dict) -> dict:
    return {f"{section}.{key}": value for section, values in configs.items() for key, value in values.items()}
