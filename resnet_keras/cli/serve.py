"""`export` (SavedModel, TFLite, ONNX), `predict` and `export-features`."""

from __future__ import annotations

import json

import click

from resnet_keras.cli.options import NonEmptyPath, run_weights_option
from resnet_keras.serving.export import EXPORT_FORMATS, QUANTIZATIONS


@click.command()
@click.option("--model-dir", required=True, type=NonEmptyPath(file_okay=False), help="A training run directory.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(EXPORT_FORMATS)),
    default="saved_model",
    show_default=True,
    help="; ".join(f"{f.name}: {f.description}" for f in EXPORT_FORMATS.values()) + ".",
)
@click.option(
    "--base-dir",
    default="saved_models",
    show_default=True,
    help="Export root: SavedModels go to <base-dir>/<model>/<version>/, TFLite to <base-dir>/tflite/, ONNX to onnx/.",
)
@click.option("--version", "version", type=click.IntRange(min=1), help="SavedModel version (default: next integer).")
@click.option("--output", type=NonEmptyPath(dir_okay=False), help="TFLite/ONNX file path (default under --base-dir).")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default="none",
    show_default=True,
    help="TFLite weights/activations: float32, float16 weights, int8 weights, full int8 (ONNX: none or int8).",
)
@click.option(
    "--calibration-data", type=NonEmptyPath(), help="int8: folder of images (default: the run's train split)."
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="int8: images used for calibration.",
)
@click.option(
    "--eval-samples", type=click.IntRange(min=1), help="TFLite: validation images for the check (default all)."
)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="TFLite: refuse when accuracy falls more than this many points below the Keras model.",
)
@run_weights_option
@click.option("--overwrite", is_flag=True, help="Replace an existing version or file.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export(model_dir, fmt, weights, overwrite, as_json, **options):
    """Export a trained run: a versioned SavedModel for TF Serving, a (quantized) TFLite or an ONNX file."""
    ctx = click.get_current_context()
    chosen = EXPORT_FORMATS[fmt]
    options = {
        param.name: options[param.name] for param in ctx.command.params if param.name in options
    }  # in --help order
    given = [key for key in options if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE]
    foreign = [key for key in given if key not in chosen.options]
    if foreign:
        takers = [f.name for f in EXPORT_FORMATS.values() if foreign[0] in f.options]
        raise click.UsageError(f"--{foreign[0].replace('_', '-')} applies to --format {' or '.join(takers)}.")
    log = (lambda message: click.echo(message, err=True)) if as_json else click.echo
    report = chosen.run(
        model_dir,
        overwrite=overwrite,
        weights=weights,
        log=log,
        **{key: value for key, value in options.items() if key in chosen.options},
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))


@click.command()
@click.argument("model", type=NonEmptyPath())
@click.argument("images", nargs=-1, required=True, type=NonEmptyPath())
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one entry per image.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per graph call.")
@click.option(
    "--output", type=click.Path(dir_okay=False), help="Write the results to this .csv or .json file instead of stdout."
)
def predict(model, images, top_k, as_json, batch_size, output):
    """Top-k labels of IMAGES (files, folders or quoted glob patterns) from MODEL: a SavedModel
    (version folder or base path), a .tflite or an .onnx file, a run directory, or weights installed
    with the package (`cifar10`: our ResNet-20 trained on CIFAR-10, 32x32 images).

    Exit code 1 when some image could not be read (the others are still predicted).
    """
    from resnet_keras.serving.predict import predict as run_prediction
    from resnet_keras.serving.predict_io import check_output, expand_images, write_results

    check_output(output)
    images = expand_images(list(images))
    results = run_prediction(
        model, images, top_k, on_error=lambda line: click.echo(line, err=True), batch_size=batch_size
    )
    failed = sum("error" in result for result in results)
    if output:
        write_results(results, output)
        click.echo(f"Wrote {len(results) - failed} predictions ({failed} images failed) to {output}")
    elif as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for result in results:
            if "predictions" not in result:
                continue
            click.echo(result["image"])
            width = max(len(p["label"]) for p in result["predictions"])
            for p in result["predictions"]:
                click.echo(f"  {p['rank']}. {p['label'].ljust(width)}  {p['probability']:.4f}")
    return 1 if failed else 0


@click.command("export-features")
@click.argument("source")
@click.option("--output", required=True, type=NonEmptyPath(file_okay=False), help="The SavedModel folder to write.")
@click.option("--image-size", type=int, help="Input size (default: the source's; 224 for keras.applications).")
@click.option("--depth", type=int, help="With SOURCE 'imagenet' or a tag such as torchvision:IMAGENET1K_V2: the depth.")
@click.option("--variant", type=click.Choice(["v1", "v2"]), help="With SOURCE 'imagenet': v1 or v2.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output folder.")
def export_features(source, output, image_size, depth, variant, overwrite):
    """Export a feature extractor: SavedModel with `embedding` and per-stage `stage_features` signatures.

    SOURCE is any weight source `convert` takes (our runs and .keras files, keras.applications names
    and weights files, torchvision/timm/keras-hub weight sets and files), or 'imagenet' with
    --depth/--variant.
    """
    from resnet_keras.serving.features import export_features as run_export

    run_export(source, output, image_size=image_size, depth=depth, variant=variant, overwrite=overwrite, log=click.echo)
