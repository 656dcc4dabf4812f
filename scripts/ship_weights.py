"""Writes a run's weights into the package as an installed weight set, with its card, after scoring them.

    python scripts/ship_weights.py runs/paper-resnet20 --data-dir /tmp/c10/cifar10 --tag cifar10

The weights are the run's final model (model.keras) when it has finished, else its latest checkpoint
(`--checkpoint latest`, for a run still in progress: the card says at which epoch and step).
`--checkpoint best` ships the best-by-validation weights only when the final ones are gone: they were
chosen on the images they are scored on, so the card marks the score as selected on them
("selected_on_val") and gives the last epoch's validation accuracy beside it.
The held-out split is the run's own (its data config, with `--data-dir` where the images are now).
Prints the registry line's accuracies (resnet_keras/pretrained/registry.py) and writes
resnet_keras/pretrained/weights/resnet<depth>-<tag>.{weights.h5,json}.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", required=True, help="where the run's image folder is now")
    parser.add_argument("--tag", required=True, help="the weight set's tag, e.g. cifar10")
    parser.add_argument("--checkpoint", choices=("final", "latest", "best"), default="final")
    parser.add_argument("--command", help="the command that trained the run (default: the registry's)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from resnet_keras.data.pipeline import make_dataset
    from resnet_keras.pretrained import registry, shipped
    from resnet_keras.runs.rundir import RunDir
    from resnet_keras.zoo.models import build_model

    run = RunDir(args.run_dir)
    if not run.is_run():
        sys.exit(f"{args.run_dir} is not a run directory")
    model_config, data_config = run.model_config(), run.data_config()
    data_config = dataclasses.replace(data_config, data_dir=args.data_dir)
    rows = list(csv.DictReader(open(run.file(RunDir.HISTORY), encoding="utf-8")))
    model = build_model(model_config)
    if args.checkpoint == "final":
        if not run.file(RunDir.FINAL_MODEL).is_file():
            sys.exit(f"{args.run_dir} has no {RunDir.FINAL_MODEL} (unfinished?); pass --checkpoint latest")
        final = tf.keras.models.load_model(str(run.file(RunDir.FINAL_MODEL)), compile=False)
        model.set_weights(final.get_weights())
        where = {"weights": "the final model", "epochs_done": len(rows)}
    elif args.checkpoint == "best":
        best_file = run.file(RunDir.BEST_WEIGHTS)
        if not best_file.is_file():
            sys.exit(f"{args.run_dir} has no {RunDir.BEST_WEIGHTS}")
        model.load_weights(str(best_file))
        best = max(rows, key=lambda row: float(row["val_accuracy"]))
        where = {
            "weights": f"the best by validation accuracy (epoch {best['epoch']} of {len(rows)})",
            "epoch": int(best["epoch"]),
            "epochs_done": len(rows),
            "selected_on_val": True,
            "last_epoch_val_top1": round(100 * float(rows[-1]["val_accuracy"]), 2),
        }
    else:
        path = run.latest_checkpoint()
        if path is None:
            sys.exit(f"{args.run_dir} has no checkpoint")
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
        step = int(tf.train.load_variable(path, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))
        epochs = int(tf.train.load_variable(path, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))
        where = {"weights": f"checkpoint {Path(path).name}", "step": step, "epochs_done": epochs}

    data = make_dataset(data_config, "val", image_size=model_config.image_size, batch_size=500, training=False)
    correct1 = correct5 = total = 0
    for images, labels in data:
        logits = model(images, training=False).numpy()
        top5 = np.argsort(-logits, axis=1)[:, :5]
        correct1 += int((top5[:, 0] == labels.numpy()).sum())
        correct5 += int((top5 == labels.numpy()[:, None]).any(axis=1).sum())
        total += len(labels)
    top1, top5 = 100 * correct1 / total, 100 * correct5 / total

    shipped.DIRECTORY.mkdir(parents=True, exist_ok=True)
    stem = f"resnet{model_config.depth}-{args.tag}"
    weights = shipped.DIRECTORY / f"{stem}{shipped.WEIGHTS_SUFFIX}"
    model.save_weights(str(weights))
    train = run.read_configs()["train"]
    name = f"{registry.OURS}:resnet{model_config.depth}.{args.tag}"
    card = {
        "name": name,
        "model": model_config.to_dict(),
        "labels": list(run.class_names(model_config.num_classes)),
        "sha256": shipped.sha256(weights),
        "val": {
            "top1": round(top1, 2),
            "top5": round(top5, 2),
            "correct": correct1,
            "images": total,
            "split": {
                "dataset": data_config.dataset,
                "train_split": data_config.train_split,
                "validation_fraction": data_config.validation_fraction,
            },
        },
        "trained": {
            **where,
            "epochs": train["epochs"],
            "recipe": train["recipe"],
            "batch_size": train["batch_size"],
            "mixed_precision": train["mixed_precision"],
            "command": args.command or getattr(registry.REGISTRY.get(name), "source", None),
        },
    }
    weights.with_name(f"{stem}{shipped.CARD_SUFFIX}").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"weights": str(weights), "bytes": weights.stat().st_size, **card["val"], **where}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
