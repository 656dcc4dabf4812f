"""The `resnet-keras` command: a thin click layer over the Python API.

It parses options, builds configs, calls the library and turns its errors into one
line on stderr and an exit code: 2 for a user mistake, 1 for a failed run.
"""

from __future__ import annotations

import json
import os
import sys

import click

from resnet_keras import __version__, specs
from resnet_keras.errors import ResNetKerasError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal


class ResNetGroup(click.Group):
    """A click group whose errors are one line, never a traceback or a usage dump."""

    def main(self, args=None, prog_name=None, **extra):
        extra["standalone_mode"] = False
        try:
            result = super().main(args, prog_name, **extra)
        except click.ClickException as error:  # bad options: exit 2
            click.echo(f"Error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except ResNetKerasError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=ResNetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resnet-keras")
def cli():
    """Build, train, tune and export the ResNets of He et al. (2015, 2016) on TensorFlow and Keras 3."""


def _format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[title for _, title in columns]] + [[str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@cli.command()
@click.option("--depth", type=int, help="Only networks of this depth (any 6n+2 is a CIFAR net).")
@click.option("--family", type=click.Choice(specs.FAMILIES), help="Only this family; with --depth, forces it.")
@click.option("--variant", type=click.Choice(specs.VARIANTS), help="Only this variant.")
@click.option("--width", type=float, help="Width multiplier applied to every listed network.")
@click.option("--num-classes", type=int, help="Classifier outputs (default 10 for CIFAR, 1000 for ImageNet).")
@click.option("--image-size", type=int, help="Input height and width (default 32 for CIFAR, 224 for ImageNet).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def info(depth, family, variant, width, num_classes, image_size, as_json):
    """List presets with their parameters and multiply-adds, counted on the built models."""
    from resnet_keras.config import ModelConfig

    overrides = {key: value for key, value in dict(width=width, num_classes=num_classes,
                                                  image_size=image_size).items() if value is not None}
    wanted = dict(depth=depth, family=family, variant=variant)
    names = [name for name, preset in specs.PRESETS.items()
             if all(value is None or preset[key] == value for key, value in wanted.items())]
    if names:
        configs = [ModelConfig.preset(name, **overrides) for name in names]
    elif depth is not None:  # any valid depth, e.g. a CIFAR net with n = 4 (26 layers)
        configs = [ModelConfig(depth=depth, family=family, variant=variant or "v1", **overrides)]
    else:
        raise click.UsageError(f"no preset has family={family} and variant={variant}.")
    from resnet_keras.models import describe  # imports TensorFlow: only once the options are valid

    rows = [describe(config) for config in configs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["blocks_per_stage"] = "/".join(map(str, row["blocks_per_stage"]))
        row["trainable_params"] = f"{row['trainable_params']:,}"
        row["total_params"] = f"{row['total_params']:,}"
        row["multiply_adds"] = f"{row['multiply_adds'] / 1e9:.3g}G"
    click.echo(_format_table(rows, [
        ("name", "name"), ("family", "family"), ("variant", "variant"), ("block", "block"),
        ("blocks_per_stage", "blocks"), ("shortcut", "shortcut"), ("image_size", "input"),
        ("trainable_params", "trainable params"), ("total_params", "total params"),
        ("multiply_adds", "mult-adds"),
    ]))



# ----------------------------------------------------------------------------- train / evaluate

_MODEL_KEYS = ("depth", "preset", "family", "variant", "width", "shortcut", "image_size")
_DATA_KEYS = ("dataset", "data_dir", "val_split", "validation_fraction", "deterministic", "skip_corrupt")
_TRAIN_KEYS = ("recipe", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "warmup_epochs",
               "strategy", "mixed_precision", "xla", "seed",
               "init_from", "freeze", "bn_policy", "backbone_lr_multiplier", "head_epochs")


def _read_config_file(path: str) -> dict:
    """A YAML or JSON mapping of option names (dashes or underscores) to values."""
    import yaml  # YAML is a superset of JSON

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as error:
        raise click.BadParameter(f"cannot read {path}: {error}", param_hint="--config")
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values", param_hint="--config")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _merge_config_file(ctx: click.Context, params: dict, allowed: tuple[str, ...]) -> dict:
    """Values from --config fill every option not given on the command line."""
    if not params.get("config"):
        return params
    from click.core import ParameterSource

    values = _read_config_file(params["config"])
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise click.BadParameter(f"unknown keys {unknown}; expected keys among {sorted(allowed)}",
                                 param_hint="--config")
    merged = dict(params)
    for key, value in values.items():
        if ctx.get_parameter_source(key) != ParameterSource.COMMANDLINE:
            merged[key] = value
    return merged


@cli.command()
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file of option values; options on the command line override it.")
@click.option("--depth", type=int, help="Network depth: 18/34/50/101/152 (ImageNet) or 6n+2 (CIFAR).")
@click.option("--preset", help="A named preset (e.g. resnet20, resnet50_v2) instead of --depth.")
@click.option("--family", type=click.Choice(specs.FAMILIES), help="Network family (default from the depth).")
@click.option("--variant", type=click.Choice(specs.VARIANTS), help="v1 (paper), v1.5 or v2 (pre-activation).")
@click.option("--width", type=float, help="Width multiplier on every stage's channels.")
@click.option("--shortcut", type=click.Choice(["A", "B"]), help="A: zero-padded identity; B: projection.")
@click.option("--image-size", type=int, help="Input size (default: the family's, 32 for digits).")
@click.option("--dataset", default="cifar10", show_default=True,
              help="A TFDS name, 'digits', 'synthetic' or 'folder'.")
@click.option("--data-dir", help="Dataset root: the image folder, or the TFDS data directory.")
@click.option("--val-split", help="Validation split (default: the dataset's, else held out of train).")
@click.option("--validation-fraction", type=float, default=0.1, show_default=True,
              help="Fraction of train held out when the dataset has no validation split.")
@click.option("--recipe", type=click.Choice(["paper", "short"]), default="paper", show_default=True,
              help="paper: step schedule (sec. 4.2); short: warm-up + cosine, Nesterov, label smoothing.")
@click.option("--epochs", type=int, help="Epochs (default 182 for paper, 30 for short).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch size.")
@click.option("--lr", type=float, help="Peak learning rate (default 0.1 x batch / 128).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True, help="L2 weight decay.")
@click.option("--label-smoothing", type=float, help="Label smoothing (default 0 paper, 0.1 short).")
@click.option("--warmup-epochs", type=float, help="Linear warm-up epochs (default 0 paper, <=5 short).")
@click.option("--strategy", type=click.Choice(["auto", "one-device", "mirrored"]), default="auto",
              show_default=True, help="tf.distribute strategy.")
@click.option("--mixed-precision", type=click.Choice(["none", "float16", "bfloat16"]), default="none",
              show_default=True, help="Mixed-precision compute dtype.")
@click.option("--xla/--no-xla", default=False, show_default=True, help="Compile the train step with XLA.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (weights and data order).")
@click.option("--deterministic", is_flag=True, help="Deterministic data order.")
@click.option("--skip-corrupt", is_flag=True, help="Skip image files that cannot be decoded.")
@click.option("--model-dir", type=click.Path(file_okay=False),
              help="Run directory (default runs/<model>-<dataset>); rerunning resumes it.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run in --model-dir and start fresh.")
@click.option("--init-from", help="Pretrained start: 'imagenet' (for --depth/--variant), a keras.applications "
              "name (resnet50, resnet50v2, ...), a weights .h5 file, one of our .keras files or run directories.")
@click.option("--freeze", type=click.Choice(["none", "stem", "stages-2-3", "backbone"]), default="none",
              show_default=True, help="Layers that stay fixed while fine-tuning (--init-from).")
@click.option("--bn-policy", type=click.Choice(["train", "frozen"]), default="train", show_default=True,
              help="frozen: every BatchNorm in inference mode with the pretrained statistics.")
@click.option("--backbone-lr-multiplier", type=float, default=1.0, show_default=True,
              help="The backbone learns at this fraction of --lr; the new head at --lr.")
@click.option("--head-epochs", type=int, default=0, show_default=True,
              help="Train only the new head for this many epochs, then unfreeze per --freeze.")
@click.pass_context
def train(ctx, **params):
    """Train a ResNet with checkpoints, resume, TensorBoard logs, history and curves."""
    allowed = _MODEL_KEYS + _DATA_KEYS + _TRAIN_KEYS + ("model_dir", "overwrite")
    p = _merge_config_file(ctx, params, allowed)
    from resnet_keras.config import ModelConfig
    from resnet_keras.data import DataConfig

    data_config = DataConfig(dataset=p["dataset"], data_dir=p["data_dir"], val_split=p["val_split"],
                             validation_fraction=p["validation_fraction"], seed=p["seed"],
                             deterministic=bool(p["deterministic"]), skip_corrupt=bool(p["skip_corrupt"]))
    model_overrides = {key: p[key] for key in ("family", "variant", "width", "shortcut", "image_size")
                       if p[key] is not None}
    if p["image_size"] is None and p["dataset"] == "digits":
        model_overrides["image_size"] = 32  # 8x8 digits upsampled; 224 would only cost time
    if p["preset"] and p["depth"] is not None:
        raise click.UsageError("give --depth or --preset, not both.")
    # Validate the model options before touching any data (which may be slow).
    probe = dict(model_overrides, num_classes=1)
    ModelConfig.preset(p["preset"], **probe) if p["preset"] else ModelConfig(depth=p["depth"] or 20, **probe)
    from resnet_keras.data import describe
    from resnet_keras.train import TrainConfig, train as run_training

    train_config = TrainConfig(recipe=p["recipe"], epochs=p["epochs"], batch_size=p["batch_size"],
                               learning_rate=p["lr"], weight_decay=p["weight_decay"],
                               label_smoothing=p["label_smoothing"], warmup_epochs=p["warmup_epochs"],
                               strategy=p["strategy"], mixed_precision=p["mixed_precision"], xla=bool(p["xla"]),
                               seed=p["seed"], **_finetune_options(p))
    info = describe(data_config)  # the classifier's outputs come from the dataset
    overrides = dict(model_overrides, num_classes=info.num_classes)
    if train_config.init_from:  # issue 8: the architecture is the pretrained source's
        model_config = _finetune_model_config(p, train_config.init_from, info.num_classes)
    else:
        model_config = (ModelConfig.preset(p["preset"], **overrides) if p["preset"]
                        else ModelConfig(depth=p["depth"] or 20, **overrides))
    model_dir = p["model_dir"] or os.path.join("runs", f"{model_config.name}-{p['dataset'].replace('/', '_')}")
    run_training(model_config, data_config, train_config, model_dir, overwrite=bool(p["overwrite"]),
                 log=click.echo)


@cli.command()
@click.option("--model-dir", required=True, type=click.Path(file_okay=False), help="A training run directory.")
@click.option("--dataset", help="Dataset to evaluate on (default: the run's).")
@click.option("--data-dir", help="Dataset root (default: the run's).")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Batch size.")
@click.option("--weights", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="final: model.keras; best: the best val-accuracy weights.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def evaluate(model_dir, dataset, data_dir, split, batch_size, weights, as_json):
    """Evaluate a trained run: top-1/top-5, loss, per-class accuracy, confusion matrix (confusion.png)."""
    import dataclasses

    from resnet_keras.data import DataConfig
    from resnet_keras.train import evaluate as run_evaluation, load_run_config

    data_config = DataConfig.from_dict(load_run_config(model_dir)["data"])
    changes = {key: value for key, value in dict(dataset=dataset, data_dir=data_dir).items() if value is not None}
    if changes:
        data_config = dataclasses.replace(data_config, **changes)
    result = run_evaluation(model_dir, data_config, split, batch_size=batch_size, weights=weights)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    top5 = f", top-5 {result['top5_accuracy']:.4f}" if result["top5_accuracy"] is not None else ""
    click.echo(f"{split}: {result['examples']} examples, top-1 {result['accuracy']:.4f}{top5}, loss {result['loss']:.4f}")
    for name, accuracy in result["per_class_accuracy"].items():
        click.echo(f"  {name}: {'-' if accuracy is None else f'{accuracy:.4f}'}")


# ----------------------------------------------------------------------------- pretrained weights (issue 8)


def _finetune_options(p: dict) -> dict:
    options = {key: p[key] for key in ("freeze", "bn_policy", "backbone_lr_multiplier", "head_epochs")}
    if p.get("init_from"):
        from resnet_keras.finetune import normalize_source

        options["init_from"] = normalize_source(str(p["init_from"]))
    return options


def _finetune_model_config(p: dict, init_from: str, num_classes: int):
    """The source's architecture with the dataset's classes; architecture flags must agree with it."""
    from resnet_keras import finetune

    wanted = dict(specs.PRESETS[p["preset"]]) if p["preset"] else {}
    wanted.update({key: p[key] for key in ("depth", "family", "variant", "width", "shortcut") if p[key] is not None})
    config = finetune.model_config_for(init_from, num_classes=num_classes, image_size=p["image_size"],
                                       depth=wanted.get("depth"), variant=wanted.get("variant"))
    differing = [f"--{key.replace('_', '-')} {value} (source: {getattr(config, key)})"
                 for key, value in wanted.items() if getattr(config, key) != value]
    if differing:
        raise click.UsageError(f"--init-from {p['init_from']} is {config.name}; it differs in {', '.join(differing)}. "
                               "Leave the architecture options out to use the source's.")
    return config


@cli.command()
@click.argument("source")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="The .keras file to write.")
@click.option("--weights", "weights_file", help="A keras.applications weights file for SOURCE's architecture "
              "(default: the official ImageNet weights, from Keras' cache or downloaded).")
@click.option("--image-size", type=int, default=224, show_default=True, help="Input height and width.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
def convert(source, output, weights_file, image_size, overwrite):
    """Write keras.applications ResNet weights as our model (raw RGB 0-255 in, logits out).

    SOURCE is a keras.applications name (resnet50, resnet101, resnet152, resnet50v2, resnet101v2,
    resnet152v2) or a weights .h5 file of one (its architecture is read from the file).
    """
    from resnet_keras import weights

    if weights_file:
        weights.convert(weights_file, output, app=weights.check_app(source), image_size=image_size,
                        overwrite=overwrite, log=click.echo)
    else:
        weights.convert(source, output, image_size=image_size, overwrite=overwrite, log=click.echo)


@cli.command("export-features")
@click.argument("source")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="The SavedModel folder to write.")
@click.option("--image-size", type=int, help="Input size (default: the source's; 224 for keras.applications).")
@click.option("--depth", type=int, help="With SOURCE 'imagenet': the depth (50, 101, 152).")
@click.option("--variant", type=click.Choice(["v1", "v2"]), help="With SOURCE 'imagenet': v1 or v2.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output folder.")
def export_features(source, output, image_size, depth, variant, overwrite):
    """Export a feature extractor: SavedModel with `embedding` and per-stage `stage_features` signatures.

    SOURCE is one of our run directories or .keras files, a keras.applications name or weights
    file, or 'imagenet' with --depth/--variant.
    """
    from resnet_keras.features import export_features as run_export

    run_export(source, output, image_size=image_size, depth=depth, variant=variant, overwrite=overwrite,
               log=click.echo)


def main():  # console-script entry point
    cli()


if __name__ == "__main__":
    main()
