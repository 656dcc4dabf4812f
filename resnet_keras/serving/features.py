"""Feature extraction: per-stage maps (C2..C5) and a pooled embedding, as a model and a SavedModel.

For users who want features rather than classes (retrieval, detection/segmentation necks,
linear probes). The backbone is ours (`models.build_backbone`) with weights from any
source `resolve.resolve` takes: a run directory, a `.keras` file, a keras.applications
name or weights file, a torchvision/timm/keras-hub weight set or state-dict file.

The SavedModel has two signatures, both taking `image`: float32 [batch, H, W, 3] raw RGB 0-255:
- `serving_default` -> `embedding` [batch, C_last]: global average pool of the last stage.
- `stage_features` -> `conv2`..`convN` maps [batch, h, w, C] and `conv2_pool`.. pooled vectors.
Note: in keras.applications' ResNetV2 layout (imported v2 weights) each stage downsamples at
its end, so its C2 map is at stride 8, not 4.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from resnet_keras.core.errors import UsageError


def build_feature_extractor(model_config, weights=None):
    """image -> {"conv2": map, ..., "embedding": [batch, C_last]} for `model_config`'s backbone."""
    import keras
    from keras import layers

    from resnet_keras.pretrained.resolve import assign
    from resnet_keras.zoo.models import build_backbone

    backbone = build_backbone(dataclasses.replace(model_config, include_top=False))
    if weights is not None:
        assign(backbone, {name: v for name, v in weights.items() if name not in ("predictions",)})
    features = dict(backbone.output)
    last = sorted(features)[-1]
    outputs = dict(features)
    for name, tensor in features.items():
        outputs[f"{name}_pool"] = layers.GlobalAveragePooling2D(name=f"{name}_pool")(tensor)
    outputs["embedding"] = layers.Identity(name="embedding")(outputs[f"{last}_pool"])
    return keras.Model(backbone.input, outputs, name=f"{model_config.name}_features")


def load_source(
    source: str,
    *,
    depth: int | None = None,
    variant: str | None = None,
    image_size: int | None = None,
    log: Callable[[str], None] = print,
):
    """(ModelConfig, weights dict without the head) of any source `resolve.resolve` takes."""
    from resnet_keras.pretrained import resolve

    resolved = resolve.resolve(resolve.normalize(source), depth=depth, variant=variant, log=log)
    values = resolve.load(resolved, include_top=False, log=log)
    config = resolved.config
    if image_size is not None:
        config = dataclasses.replace(config, image_size=image_size)
    return config, values


def export_features(
    source: str,
    output: str | os.PathLike,
    *,
    image_size: int | None = None,
    depth: int | None = None,
    variant: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Writes a feature-extraction SavedModel of `source` to `output` (hidden sibling, then rename)."""
    import shutil

    import keras
    import tensorflow as tf

    from resnet_keras.core.files import publish_dir, saved_size, space_for

    output = Path(output)
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise UsageError(f"Received: output={str(output)!r}; the folder {output.parent} does not exist")
    config, values = load_source(source, depth=depth, variant=variant, image_size=image_size, log=log)
    model = build_feature_extractor(config, values)
    spec = tf.TensorSpec([None, config.image_size, config.image_size, config.channels], tf.float32, name="image")
    stage_names = [name for name in model.output if name != "embedding"]

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda image: {"embedding": model(image, training=False)["embedding"]},
        input_signature=[spec],
    )
    archive.add_endpoint(
        "stage_features",
        lambda image: {k: v for k, v in model(image, training=False).items() if k in stage_names},
        input_signature=[spec],
    )
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with space_for(output, 2 * saved_size(model)):  # its weights and a graph of about their size
        try:
            archive.write_out(str(tmp), verbose=False)
            publish_dir(tmp, output, overwrite=overwrite)  # the old export moves aside once the new one is whole
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    dims = model.output["embedding"].shape[-1]
    log(
        f"Wrote {output}: serving_default(image [batch, {config.image_size}, {config.image_size}, "
        f"{config.channels}] raw RGB 0-255) -> embedding [batch, {dims}]; stage_features -> {', '.join(stage_names)}"
    )
    return output
