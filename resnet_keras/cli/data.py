"""`prepare`: an image folder or a TFDS dataset as sharded TFRecords."""

from __future__ import annotations

import click

from resnet_keras.cli.options import NonEmptyPath, option
from resnet_keras.config.options import fields


@click.command()
@option("dataset", default="folder", help="'folder' or a TFDS name.")
@option("data_dir", help="The image folder (<split>/<class>/<image> or <class>/<image>), or the TFDS data dir.")
@click.option(
    "--output", required=True, type=NonEmptyPath(file_okay=False), help="A new (or an interrupted) output folder."
)
@option("val_split")
@option("validation_fraction")
@click.option(
    "--images-per-shard", type=click.IntRange(min=1), default=1024, show_default=True, help="Examples per file."
)
@click.option("--processes", type=click.IntRange(min=1), help="Worker processes (default: the CPU count).")
@option("skip_corrupt", help="Skip images that do not decode (listed in the manifest).")
@option("seed", help="Seed of the order examples are written in.")
def prepare(**p):
    """Write an image folder or a TFDS dataset as sharded TFRecords (the ImageNet schema) for
    `train --dataset tfrecord --data-dir OUTPUT`; rerunning an interrupted prepare keeps its shards."""
    from resnet_keras.config.schema import DataConfig
    from resnet_keras.data.prepare import prepare as run_prepare

    config = DataConfig(**fields("data", p))
    run_prepare(config, p["output"], images_per_shard=p["images_per_shard"], processes=p["processes"], log=click.echo)
