"""Weights trained by this project and installed with the package: no cache, no network.

Each set is two files in `resnet_keras/pretrained/weights/`, named by its registry entry
(`registry.WeightSet.file`, hub `resnet-keras`):

- `<name>.weights.h5`: the Keras weights of our model (`model.save_weights`);
- `<name>.json`, the set's card: the model config it was trained as, the class names in label
  order, the SHA-256 of the weights file, how it was trained (the command, the run's epochs and
  steps) and what it scored on which held-out images.

The accuracy users see (`resnet-keras info --weights`) is the registry's; a test scores the installed
weights on the held-out split the card names and checks that they score it. `scripts/ship_weights.py`
writes both files from a run directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained.registry import WeightSet

DIRECTORY = Path(__file__).with_name("weights")
CARD_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".weights.h5"


def weights_file(weight_set: WeightSet) -> Path:
    """The installed weights file of `weight_set`; UsageError when the installation lacks it."""
    path = DIRECTORY / weight_set.file
    if not path.is_file():
        raise UsageError(
            f"{weight_set.name}: {path} is missing from this installation of resnet-keras; reinstall the "
            f"package (its weights are package data)"
        )
    return path


def card(weight_set: WeightSet) -> dict:
    """The card of `weight_set` (see the module docstring), read from the installation."""
    path = weights_file(weight_set)
    card_path = path.with_name(path.name[: -len(WEIGHTS_SUFFIX)] + CARD_SUFFIX)
    try:
        return json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        message = f"{weight_set.name}: cannot read its card {card_path} ({error}); reinstall the package"
        raise UsageError(message) from None


def model_config(weight_set: WeightSet) -> ModelConfig:
    """The architecture the weights were trained as (with its normalisation and evaluation view)."""
    return ModelConfig.from_dict(card(weight_set)["model"])


def labels(weight_set: WeightSet) -> tuple[str, ...]:
    """The class names, in label order."""
    return tuple(card(weight_set)["labels"])


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_weights_file(weight_set: WeightSet) -> str:
    """`weights_file`, after checking its SHA-256 against the card's (a damaged install fails here)."""
    path = weights_file(weight_set)
    expected = card(weight_set)["sha256"]
    if sha256(path) != expected:
        raise UsageError(f"{weight_set.name}: {path} does not match its card's SHA-256; reinstall the package")
    return str(path)
