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


def main():  # console-script entry point
    cli()


if __name__ == "__main__":
    main()
