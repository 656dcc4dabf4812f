"""`info` (presets with their sizes, and the known weight sets) and `convert` (pretrained weights
as our model)."""

from __future__ import annotations

import json

import click

from resnet_keras.cli.options import NonEmptyPath, option
from resnet_keras.cli.options import format_table as _format_table
from resnet_keras.config import specs


@click.command()
@option("depth", help="Only networks of this depth (any 6n+2 is a CIFAR net).")
@option("family", help="Only this family; with --depth, forces it.")
@option("variant", help="Only this variant.")
@option("width", help="Width multiplier applied to every listed network.")
@option("num_classes")
@option("image_size")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--weights", "list_weights", is_flag=True, help="List the known pretrained weight sets instead.")
def info(depth, family, variant, width, num_classes, image_size, as_json, list_weights):
    """List presets with their parameters and multiply-adds, counted on the built models."""
    if list_weights:
        return _print_weight_sets(as_json)
    from resnet_keras.config.schema import ModelConfig

    overrides = {
        key: value
        for key, value in dict(width=width, num_classes=num_classes, image_size=image_size).items()
        if value is not None
    }
    wanted = dict(depth=depth, family=family, variant=variant)
    names = [
        name
        for name, preset in specs.PRESETS.items()
        if all(value is None or preset[key] == value for key, value in wanted.items())
    ]
    if names:
        configs = [ModelConfig.preset(name, **overrides) for name in names]
    elif depth is not None:  # any valid depth, e.g. a CIFAR net with n = 4 (26 layers)
        configs = [ModelConfig(depth=depth, family=family, variant=variant or "v1", **overrides)]
    else:
        raise click.UsageError(f"no preset has family={family} and variant={variant}.")
    from resnet_keras.zoo.models import describe  # imports TensorFlow: only once the options are valid

    rows = [describe(config) for config in configs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["blocks_per_stage"] = "/".join(map(str, row["blocks_per_stage"]))
        row["trainable_params"] = f"{row['trainable_params']:,}"
        row["total_params"] = f"{row['total_params']:,}"
        row["multiply_adds"] = f"{row['multiply_adds'] / 1e9:.3g}G"
    click.echo(
        _format_table(
            rows,
            [
                ("name", "name"),
                ("family", "family"),
                ("variant", "variant"),
                ("block", "block"),
                ("blocks_per_stage", "blocks"),
                ("shortcut", "shortcut"),
                ("image_size", "input"),
                ("trainable_params", "trainable params"),
                ("total_params", "total params"),
                ("multiply_adds", "mult-adds"),
            ],
        )
    )


def _print_weight_sets(as_json: bool) -> None:
    from resnet_keras.pretrained.registry import rows

    if as_json:
        click.echo(json.dumps(rows(), indent=2))
        return
    table = []
    for row in rows():
        digits = 3 if ":" in row["name"] else 1  # as published: torchvision and timm 3 decimals, keras.io 1
        accuracy = {key: f"{row[key]:.{digits}f}" for key in ("top1", "top5")}
        table.append(dict(row, **accuracy, note=row["note"] or ("default" * row["default"])))
    columns = [("name", "weights"), ("architecture", "ours"), ("top1", "top-1 %"), ("top5", "top-5 %")]
    click.echo(_format_table(table, columns + [("eval", "evaluated at"), ("note", "note")]))


@click.command()
@click.argument("source")
@click.option("--output", required=True, type=NonEmptyPath(dir_okay=False), help="The .keras file to write.")
@click.option(
    "--weights",
    "weights_file",
    help="A keras.applications weights file for SOURCE's architecture "
    "(default: the official ImageNet weights, from Keras' cache or downloaded).",
)
@click.option("--image-size", type=int, default=224, show_default=True, help="Input height and width.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
def convert(source, output, weights_file, image_size, overwrite):
    """Write pretrained ResNet weights (keras.applications, torchvision, timm, keras-hub) as our model.

    SOURCE is a keras.applications name (resnet50, resnet101, resnet152, resnet50v2, resnet101v2,
    resnet152v2) or a weights .h5 file of one (its architecture is read from the file), a
    torchvision/timm/keras-hub weight set (torchvision:resnet50.IMAGENET1K_V2, timm:resnet50.a1_in1k,
    keras-hub:resnet_50_imagenet; see `info --weights`), a PyTorch .pth / .safetensors state dict of a
    torchvision/timm ResNet, a keras-hub preset folder, or one of our run directories or .keras files.
    """
    from resnet_keras.pretrained import resolve

    resolve.convert(
        source, output, weights_file=weights_file, image_size=image_size, overwrite=overwrite, log=click.echo
    )
