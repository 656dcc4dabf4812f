"""Checks that a run directory's files agree with themselves before anything trusts them.

Every reader of a run (train's resume, evaluate, export, fine-tuning from a run) meets a
tampered, truncated or half-deleted file here as one UsageError naming the file and what to do,
in bounded time and memory: the config through the same validators `train` uses, history rows
by type and order, labels.txt by size, model.keras by its zip checksums, checkpoints by reading
every tensor (TensorFlow checks each one's CRC32C), and the run as a whole (a finished run whose
checkpoints are gone is not retrained from scratch over its results).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from resnet_keras.core import tf_compat
from resnet_keras.core.errors import UsageError, first_line

# Longer than any file or folder name (255 bytes on common file systems), so every folder
# dataset fits; it bounds what `evaluate` lays out in its confusion matrix.
MAX_CLASS_NAME_CHARS = 256
MAX_HISTORY_BYTES = 16 * 2**20  # ~150,000 epochs of rows
_FIX = "correct it, or start again with --overwrite"


# -- config ---------------------------------------------------------------------------------


def validate_configs(configs: dict, config_file: Path) -> dict:
    """`configs` (config.json's sections) once each section passes its dataclass's validation."""
    from resnet_keras.config.schema import DataConfig, ModelConfig, TrainConfig

    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        if section not in configs:
            continue  # model and data are required by the reader; runs may predate a train section
        values = configs[section]
        try:
            if not isinstance(values, dict):
                raise UsageError(f"the {section} section is {type(values).__name__}, not a mapping")
            cls.from_dict(values)
        except (UsageError, TypeError, ValueError) as error:
            raise UsageError(
                f"{config_file} is not a valid run config ({section}: {first_line(error)}); {_FIX}"
            ) from None
    return configs


# -- labels ---------------------------------------------------------------------------------


def read_labels(path: Path, num_classes: int) -> tuple[str, ...]:
    """labels.txt's names, reading no more than `num_classes` names of MAX_CLASS_NAME_CHARS can fill."""
    limit = max(num_classes, 1) * (4 * MAX_CLASS_NAME_CHARS + 2)  # UTF-8: at most 4 bytes a character
    if hasattr(path, "scheme"):  # a storage.UrlPath (gs://, ram://): labels.txt is small, read it whole
        data = path.read_bytes()[: limit + 1]
    else:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    if len(data) > limit:
        raise UsageError(
            f"{path} is larger than {num_classes} class names of at most {MAX_CLASS_NAME_CHARS} characters can be; "
            f"write the {num_classes} class names, one per line"
        )
    try:
        names = tuple(data.decode("utf-8").splitlines())
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    check_class_names(names, where=str(path))
    return names


def check_class_names(names: Iterable[str], *, where: str) -> None:
    """UsageError for a class name longer than MAX_CLASS_NAME_CHARS (before a run writes it)."""
    long = [name for name in names if len(name) > MAX_CLASS_NAME_CHARS]
    if long:
        raise UsageError(
            f"{where}: class names must be at most {MAX_CLASS_NAME_CHARS} characters; "
            f"received {len(long)} longer, the first starting {long[0][:40]!r}"
        )


# -- history --------------------------------------------------------------------------------


def parse_history(path: Path, rows: Iterable[dict], fields: tuple[str, ...]) -> list[dict]:
    """history.csv's rows (csv.DictReader) as typed dicts; UsageError unless they are epochs 1, 2, ...
    with every field of `fields` and numbers where numbers belong."""
    if (path.size() if hasattr(path, "scheme") else path.stat().st_size) > MAX_HISTORY_BYTES:
        raise UsageError(f"{path} is larger than {MAX_HISTORY_BYTES // 2**20} MiB, more than any run's history; {_FIX}")

    def bad(line: int, reason: str):
        return UsageError(f"{path} line {line}: {reason}; {_FIX}")

    out = []
    try:
        header = getattr(rows, "fieldnames", None)  # csv.DictReader's first line (None: an empty file)
        if header is not None and (len(header) != len(fields) or set(header) != set(fields)):
            raise bad(1, f"expected the columns {', '.join(fields)}")
        for number, row in enumerate(rows, start=1):
            line = number + 1  # the header is line 1
            if None in row or None in row.values() or set(row) != set(fields):
                raise bad(line, f"expected the columns {', '.join(fields)}")
            typed = {}
            for key, value in row.items():
                if key == "finished_at":
                    typed[key] = value
                elif key == "epoch":
                    if not value.isdigit() or int(value) != number:
                        raise bad(line, f"epoch {value!r}; expected {number} (epochs 1, 2, ... in order)")
                    typed[key] = number
                else:
                    try:
                        typed[key] = float(value)
                    except ValueError:
                        raise bad(line, f"{key}={value[:40]!r} is not a number") from None
                    in_range = (0 <= typed[key] <= 1) if key.endswith("accuracy") else not typed[key] < 0
                    if key in ("lr", "seconds", "accuracy", "val_accuracy") and not (
                        math.isfinite(typed[key]) and in_range
                    ):
                        raise bad(line, f"{key}={value[:40]!r} is out of range")
            out.append(typed)
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; {_FIX}") from None
    except Exception as error:  # csv.Error: a field beyond csv's size limit, a NUL byte
        if isinstance(error, UsageError):
            raise
        raise UsageError(f"{path} is not a history file ({first_line(error)}); {_FIX}") from None
    return out


# -- models ---------------------------------------------------------------------------------


def check_keras_file(path: Path) -> None:
    """UsageError unless `path` is a whole .keras zip (every member's CRC checked)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        damaged = first_line(error)
    if damaged:
        raise UsageError(
            f"{path} is damaged or incomplete (not a whole .keras archive: {damaged}); "
            "use --weights best, or train the run again"
        )


# -- checkpoints and the run as a whole -----------------------------------------------------


def checkpoint_problem(path: str) -> str | None:
    """Why the checkpoint at `path` cannot be restored (None: every tensor reads and checks)."""

    try:
        reader = tf_compat.checkpoint_reader(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)  # the bundle reader checks each tensor's CRC32C
    except Exception as error:  # noqa: BLE001 - truncated, missing or corrupt files all mean "unreadable"
        return first_line(error)
    return None


class ReadableCheckpoints:
    """A CheckpointManager's view whose `latest_checkpoint` is the newest checkpoint that reads
    whole, logging the ones it skips; UsageError when the manager lists some and none reads."""

    def __init__(self, manager, log: Callable[[str], None]):
        self.manager, self.log = manager, log

    @property
    def latest_checkpoint(self) -> str | None:
        listed = list(self.manager.checkpoints)
        if self.manager.latest_checkpoint and self.manager.latest_checkpoint not in listed:
            listed.append(self.manager.latest_checkpoint)
        skipped = []
        for path in reversed(listed):
            problem = checkpoint_problem(path)
            if problem is None:
                if skipped:
                    self.log(
                        f"Checkpoint {os.path.basename(skipped[0][0])} is unreadable ({skipped[0][1]}); "
                        f"resuming from {os.path.basename(path)}, the newest readable one."
                    )
                return path
            skipped.append((path, problem))
        if skipped:
            details = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in skipped)
            raise UsageError(
                f"no checkpoint in {os.path.dirname(skipped[0][0])} can be read ({details}); "
                "restore them from a copy, or start again with --overwrite"
            )
        return None


def check_resume(run, epochs_done: int | None) -> None:
    """UsageError when resuming `run` after `epochs_done` epochs (None: no checkpoint) would
    overwrite or lose what its other files hold. Only the crash window of the last epoch may
    differ (its history row is written just before its checkpoint)."""
    rows = run.read_history()
    done = epochs_done or 0
    if epochs_done is None:
        finished = [name for name in (run.FINAL_MODEL, run.METRICS) if run.file(name).exists()]
        if finished or len(rows) > 1:
            held = ", ".join(finished + ([f"{len(rows)} epochs of {run.HISTORY}"] if rows else []))
            raise UsageError(
                f"{run.path} holds a trained run ({held}) but no checkpoint in {run.CHECKPOINTS}/ to resume from; "
                "restore the checkpoints, or pass --overwrite to train it again from scratch (which deletes it)"
            )
    elif len(rows) < done:
        raise UsageError(
            f"{run.path}: {run.HISTORY} has {len(rows)} epochs but the checkpoint is after epoch {done}; "
            f"restore {run.HISTORY}, or pass --overwrite to train it again from scratch"
        )
