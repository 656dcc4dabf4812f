"""Evaluation of a trained run: loss, top-1 and top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import os
from typing import Any

from resnet_keras.config.schema import DataConfig
from resnet_keras.core.errors import UsageError, expect
from resnet_keras.runs.rundir import WEIGHTS, RunDir

# Test-time augmentation: "flip" averages the probabilities of the image and its mirror; "shifts"
# six views, the image and its two one-pixel diagonal translations (zero-padded, as the training
# crops are) with their mirrors, after airbench's mirror-translate testing (Jordan 2024, which pads
# by mirroring and weights the unshifted pair by half); "crops" ten
# views, the four corner and the centre crops of the image padded by 1/8 of its side (4 pixels at 32,
# the training crops' whole range) and their mirrors, as the paper's 10-crop testing.
TTA_MODES = ("none", "flip", "shifts", "crops")


def evaluate(
    model_dir: str | os.PathLike,
    data_config: DataConfig | None = None,
    split: str = "test",
    *,
    batch_size: int = 128,
    weights: str = "final",
    write: bool = True,
    tta: str = "none",
) -> dict[str, Any]:
    """Evaluates a run's model on `split`; returns loss, top-1, top-5, per-class accuracy and confusion.

    `data_config` defaults to the run's own. Other data is labelled by the run's class names
    (labels.txt), matched by name for image folders: a labelled folder holding only a `test/`
    split, or only class folders (then every split name reads the whole folder), or only some
    of the classes; a class folder the run does not know is an error. `weights` is "final"
    (model.keras) or "best" (best.weights.h5 by val accuracy). The confusion matrix is rows =
    true class, columns = predicted class. With `write`, saves `confusion.png` and
    `eval-<split>.json` in the run directory. `tta` (TTA_MODES) averages the softmax probabilities
    of several views of each image; the loss is then the cross-entropy of the averaged probabilities.
    "shifts" and "crops" need an evaluation view that is the whole image (the "cifar" and "none"
    views): the "imagenet" view is already a centre crop.
    """
    expect(weights in WEIGHTS, "weights", weights, "'final' or 'best'")
    expect(tta in TTA_MODES, "tta", tta, "one of " + ", ".join(TTA_MODES))
    run = RunDir(model_dir)
    model_config = run.model_config()
    own_data = run.data_config()
    data_config = data_config or own_data

    import numpy as np
    import tensorflow as tf

    from resnet_keras.core import plots
    from resnet_keras.data import pipeline as data_lib
    from resnet_keras.training.trainer import per_example_loss

    n = model_config.num_classes
    names = list(run.class_names(n, own_data))
    # The run's own data keeps its own splits (a held-out validation part, say); other folders are
    # read by the run's class names, so they need not hold every class or a train split.
    by_name = tuple(names) if data_config != own_data and data_config.dataset == "folder" else None
    if by_name is None:
        info = data_lib.describe(data_config)
        if info.num_classes != n:
            raise UsageError(
                f"dataset {data_config.dataset!r} has {info.num_classes} classes; the model in {run.path} predicts {n}"
            )
    if tta in ("shifts", "crops"):
        from resnet_keras.data.preprocessing import view_family

        if view_family(data_config, model_config.image_size) == "imagenet":
            raise UsageError(
                f"Received: tta={tta!r} with the imagenet evaluation view, which is already a centre crop; "
                "use tta='flip'"
            )
    model = run.load_model(weights, model_config)
    ds = data_lib.make_dataset(
        data_config,
        split,
        image_size=model_config.image_size,
        batch_size=batch_size,
        training=False,
        drop_remainder=False,
        class_names=by_name,
        eval_view=model_config.eval_view,
    )

    @tf.function(autograph=False)
    def predict(images):
        if tta == "none":
            return tf.cast(model(images, training=False), tf.float32)
        views = test_time_views(tf, images, tta)
        probabilities = [tf.nn.softmax(tf.cast(model(view, training=False), tf.float32)) for view in views]
        # log of the mean probability: the softmax of these "logits" is that mean, so the loss,
        # top-1 and top-5 below read the averaged prediction.
        return tf.math.log(tf.add_n(probabilities) / len(views) + 1e-12)

    confusion = np.zeros((n, n), np.int64)
    loss_sum, top5_hits, count = 0.0, 0, 0
    for images, labels in ds:
        logits = predict(images)
        loss_sum += float(tf.reduce_sum(per_example_loss(tf, labels, logits, n, 0.0)))
        labels = labels.numpy()
        logits = logits.numpy()
        np.add.at(confusion, (labels, logits.argmax(-1)), 1)
        if n >= 5:
            top5_hits += int((np.argsort(-logits, axis=-1)[:, :5] == labels[:, None]).any(-1).sum())
        count += len(labels)
    if count == 0:
        raise UsageError(f"split {split!r} of {data_config.dataset!r} is empty")
    support = confusion.sum(1)
    result = dict(
        split=split,
        examples=count,
        loss=loss_sum / count,
        accuracy=float(np.trace(confusion) / count),
        top5_accuracy=top5_hits / count if n >= 5 else None,
        per_class_accuracy={
            name: (float(confusion[i, i] / support[i]) if support[i] else None) for i, name in enumerate(names)
        },
        confusion_matrix=confusion.tolist(),
        class_names=names,
        weights=weights,
        tta=tta,
    )
    if write:
        run.write_png(RunDir.CONFUSION, plots.confusion_matrix(confusion, names, split))
        run.write_json(run.eval_file(split).name, result)
    return result


def test_time_views(tf, images, tta: str) -> list:
    """The views of a float32 batch [b, S, S, 3] that `tta` averages over (see TTA_MODES)."""
    if tta == "flip":
        return [images, tf.reverse(images, axis=[2])]
    size = images.shape[1]
    if tta == "shifts":
        pad = 1
        offsets = [(1, 1), (0, 0), (2, 2)]  # the image itself, then up-left and down-right by one pixel
    else:
        pad = max(1, size // 8)
        offsets = [(0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad), (pad, pad)]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    crops = [padded[:, top : top + size, left : left + size, :] for top, left in offsets]
    return crops + [tf.reverse(crop, axis=[2]) for crop in crops]
