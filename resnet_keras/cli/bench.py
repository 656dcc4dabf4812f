"""`benchmark`: training and inference speed, the input pipeline and memory, next to Keras anchors."""

from __future__ import annotations

import json

import click

from resnet_keras.bench.benchmark import MODES as BENCHMARK_MODES
from resnet_keras.cli.options import NonEmptyPath, check_depth_or_preset, option, options, resolve_precision
from resnet_keras.config.options import model_config

# What is measured and how; benchmark's own.
_measure_options = options(
    click.option(
        "--data",
        default="synthetic",
        show_default=True,
        help="'synthetic', an image folder, or a TFDS name (prepared under --data-dir).",
    ),
    click.option("--data-dir", help="TFDS data directory for a TFDS --data."),
    click.option(
        "--mode",
        "modes",
        type=click.Choice(BENCHMARK_MODES),
        multiple=True,
        help="Measure only this (repeatable; default both).",
    ),
    click.option("--steps", type=int, default=10, show_default=True, help="Timed steps per measurement."),
    click.option(
        "--warmup", type=int, default=2, show_default=True, help="Untimed steps first (tracing, XLA compile)."
    ),
    click.option(
        "--pipeline-batches",
        type=int,
        default=50,
        show_default=True,
        help="Batches read when timing the input pipeline alone (real data only).",
    ),
    click.option(
        "--compare",
        is_flag=True,
        help="Also time keras.applications' ResNet (ImageNet family) or a plain Keras CIFAR ResNet, alternating.",
    ),
    click.option("--memory", is_flag=True, help="Peak resident memory of a training process (ours, TF alone, anchor)."),
    click.option(
        "--profile",
        "profile_dir",
        type=NonEmptyPath(file_okay=False),
        help="Write a TensorFlow profiler trace of 3 training steps here and print the top ops.",
    ),
    click.option(
        "--intra-op-threads",
        type=int,
        default=0,
        show_default=True,
        help="tf.config.threading intra-op threads (0: TensorFlow's default, one per core).",
    ),
    click.option(
        "--inter-op-threads",
        type=int,
        default=0,
        show_default=True,
        help="tf.config.threading inter-op threads (0: TensorFlow's default).",
    ),
    click.option(
        "--pipeline-only",
        is_flag=True,
        help="Time only the training input of --recipe (needs real --data): images per CPU-second, one JSON line.",
    ),
)


@click.command()
@options("depth", "preset", "family", "variant", "width", "image_size")
@option("num_classes", help="Classifier outputs with synthetic data (default: the family's).")
@option("batch_size", default=None, help="Global batch (default 128 up to 64 pixels, 16 above).")
@option("mixed_precision", "--precision", "precision")
@option("xla", help="Compile the steps with XLA (jit_compile).")
@_measure_options
@option("recipe", help="With --pipeline-only: whose training augmentation and training size to time.")
@option(
    "train_image_size",
    help="With --pipeline-only: the training crops' side (default: the recipe's share of --image-size).",
)
@option("seed", help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per measurement, then a summary object.")
def benchmark(**p):
    """Training and inference images/s, input-pipeline speed and memory, next to Keras anchors.

    With --pipeline-only: images per CPU-second of a recipe's training input alone (decode, crop,
    flip and its batch augmentations), printed as one JSON line; the model defaults to ResNet-50.
    """
    check_depth_or_preset(p)
    _check_pipeline_only(p)
    for name in ("intra_op_threads", "inter_op_threads"):
        if p[name] < 0:
            raise click.BadParameter(
                f"{p[name]} is negative; expected 0 (default) or a thread count",
                param_hint="--" + name.replace("_", "-"),
            )
    # --pipeline-only times the recipes' ImageNet network: the "imagenet" view
    model = model_config(p, depth=50 if p["pipeline_only"] else 20)
    from resnet_keras.bench.benchmark import BenchmarkConfig

    bench = BenchmarkConfig(
        batch_size=p["batch_size"],
        precision=resolve_precision(p["precision"]),
        xla=p["xla"],
        data=p["data"],
        data_dir=p["data_dir"],
        steps=p["steps"],
        warmup=p["warmup"],
        modes=p["modes"] or ("train", "infer"),
        compare=p["compare"],
        memory=p["memory"],
        pipeline_batches=p["pipeline_batches"],
        seed=p["seed"],
    )
    _set_threads(p["intra_op_threads"], p["inter_op_threads"])
    if p["pipeline_only"]:
        from resnet_keras.bench.benchmark import pipeline_only as time_pipeline

        timed = time_pipeline(model, bench, recipe=p["recipe"], train_image_size=p["train_image_size"])
        click.echo(json.dumps(timed))
        return
    from resnet_keras.bench.benchmark import format_report, run

    emit = (lambda row: click.echo(json.dumps(row))) if p["as_json"] else (lambda row: None)
    summary = run(model, bench, emit=emit, profile_dir=p["profile_dir"])
    click.echo(json.dumps(summary) if p["as_json"] else format_report(summary))


def _check_pipeline_only(p: dict) -> None:
    if p["pipeline_only"] and p["data"] == "synthetic":
        raise click.UsageError("--pipeline-only reads real images: give --data an image folder or a TFDS name.")
    if not p["pipeline_only"] and (p["recipe"] != "paper" or p["train_image_size"] is not None):
        raise click.UsageError("--recipe and --train-image-size apply to --pipeline-only.")


def _set_threads(intra_op_threads: int, inter_op_threads: int) -> None:
    import tensorflow as tf  # only once the options are valid

    try:  # before the first op; TensorFlow refuses once its runtime has started
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError as error:
        raise click.UsageError(f"cannot set thread counts: {error}") from None
