"""`train` and `evaluate`."""

from __future__ import annotations

import json
import os

import click

from resnet_keras.cli.options import (
    ConfigCommand,
    NonEmptyPath,
    check_depth_or_preset,
    group,
    option,
    options,
    resolve_precision,
    run_weights_option,
)
from resnet_keras.config import specs
from resnet_keras.config.options import GROUPS, fields, model_config
from resnet_keras.training.evaluate import TTA_MODES

# Where the run goes and how it is kept; train's own.
_run_options = options(
    click.option(
        "--model-dir",
        type=NonEmptyPath(file_okay=False),
        help="Run directory (default runs/<model>-<dataset>); rerunning resumes it.",
    ),
    click.option("--overwrite", is_flag=True, help="Delete an existing run in --model-dir and start fresh."),
    "label_offset",
    click.option(
        "--checkpoint-every",
        help="Also checkpoint within epochs: every N steps (500) or a time (90s, 10m, 1h). "
        "SIGTERM always saves at the next step and exits 143; rerunning resumes at that step.",
    ),
    click.option(
        "--steps-per-loop",
        type=click.IntRange(min=1),
        default=None,
        help="Steps per call of the compiled step, between host reads of the loss (default: 1 on a CPU, "
        "50 with GPUs, which would idle during a read per step).",
    ),
    click.option(
        "--export",
        "export",
        is_flag=True,
        help="After training, export a SavedModel to saved_models/<model>/<next version>/.",
    ),
)


@click.command(
    cls=ConfigCommand, config_help="YAML or JSON file of option values; options on the command line override it."
)
@group("model", image_size=dict(help="Input size (default: the family's, 32 for digits)."))
@group("arch")
@group("source")
@options("recipe", "epochs", "batch_size", "lr", "low_lr_start", "weight_decay")
@group("schedule")
@group("components")
@option("strategy")
@group("runtime")
@option("seed")
@group("data")
@_run_options
@group("finetune")
@click.pass_context
def train(ctx, **p):
    """Train a ResNet with checkpoints, resume, TensorBoard logs, history and curves."""
    from resnet_keras.data.pipeline import DataConfig

    data_config = DataConfig(**fields("data", p))
    # 8x8 digits upsampled; 224 would only cost time
    digits = dict(image_size=32) if p["image_size"] is None and p["dataset"] == "digits" else {}
    check_depth_or_preset(p)
    probe = model_config(p, num_classes=1, **digits)  # the model options, checked before touching any data
    from resnet_keras.data.pipeline import describe
    from resnet_keras.training.train import train as run_training

    if p["strategy"] == "multi-worker":  # collectives must be configured before any TensorFlow op
        from resnet_keras.training.distribute import make_strategy

        make_strategy("multi-worker")

    p["mixed_precision"] = resolve_precision(p["mixed_precision"])
    train_config = _train_config(p, probe.family)
    info = describe(data_config)  # the classifier's outputs come from the dataset
    if train_config.init_from:  # fine-tuning: the architecture is the pretrained source's
        model = _finetune_model_config(p, train_config.init_from, info.num_classes)
    else:
        model = model_config(p, num_classes=info.num_classes, **digits)
    if model.family != train_config.family:  # e.g. --init-from imagenet without --depth
        train_config = _train_config(p, model.family)
    model_dir = p["model_dir"]
    if model_dir is None:
        model_dir = os.path.join("runs", f"{model.name}-{p['dataset'].replace('/', '_')}")
    run_training(
        model,
        data_config,
        train_config,
        model_dir,
        overwrite=bool(p["overwrite"]),
        log=click.echo,
        checkpoint_every=p["checkpoint_every"],
        steps_per_loop=p.get("steps_per_loop"),
    )
    if p.get("export"):
        from resnet_keras.serving.export import export_saved_model

        export_saved_model(model_dir, log=click.echo)


def _train_config(p: dict, family: str):
    """The paper recipe's defaults depend on the model's family."""
    from resnet_keras.training.train import TrainConfig

    return TrainConfig(family=family, **fields("train", p, exclude=GROUPS["finetune"]), **_finetune_options(p))


def _finetune_options(p: dict) -> dict:
    options = {key: p[key] for key in ("freeze", "bn_policy", "backbone_lr_multiplier", "head_epochs")}
    if p.get("init_from"):
        from resnet_keras.pretrained.resolve import normalize

        options["init_from"] = normalize(str(p["init_from"]))
    return options


def _finetune_model_config(p: dict, init_from: str, num_classes: int):
    """The source's architecture with the dataset's classes; architecture flags must agree with it."""
    from resnet_keras.pretrained import finetune

    wanted = dict(specs.PRESETS[p["preset"]]) if p["preset"] else {}
    wanted.update({key: p[key] for key in ("depth", "family", "variant", "width", "shortcut") if p[key] is not None})
    config = finetune.model_config_for(
        init_from,
        num_classes=num_classes,
        image_size=p["image_size"],
        depth=wanted.get("depth"),
        variant=wanted.get("variant"),
    )
    differing = [
        f"--{key.replace('_', '-')} {value} (source: {getattr(config, key)})"
        for key, value in wanted.items()
        if getattr(config, key) != value
    ]
    if differing:
        raise click.UsageError(
            f"--init-from {p['init_from']} is {config.name}; it differs in {', '.join(differing)}. "
            "Leave the architecture options out to use the source's."
        )
    return config


@click.command()
@click.option("--model-dir", required=True, type=NonEmptyPath(file_okay=False), help="A training run directory.")
@click.option("--dataset", help="Dataset to evaluate on (default: the run's).")
@click.option("--data-dir", help="Dataset root (default: the run's).")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Batch size.")
@run_weights_option
@click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    default="none",
    show_default=True,
    help="Test-time augmentation: average over the image and its mirror (flip), those and two one-pixel "
    "shifts (shifts, six views) or ten crops (crops).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def evaluate(model_dir, dataset, data_dir, split, batch_size, weights, tta, as_json):
    """Evaluate a trained run: top-1/top-5, loss, per-class accuracy, confusion matrix (confusion.png)."""
    import dataclasses

    from resnet_keras.runs.rundir import RunDir
    from resnet_keras.training.evaluate import evaluate as run_evaluation

    data_config = RunDir(model_dir).data_config()
    changes = {key: value for key, value in dict(dataset=dataset, data_dir=data_dir).items() if value is not None}
    if changes:
        data_config = dataclasses.replace(data_config, **changes)
    result = run_evaluation(model_dir, data_config, split, batch_size=batch_size, weights=weights, tta=tta)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    top5 = f", top-5 {result['top5_accuracy']:.4f}" if result["top5_accuracy"] is not None else ""
    click.echo(
        f"{split}: {result['examples']} examples, top-1 {result['accuracy']:.4f}{top5}, loss {result['loss']:.4f}"
    )
    for name, accuracy in result["per_class_accuracy"].items():
        click.echo(f"  {name}: {'-' if accuracy is None else f'{accuracy:.4f}'}")
