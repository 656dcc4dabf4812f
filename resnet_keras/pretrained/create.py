"""`resnet_keras.create_model`: a named preset, randomly initialised or holding pretrained weights."""

from __future__ import annotations

from typing import Any


def create_model(name: str, weights: str | None = None, **overrides: Any):
    """A model from a named preset, e.g. `create_model("resnet56", num_classes=100)`.

    `weights` names pretrained weights (`"torchvision:IMAGENET1K_V2"`, `"timm:a1_in1k"`, a
    `.safetensors`/`.pth` file; `resnet-keras info --weights` lists them): the model then has
    the weights' architecture and preprocessing (see `resnet_keras.pretrained.resolve`).
    """
    if weights is not None:
        from resnet_keras.pretrained.state_dicts import create_pretrained

        return create_pretrained(name, weights, **overrides)
    from resnet_keras.zoo.models import create_model as create_random

    return create_random(name, **overrides)
