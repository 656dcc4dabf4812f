"""The `resnet-keras` command: a thin click layer over the Python API.

It parses options, builds configs, calls the library and turns its errors into one
line on stderr and an exit code: 2 for a user mistake, 1 for a failed run.
"""

from __future__ import annotations

import errno
import json
import os
import sys

import click

from resnet_keras import __version__
from resnet_keras.bench.benchmark import MODES as BENCHMARK_MODES
from resnet_keras.config import recipes, specs
from resnet_keras.config.schema import (
    AUTO_AUGMENTS,
    BN_POLICIES,
    COMPONENT_FIELDS,
    FLIPS,
    FREEZE_POLICIES,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    SHORTCUTS,
    STEMS,
    STRATEGIES,
)
from resnet_keras.core.errors import ResNetKerasError
from resnet_keras.runs.rundir import WEIGHTS
from resnet_keras.serving.export import EXPORT_FORMATS, QUANTIZATIONS
from resnet_keras.training.evaluate import TTA_MODES
from resnet_keras.tune import space as tune_lib
from resnet_keras.tune.tuner import search as run_search

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal


class _Path(click.Path):
    """click.Path that refuses an empty value, which would silently mean a default folder."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; expected a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


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
            _error_line(error)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            if _PROCESS_EXIT_ON_INTERRUPT:  # the console script: skip TensorFlow's slow teardown
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            sys.exit(130)
        except OSError as error:  # the file system refused: a read-only folder, a file where a folder goes, a full disk
            where = f": {error.filename}" if error.filename else ""
            _error_line(f"{error.strerror or error}{where}")
            sys.exit(2 if error.errno in _USER_ERRNOS else 1)
        except MemoryError:
            _error_line("out of memory; use a smaller --batch-size or --image-size")
            sys.exit(1)
        except Exception as error:  # noqa: BLE001 - a bug or a library failure: one line, the traceback on request
            if os.environ.get(TRACEBACK_ENV):
                raise
            _error_line(f"{type(error).__name__}: {error} (set {TRACEBACK_ENV}=1 for the traceback)")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not ctx.resilient_parsing and not {"-h", "--help"} & set(rest):
            _import_tensorflow_quietly()  # every command needs it, its --help does not
        return name, command, rest


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 pointed at /dev/null.

    TensorFlow's C++ start-up lines ("oneDNN custom operations are on", CPU feature notes) are
    written before its logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot silence them; without
    this an error of ours would not be the only line on stderr.
    """
    if "tensorflow" in sys.modules:
        return
    fd = 2  # the process's own stderr, where C++ writes, whatever Python's sys.stderr is now
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stderr to protect
        import tensorflow  # noqa: F401

        return
    try:
        os.dup2(devnull, fd)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


TRACEBACK_ENV = "RESNET_KERAS_TRACEBACK"
# Set by main() (the console script) only: in-process callers such as tests get SystemExit instead.
_PROCESS_EXIT_ON_INTERRUPT = False
# errno values that mean the user pointed us at the wrong place (exit 2), not a failed run (exit 1).
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT}


def _error_line(message) -> None:
    """One line on stderr: messages from libraries may hold newlines."""
    click.echo("Error: " + " ".join(str(message).split())[:2000], err=True)


@click.group(cls=ResNetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resnet-keras")
def cli():
    """Build, train, tune and export the ResNets of He et al. (2015, 2016) on TensorFlow and Keras 3."""


def _format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[title for _, title in columns]] + [[str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in cells
    ]
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


# ----------------------------------------------------------------------------- train / evaluate

_MODEL_KEYS = ("depth", "preset", "family", "variant", "width", "shortcut", "image_size")
_DATA_KEYS = ("dataset", "data_dir", "val_split", "validation_fraction", "deterministic", "skip_corrupt")
_TRAIN_KEYS = (
    "recipe",
    "low_lr_start",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "label_smoothing",
    "warmup_epochs",
    "strategy",
    "mixed_precision",
    "xla",
    "seed",
    "init_from",
    "freeze",
    "bn_policy",
    "backbone_lr_multiplier",
    "head_epochs",
)


def _resolve_precision(name: str) -> str:
    """--mixed-precision/--precision as a concrete choice; says on stderr what auto chose, and warns
    when bfloat16 is asked for on a CPU that only emulates it."""
    from resnet_keras.core.precision import AUTO, resolve

    choice = resolve(name)
    if name == AUTO:
        click.echo(choice.note, err=True)
    if choice.warning:
        click.echo(f"Warning: {choice.warning}", err=True)
    return choice.name


def _options(*options):
    """One decorator applying click options in the order given (shared by train and tune)."""

    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func

    return apply


_run_weights_option = click.option(
    "--weights",
    type=click.Choice(WEIGHTS),
    default="final",
    show_default=True,
    help="final: model.keras; best: the best val-accuracy weights.",
)
_schedule_options = _options(
    click.option(
        "--label-smoothing",
        type=float,
        help="Label smoothing (default: the recipe's; "
        + recipes.default_help("label_smoothing", per_family=False)
        + ").",
    ),
    click.option(
        "--warmup-epochs",
        type=float,
        help="Linear warm-up epochs (default: the recipe's; short: 0.5 under 10 epochs, else epochs/10 up to 5).",
    ),
)
_runtime_options = _options(
    click.option(
        "--mixed-precision",
        type=click.Choice(["auto", *PRECISIONS]),
        default="none",
        show_default=True,
        help="Mixed-precision compute dtype; auto: bfloat16 where the CPU computes it natively (AVX512_BF16, AMX).",
    ),
    click.option("--xla/--no-xla", default=False, show_default=True, help="Compile the train step with XLA."),
)
_source_options = _options(
    click.option(
        "--dataset",
        default="cifar10",
        show_default=True,
        help="A TFDS name, 'digits', 'synthetic', 'folder' or 'tfrecord' (shards from `prepare`).",
    ),
    click.option("--data-dir", help="Dataset root: the image folder, or the TFDS data directory."),
    click.option("--val-split", help="Validation split (default: the dataset's, else held out of train)."),
    click.option(
        "--validation-fraction",
        type=float,
        default=0.1,
        show_default=True,
        help="Fraction of train held out when the dataset has no validation split.",
    ),
)
_data_options = _options(
    click.option("--deterministic", is_flag=True, help="Deterministic data order."),
    click.option("--skip-corrupt", is_flag=True, help="Skip image files that cannot be decoded."),
)

# Architecture options beyond the paper's (ResNet-C/D, squeeze-and-excitation, stochastic depth).
_ARCH_KEYS = ("stem", "avg_down", "se_ratio", "drop_path")
_arch_options = _options(
    click.option(
        "--stem",
        type=click.Choice(STEMS),
        help="imagenet: 7x7/2 + max pool; small: 3x3/1 (CIFAR); deep: three 3x3 convs + max pool (ResNet-C/D).",
    ),
    click.option(
        "--avg-down/--no-avg-down",
        default=None,
        help="Average-pool before strided projection shortcuts (ResNet-D; needs --shortcut B).",
    ),
    click.option("--se-ratio", type=float, help="Squeeze-and-excitation on every block at this ratio (1/16 = 0.0625)."),
    click.option("--drop-path", type=float, help="Stochastic depth rate of the last block, linear from 0 (e.g. 0.05)."),
)
# Training components beyond the paper's; None keeps the recipe's value.
_component_options = _options(
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="Optimizer (default: the recipe's; sgd)."),
    click.option("--loss", type=click.Choice(LOSSES), help="softmax cross-entropy or per-class binary (bce)."),
    click.option("--clip-norm", type=float, help="Clip the gradient to this global norm (0: off)."),
    click.option("--ema-decay", type=float, help="Validate and save an EMA of the weights, e.g. 0.999 (0: off)."),
    click.option("--mixup", type=float, help="Mixup Beta(alpha, alpha), e.g. 0.2 (0: off)."),
    click.option("--cutmix", type=float, help="CutMix Beta(alpha, alpha), e.g. 1.0 (0: off)."),
    click.option("--random-erasing", type=float, help="Random erasing probability per image, e.g. 0.1."),
    click.option(
        "--auto-augment",
        type=click.Choice(AUTO_AUGMENTS),
        help="ta_wide: TrivialAugment Wide per image; rand_mM_mstdS: RandAugment (timm's rand-mM-mstdS-inc1).",
    ),
    click.option(
        "--flip",
        type=click.Choice(FLIPS),
        help="Training flips: random (a coin per image and epoch) or alternating (each image mirrored every "
        "other epoch; CIFAR view).",
    ),
    click.option(
        "--train-image-size",
        type=int,
        help="Train on crops of this size, validate and export at --image-size (FixRes; default: the recipe's "
        "share of it, torchvision 176/224, rsb_a3 160/224, else the image size).",
    ),
)


def _component_values(p: dict) -> dict:
    """The training-component options given (on the command line or in --config)."""
    return {key: p[key] for key in COMPONENT_FIELDS if p.get(key) is not None}


CONFIG_FILE_LIMIT = 1024 * 1024  # bytes; an option file is a few hundred


def _read_config_file(path: str) -> dict:
    """A YAML or JSON mapping of option names (dashes or underscores) to values.

    Anchors and aliases are refused: a few nested aliases expand to gigabytes ("billion laughs").
    """
    import yaml  # YAML is a superset of JSON

    def bad(reason: str):
        return click.BadParameter(f"cannot read {path}: {reason}", param_hint="--config")

    from resnet_keras.data.preprocessing import open_regular_file

    try:
        with open_regular_file(path) as handle:  # a FIFO would block for ever
            raw = handle.read(CONFIG_FILE_LIMIT + 1)
        if len(raw) > CONFIG_FILE_LIMIT:
            raise bad(f"larger than {CONFIG_FILE_LIMIT // 1024} KB; expected a short YAML or JSON file of options")
        text = raw.decode("utf-8")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise bad("YAML aliases (*name) are not accepted in option files; write the values out")
        data = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: not UTF-8, or not a regular file
        raise bad(" ".join(str(error).split())[:300]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values", param_hint="--config")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _config_value(ctx: click.Context, key: str, value):
    """A --config value checked as the command line would check it: the option's own click type.

    A flag takes only true/false (YAML's "false" in quotes is a string, and bool("false") is True);
    a list is kept for options that take comma-separated lists (tune's --depths, ...).
    """
    param = next((p for p in ctx.command.params if p.name == key), None)
    if param is None or value is None:
        return value
    hint = f"{key} in --config"
    if getattr(param, "is_flag", False) or param.type is click.BOOL:
        if not isinstance(value, bool):
            raise click.BadParameter(f"{value!r} is not true or false", param_hint=hint)
        return value
    if isinstance(value, (list, tuple)) and isinstance(param.type, click.types.StringParamType):
        return value
    if isinstance(value, (bool, list, tuple, dict)) or (
        param.type is click.INT and isinstance(value, float) and not value.is_integer()
    ):
        raise click.BadParameter(f"{value!r} is not a valid {param.type.name}", param_hint=hint)
    return param.type.convert(value, param, ctx)


def _merge_config_file(ctx: click.Context, params: dict, allowed: tuple[str, ...]) -> dict:
    """Values from --config fill every option not given on the command line."""
    if not params.get("config"):
        return params
    from click.core import ParameterSource

    values = _read_config_file(params["config"])
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise click.BadParameter(
            f"unknown keys {unknown}; expected keys among {sorted(allowed)}", param_hint="--config"
        )
    merged = dict(params)
    for key, value in values.items():
        if ctx.get_parameter_source(key) != ParameterSource.COMMANDLINE:
            merged[key] = _config_value(ctx, key, value)
    return merged


@cli.command()
@click.option(
    "--config",
    "config",
    type=_Path(exists=True, dir_okay=False),
    help="YAML or JSON file of option values; options on the command line override it.",
)
@click.option("--depth", type=int, help="Network depth: 18/34/50/101/152 (ImageNet) or 6n+2 (CIFAR).")
@click.option("--preset", help="A named preset (e.g. resnet20, resnet50_v2) instead of --depth.")
@click.option("--family", type=click.Choice(specs.FAMILIES), help="Network family (default from the depth).")
@click.option("--variant", type=click.Choice(specs.VARIANTS), help="v1 (paper), v1.5 or v2 (pre-activation).")
@click.option("--width", type=float, help="Width multiplier on every stage's channels.")
@click.option("--shortcut", type=click.Choice(SHORTCUTS), help="A: zero-padded identity; B: projection.")
@click.option("--image-size", type=int, help="Input size (default: the family's, 32 for digits).")
@_arch_options
@_source_options
@click.option(
    "--recipe",
    type=click.Choice(recipes.names()),
    default="paper",
    show_default=True,
    help="; ".join(f"{r.name}: {r.summary}" for r in recipes.RECIPES.values()) + ".",
)
@click.option("--epochs", type=int, help="Epochs (" + recipes.default_help("epochs") + ").")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch size.")
@click.option(
    "--lr",
    type=float,
    help="Peak learning rate (default: the recipe's rate at its reference batch, scaled linearly with "
    "--batch-size; " + recipes.default_help("learning_rate") + "; paper and short per 128 images CIFAR, 256 ImageNet).",
)
@click.option(
    "--low-lr-start/--no-low-lr-start",
    default=None,
    help="Start at lr/10 until train error < 80% (default: paper recipe, CIFAR depth >= 110).",
)
@click.option("--weight-decay", type=float, help="L2 weight decay (" + recipes.default_help("weight_decay") + ").")
@_schedule_options
@_component_options
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="auto",
    show_default=True,
    help="tf.distribute strategy; multi-worker reads the cluster from TF_CONFIG.",
)
@_runtime_options
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (weights and data order).")
@_data_options
@click.option(
    "--model-dir",
    type=_Path(file_okay=False),
    help="Run directory (default runs/<model>-<dataset>); rerunning resumes it.",
)
@click.option("--overwrite", is_flag=True, help="Delete an existing run in --model-dir and start fresh.")
@click.option(
    "--label-offset",
    type=int,
    default=0,
    show_default=True,
    help="--dataset tfrecord: subtracted from the stored labels (1 for the ImageNet scripts' 1-based labels).",
)
@click.option(
    "--checkpoint-every",
    help="Also checkpoint within epochs: every N steps (500) or a time (90s, 10m, 1h). "
    "SIGTERM always saves at the next step and exits 143; rerunning resumes at that step.",
)
@click.option(
    "--steps-per-loop",
    type=click.IntRange(min=1),
    default=None,
    help="Steps per call of the compiled step, between host reads of the loss (default: 1 on a CPU, "
    "50 with GPUs, which would idle during a read per step).",
)
@click.option(
    "--export",
    "export",
    is_flag=True,
    help="After training, export a SavedModel to saved_models/<model>/<next version>/.",
)
@click.option(
    "--init-from",
    help="Pretrained start: 'imagenet' (for --depth/--variant), a keras.applications "
    "name (resnet50, resnet50v2, ...), a weights .h5 file, one of our .keras files or run directories, "
    "or torchvision/timm/keras-hub weights (`info --weights`; .pth, .safetensors, preset folders).",
)
@click.option(
    "--freeze",
    type=click.Choice(FREEZE_POLICIES),
    default="none",
    show_default=True,
    help="Layers that stay fixed while fine-tuning (--init-from).",
)
@click.option(
    "--bn-policy",
    type=click.Choice(BN_POLICIES),
    default="train",
    show_default=True,
    help="frozen: every BatchNorm in inference mode with the pretrained statistics.",
)
@click.option(
    "--backbone-lr-multiplier",
    type=float,
    default=1.0,
    show_default=True,
    help="The backbone learns at this fraction of --lr; the new head at --lr.",
)
@click.option(
    "--head-epochs",
    type=int,
    default=0,
    show_default=True,
    help="Train only the new head for this many epochs, then unfreeze per --freeze.",
)
@click.pass_context
def train(ctx, **params):
    """Train a ResNet with checkpoints, resume, TensorBoard logs, history and curves."""
    allowed = _MODEL_KEYS + _DATA_KEYS + _TRAIN_KEYS
    allowed += ("model_dir", "overwrite", "export", "checkpoint_every", "steps_per_loop", "label_offset")
    allowed += _ARCH_KEYS + COMPONENT_FIELDS
    p = _merge_config_file(ctx, params, allowed)
    from resnet_keras.config.schema import ModelConfig
    from resnet_keras.data.pipeline import DataConfig

    data_config = DataConfig(
        dataset=p["dataset"],
        data_dir=p["data_dir"],
        val_split=p["val_split"],
        validation_fraction=p["validation_fraction"],
        seed=p["seed"],
        deterministic=bool(p["deterministic"]),
        skip_corrupt=bool(p["skip_corrupt"]),
        label_offset=p["label_offset"],
    )
    model_overrides = {
        key: p[key] for key in ("family", "variant", "width", "shortcut", "image_size") if p[key] is not None
    }
    model_overrides.update({key: p[key] for key in _ARCH_KEYS if p[key] is not None})
    if p["image_size"] is None and p["dataset"] == "digits":
        model_overrides["image_size"] = 32  # 8x8 digits upsampled; 224 would only cost time
    if p["preset"] and p["depth"] is not None:
        raise click.UsageError("give --depth or --preset, not both.")
    # Validate the model options before touching any data (which may be slow).
    probe = dict(model_overrides, num_classes=1)
    depth = 20 if p["depth"] is None else p["depth"]
    probe = ModelConfig.preset(p["preset"], **probe) if p["preset"] else ModelConfig(depth=depth, **probe)
    from resnet_keras.data.pipeline import describe
    from resnet_keras.training.train import TrainConfig
    from resnet_keras.training.train import train as run_training

    if p["strategy"] == "multi-worker":  # collectives must be configured before any TensorFlow op
        from resnet_keras.training.distribute import make_strategy

        make_strategy("multi-worker")

    p["mixed_precision"] = _resolve_precision(p["mixed_precision"])

    def make_train_config(family):  # the paper recipe's defaults depend on the model's family
        return TrainConfig(
            recipe=p["recipe"],
            family=family,
            low_lr_start=p["low_lr_start"],
            epochs=p["epochs"],
            batch_size=p["batch_size"],
            learning_rate=p["lr"],
            weight_decay=p["weight_decay"],
            label_smoothing=p["label_smoothing"],
            warmup_epochs=p["warmup_epochs"],
            strategy=p["strategy"],
            mixed_precision=p["mixed_precision"],
            xla=bool(p["xla"]),
            seed=p["seed"],
            **_finetune_options(p),
            **_component_values(p),
        )

    train_config = make_train_config(probe.family)
    info = describe(data_config)  # the classifier's outputs come from the dataset
    overrides = dict(model_overrides, num_classes=info.num_classes)
    if train_config.init_from:  # fine-tuning: the architecture is the pretrained source's
        model_config = _finetune_model_config(p, train_config.init_from, info.num_classes)
    else:
        model_config = (
            ModelConfig.preset(p["preset"], **overrides) if p["preset"] else ModelConfig(depth=depth, **overrides)
        )
    if model_config.family != train_config.family:  # e.g. --init-from imagenet without --depth
        train_config = make_train_config(model_config.family)
    model_dir = p["model_dir"]
    if model_dir is None:
        model_dir = os.path.join("runs", f"{model_config.name}-{p['dataset'].replace('/', '_')}")
    run_training(
        model_config,
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


@cli.command()
@click.option("--model-dir", required=True, type=_Path(file_okay=False), help="A training run directory.")
@click.option("--dataset", help="Dataset to evaluate on (default: the run's).")
@click.option("--data-dir", help="Dataset root (default: the run's).")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Batch size.")
@_run_weights_option
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


# ----------------------------------------------------------------------------- export / predict


@cli.command()
@click.option("--model-dir", required=True, type=_Path(file_okay=False), help="A training run directory.")
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
@click.option("--output", type=_Path(dir_okay=False), help="TFLite/ONNX file path (default under --base-dir).")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default="none",
    show_default=True,
    help="TFLite weights/activations: float32, float16 weights, int8 weights, full int8 (ONNX: none or int8).",
)
@click.option("--calibration-data", type=_Path(), help="int8: folder of images (default: the run's train split).")
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
@_run_weights_option
@click.option("--overwrite", is_flag=True, help="Replace an existing version or file.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export(
    model_dir,
    fmt,
    base_dir,
    version,
    output,
    quantize,
    calibration_data,
    calibration_samples,
    eval_samples,
    max_accuracy_drop,
    weights,
    overwrite,
    as_json,
):
    """Export a trained run: a versioned SavedModel for TF Serving, a (quantized) TFLite or an ONNX file."""
    ctx = click.get_current_context()
    chosen = EXPORT_FORMATS[fmt]
    options = dict(
        base_dir=base_dir,
        version=version,
        output=output,
        quantize=quantize,
        calibration_data=calibration_data,
        calibration_samples=calibration_samples,
        eval_samples=eval_samples,
        max_accuracy_drop=max_accuracy_drop,
    )
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


@cli.command()
@click.argument("model", type=_Path())
@click.argument("images", nargs=-1, required=True, type=_Path())
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one entry per image.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per graph call.")
@click.option(
    "--output", type=click.Path(dir_okay=False), help="Write the results to this .csv or .json file instead of stdout."
)
def predict(model, images, top_k, as_json, batch_size, output):
    """Top-k labels of IMAGES (files, folders or quoted glob patterns) from MODEL: a SavedModel
    (version folder or base path), a .tflite or an .onnx file.

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


# ----------------------------------------------------------------------------- benchmark


@cli.command()
@click.option("--depth", type=int, help="Network depth: 18/34/50/101/152 (ImageNet) or 6n+2 (CIFAR).")
@click.option("--preset", help="A named preset (e.g. resnet20, resnet50_v1.5) instead of --depth.")
@click.option("--family", type=click.Choice(specs.FAMILIES), help="Network family (default from the depth).")
@click.option("--variant", type=click.Choice(specs.VARIANTS), help="v1 (paper), v1.5 or v2 (pre-activation).")
@click.option("--width", type=float, help="Width multiplier on every stage's channels.")
@click.option("--image-size", type=int, help="Input size (default: the family's, 32 or 224).")
@click.option("--num-classes", type=int, help="Classifier outputs with synthetic data (default: the family's).")
@click.option("--batch-size", type=int, help="Global batch (default 128 up to 64 pixels, 16 above).")
@click.option(
    "--precision",
    type=click.Choice(["auto", *PRECISIONS]),
    default="none",
    show_default=True,
    help="Mixed-precision compute dtype (float16 with loss scaling).",
)
@click.option("--xla/--no-xla", default=False, show_default=True, help="Compile the steps with XLA (jit_compile).")
@click.option(
    "--data",
    default="synthetic",
    show_default=True,
    help="'synthetic', an image folder, or a TFDS name (prepared under --data-dir).",
)
@click.option("--data-dir", help="TFDS data directory for a TFDS --data.")
@click.option(
    "--mode",
    "modes",
    type=click.Choice(BENCHMARK_MODES),
    multiple=True,
    help="Measure only this (repeatable; default both).",
)
@click.option("--steps", type=int, default=10, show_default=True, help="Timed steps per measurement.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed steps first (tracing, XLA compile).")
@click.option(
    "--pipeline-batches",
    type=int,
    default=50,
    show_default=True,
    help="Batches read when timing the input pipeline alone (real data only).",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Also time keras.applications' ResNet (ImageNet family) or a plain Keras CIFAR ResNet, alternating.",
)
@click.option("--memory", is_flag=True, help="Peak resident memory of a training process (ours, TF alone, anchor).")
@click.option(
    "--profile",
    "profile_dir",
    type=_Path(file_okay=False),
    help="Write a TensorFlow profiler trace of 3 training steps here and print the top ops.",
)
@click.option(
    "--intra-op-threads",
    type=int,
    default=0,
    show_default=True,
    help="tf.config.threading intra-op threads (0: TensorFlow's default, one per core).",
)
@click.option(
    "--inter-op-threads",
    type=int,
    default=0,
    show_default=True,
    help="tf.config.threading inter-op threads (0: TensorFlow's default).",
)
@click.option(
    "--pipeline-only",
    is_flag=True,
    help="Time only the training input of --recipe (needs real --data): images per CPU-second, one JSON line.",
)
@click.option(
    "--recipe",
    type=click.Choice(recipes.names()),
    default="paper",
    show_default=True,
    help="With --pipeline-only: whose training augmentation and training size to time.",
)
@click.option(
    "--train-image-size",
    type=int,
    help="With --pipeline-only: the training crops' side (default: the recipe's share of --image-size).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per measurement, then a summary object.")
def benchmark(
    depth,
    preset,
    family,
    variant,
    width,
    image_size,
    num_classes,
    batch_size,
    precision,
    xla,
    data,
    data_dir,
    modes,
    steps,
    warmup,
    pipeline_batches,
    compare,
    memory,
    profile_dir,
    intra_op_threads,
    inter_op_threads,
    pipeline_only,
    recipe,
    train_image_size,
    seed,
    as_json,
):
    """Training and inference images/s, input-pipeline speed and memory, next to Keras anchors.

    With --pipeline-only: images per CPU-second of a recipe's training input alone (decode, crop,
    flip and its batch augmentations), printed as one JSON line; the model defaults to ResNet-50.
    """
    from resnet_keras.config.schema import ModelConfig

    if preset and depth is not None:
        raise click.UsageError("give --depth or --preset, not both.")
    if pipeline_only and data == "synthetic":
        raise click.UsageError("--pipeline-only reads real images: give --data an image folder or a TFDS name.")
    if not pipeline_only and (recipe != "paper" or train_image_size is not None):
        raise click.UsageError("--recipe and --train-image-size apply to --pipeline-only.")
    if pipeline_only and depth is None and not preset:
        depth = 50  # the recipes' ImageNet network: the "imagenet" view
    for name, value in (("--intra-op-threads", intra_op_threads), ("--inter-op-threads", inter_op_threads)):
        if value < 0:
            raise click.BadParameter(f"{value} is negative; expected 0 (default) or a thread count", param_hint=name)
    overrides = {
        key: value
        for key, value in dict(
            family=family, variant=variant, width=width, image_size=image_size, num_classes=num_classes
        ).items()
        if value is not None
    }
    model_config = (
        ModelConfig.preset(preset, **overrides)
        if preset
        else ModelConfig(depth=20 if depth is None else depth, **overrides)
    )
    from resnet_keras.bench.benchmark import BenchmarkConfig

    bench = BenchmarkConfig(
        batch_size=batch_size,
        precision=_resolve_precision(precision),
        xla=xla,
        data=data,
        data_dir=data_dir,
        steps=steps,
        warmup=warmup,
        modes=modes or ("train", "infer"),
        compare=compare,
        memory=memory,
        pipeline_batches=pipeline_batches,
        seed=seed,
    )
    import tensorflow as tf  # only once the options are valid

    try:  # before the first op; TensorFlow refuses once its runtime has started
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError as error:
        raise click.UsageError(f"cannot set thread counts: {error}") from None
    if pipeline_only:
        from resnet_keras.bench.benchmark import pipeline_only as time_pipeline

        click.echo(json.dumps(time_pipeline(model_config, bench, recipe=recipe, train_image_size=train_image_size)))
        return
    from resnet_keras.bench.benchmark import format_report, run

    emit = (lambda row: click.echo(json.dumps(row))) if as_json else (lambda row: None)
    summary = run(model_config, bench, emit=emit, profile_dir=profile_dir)
    click.echo(json.dumps(summary) if as_json else format_report(summary))


# ----------------------------------------------------------------------------- tune

_TUNE_KEYS = (
    "name",
    "results_dir",
    "tuner",
    "max_trials",
    "epochs_per_trial",
    "steps_per_epoch",
    "objective",
    "max_params",
    "max_flops",
    "family",
    "variant",
    "depths",
    "widths",
    "shortcuts",
    "lrs",
    "weight_decays",
    "image_size",
    "hyperband_factor",
    "hyperband_iterations",
    "initial_points",
    "dataset",
    "data_dir",
    "val_split",
    "validation_fraction",
    "deterministic",
    "skip_corrupt",
    "recipe",
    "batch_size",
    "label_smoothing",
    "warmup_epochs",
    "strategy",
    "mixed_precision",
    "xla",
    "seed",
    "overwrite",
    "export",
    "allow_remote_oracle",
)


@cli.command()
@click.option(
    "--config",
    "config",
    type=_Path(exists=True, dir_okay=False),
    help="YAML or JSON file of option values (lists allowed); options on the command line override it.",
)
@click.option("--name", help="Search name; results go to runs/tune-<name> (default <dataset>-<tuner>).")
@click.option(
    "--results-dir",
    type=_Path(file_okay=False),
    help="Results directory (default runs/tune-<name>); rerunning resumes the search.",
)
@click.option(
    "--tuner",
    type=click.Choice(tune_lib.TUNERS),
    default="random",
    show_default=True,
    help="KerasTuner oracle.",
)
@click.option(
    "--max-trials", type=int, help="Trials to run (default 10; Hyperband: its bracket schedule, a number caps it)."
)
@click.option(
    "--epochs-per-trial",
    type=int,
    default=10,
    show_default=True,
    help="Epochs per trial (Hyperband: the most any trial trains).",
)
@click.option("--steps-per-epoch", type=int, help="Train steps per epoch (default: the whole train split).")
@click.option(
    "--objective",
    type=click.Choice(list(tune_lib.OBJECTIVES)),
    default="val_accuracy",
    show_default=True,
    help="What the search optimises (the best epoch's value).",
)
@click.option("--max-params", help="Only candidates with at most this many trainable parameters (e.g. 300k, 2M).")
@click.option("--max-flops", help="Only candidates with at most this many multiply-adds per image (e.g. 50M, 2G).")
@click.option("--family", type=click.Choice(specs.FAMILIES), help="Network family (default from --depths, else cifar).")
@click.option(
    "--variant",
    type=click.Choice(specs.VARIANTS),
    default="v1",
    show_default=True,
    help="v1 (paper), v1.5 or v2 (pre-activation).",
)
@click.option("--depths", help="Depths to try, e.g. 20,32,44 (CIFAR: any 6n+2; default the family's presets).")
@click.option("--widths", help="Width multipliers to try (default 0.5,1,2).")
@click.option("--shortcuts", help="Shortcut options to try: A, B or A,B (default A,B).")
@click.option("--lrs", help="Learning rates: a list (0.05,0.1,0.2) or a log range low:high (default 0.01:0.4).")
@click.option("--weight-decays", help="Weight decays: a list or a log range low:high (default 1e-5:1e-3).")
@click.option("--image-size", type=int, help="Input size (default: the family's, 32 for CIFAR).")
@click.option("--hyperband-factor", type=int, default=3, show_default=True, help="Hyperband's reduction factor.")
@click.option("--hyperband-iterations", type=int, default=1, show_default=True, help="Hyperband iterations.")
@click.option("--initial-points", type=int, help="Bayesian: random trials before the Gaussian process.")
@_source_options
@click.option(
    "--recipe",
    type=click.Choice(recipes.names()),
    default="paper",
    show_default=True,
    help="Training recipe of every trial.",
)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch size.")
@_schedule_options
@_component_options
@click.option(
    "--strategy",
    type=click.Choice([name for name in STRATEGIES if name != "multi-worker"]),
    default="auto",
    show_default=True,
    help="tf.distribute strategy of each trial.",
)
@_runtime_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the oracle, weights and data order.")
@_data_options
@click.option("--overwrite", is_flag=True, help="Delete an existing search in --results-dir and start fresh.")
@click.option(
    "--export",
    "export",
    is_flag=True,
    help="Export the best trial's model as a SavedModel to saved_models/<model>/<next version>/.",
)
@click.option(
    "--allow-remote-oracle",
    is_flag=True,
    help="Distributed search: let the chief serve KerasTuner's oracle on a non-loopback KERASTUNER_ORACLE_IP. "
    "The oracle has no authentication: only on a private network (README: Hyperparameter search).",
)
@click.pass_context
def tune(ctx, **params):
    """Search depth, width, shortcut, learning rate and weight decay with KerasTuner.

    Every trial trains with the pipeline, recipe and strategy of `train`. Writes trials.csv (ranked),
    best.yaml (for `train --config`) and objective_vs_size.png to the results directory. For a
    distributed search, run scripts/tune_distributed.py (KerasTuner chief and workers).
    """
    p = _merge_config_file(ctx, params, _TUNE_KEYS + COMPONENT_FIELDS)
    from resnet_keras.data.pipeline import DataConfig

    space = tune_lib.SearchSpace(
        depths=tune_lib.parse_ints(p["depths"], "depths") if p["depths"] is not None else None,
        widths=tune_lib.parse_floats(p["widths"], "widths") if p["widths"] is not None else tune_lib.DEFAULT_WIDTHS,
        shortcuts=tuple(str(s).upper() for s in tune_lib.split_list(p["shortcuts"]))
        if p["shortcuts"] is not None
        else ("A", "B"),
        **{
            key: tune_lib.parse_floats(p[flag], flag, allow_range=True)
            for key, flag in (("learning_rates", "lrs"), ("weight_decays", "weight_decays"))
            if p[flag] is not None
        },
        family=p["family"],
        variant=p["variant"],
        image_size=p["image_size"],
    )
    tune_config = tune_lib.TuneConfig(
        tuner=p["tuner"],
        max_trials=p["max_trials"],
        epochs_per_trial=p["epochs_per_trial"],
        objective=p["objective"],
        max_params=tune_lib.parse_count(p["max_params"], "max_params"),
        max_flops=tune_lib.parse_count(p["max_flops"], "max_flops"),
        hyperband_factor=p["hyperband_factor"],
        hyperband_iterations=p["hyperband_iterations"],
        initial_points=p["initial_points"],
        seed=p["seed"],
    )
    data_config = DataConfig(
        dataset=p["dataset"],
        data_dir=p["data_dir"],
        val_split=p["val_split"],
        validation_fraction=p["validation_fraction"],
        seed=p["seed"],
        deterministic=bool(p["deterministic"]),
        skip_corrupt=bool(p["skip_corrupt"]),
    )
    from resnet_keras.training.train import TrainConfig

    p["mixed_precision"] = _resolve_precision(p["mixed_precision"])
    train_config = TrainConfig(
        recipe=p["recipe"],
        epochs=p["epochs_per_trial"],
        batch_size=p["batch_size"],
        label_smoothing=p["label_smoothing"],
        warmup_epochs=p["warmup_epochs"],
        strategy=p["strategy"],
        mixed_precision=p["mixed_precision"],
        xla=bool(p["xla"]),
        seed=p["seed"],
        steps_per_epoch=p["steps_per_epoch"],
        **_component_values(p),
    )
    name = p["name"] or "{}-{}".format(
        os.path.basename(os.path.normpath(p["data_dir"]))
        if p["dataset"] == "folder" and p["data_dir"]
        else p["dataset"].replace("/", "_"),
        p["tuner"],
    )
    results_dir = p["results_dir"] or os.path.join("runs", f"tune-{name}")
    result = run_search(
        space,
        tune_config,
        data_config,
        train_config,
        results_dir,
        overwrite=p["overwrite"],
        allow_remote_oracle=p["allow_remote_oracle"],
        log=click.echo,
    )
    if result is None:  # a distributed worker: the chief writes the reports
        click.echo("Worker finished: the chief has every trial.")
        return
    rows = [dict(row) for row in result.rows]
    for row in rows:
        for key, fmt in (
            ("params", "{:,}"),
            ("multiply_adds", "{:,}"),
            ("objective", "{:.4f}"),
            ("learning_rate", "{:.3g}"),
            ("weight_decay", "{:.2g}"),
            ("width", "{:g}"),
            ("seconds", "{:.0f}"),
        ):
            row[key] = "-" if row[key] is None else fmt.format(row[key])
        row["rank"] = row["rank"] or "-"
        row["epochs"] = "-" if row["epochs"] is None else row["epochs"]
    click.echo("")
    click.echo(
        _format_table(
            rows,
            [
                ("rank", "rank"),
                ("trial", "trial"),
                ("depth", "depth"),
                ("width", "width"),
                ("shortcut", "shortcut"),
                ("learning_rate", "lr"),
                ("weight_decay", "wd"),
                ("epochs", "epochs"),
                ("params", "params"),
                ("multiply_adds", "mult-adds"),
                ("objective", p["objective"]),
                ("seconds", "seconds"),
                ("status", "status"),
            ],
        )
    )
    for path in result.files.values():
        click.echo(f"Wrote {path}")
    if result.best:
        click.echo(
            f"Train the best: resnet-keras train --config {result.files['best']} --epochs N --model-dir runs/best"
        )
    if p["export"]:
        if not result.best_run:
            raise click.ClickException("--export: no trial completed, nothing to export.")
        from resnet_keras.serving.export import export_saved_model

        report = export_saved_model(result.best_run, log=click.echo)
        click.echo(f"Exported the best trial ({result.best_run}) to {report['path']}")


# ----------------------------------------------------------------------------- pretrained weights


def _finetune_options(p: dict) -> dict:
    options = {key: p[key] for key in ("freeze", "bn_policy", "backbone_lr_multiplier", "head_epochs")}
    if p.get("init_from"):
        from resnet_keras.pretrained.finetune import normalize_source

        options["init_from"] = normalize_source(str(p["init_from"]))
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


@cli.command()
@click.argument("source")
@click.option("--output", required=True, type=_Path(dir_okay=False), help="The .keras file to write.")
@click.option(
    "--weights",
    "weights_file",
    help="A keras.applications weights file for SOURCE's architecture "
    "(default: the official ImageNet weights, from Keras' cache or downloaded).",
)
@click.option("--image-size", type=int, default=224, show_default=True, help="Input height and width.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
def convert(source, output, weights_file, image_size, overwrite):
    """Write pretrained ResNet weights (keras.applications, torchvision, timm) as our model (raw RGB 0-255 in).

    SOURCE is a keras.applications name (resnet50, resnet101, resnet152, resnet50v2, resnet101v2,
    resnet152v2) or a weights .h5 file of one (its architecture is read from the file), a
    torchvision/timm weight set (torchvision:resnet50.IMAGENET1K_V2, timm:resnet50.a1_in1k; see
    `info --weights`) or a PyTorch .pth / .safetensors state dict of a torchvision/timm ResNet.
    """
    from resnet_keras.pretrained import keras_apps as weights
    from resnet_keras.pretrained import state_dicts as torch_weights

    if torch_weights.is_torch_source(source) and not weights_file:
        torch_weights.convert(source, output, image_size=image_size, overwrite=overwrite, log=click.echo)
        return
    if weights_file:
        weights.convert(
            weights_file,
            output,
            app=weights.check_app(source),
            image_size=image_size,
            overwrite=overwrite,
            log=click.echo,
        )
    else:
        weights.convert(source, output, image_size=image_size, overwrite=overwrite, log=click.echo)


@cli.command("export-features")
@click.argument("source")
@click.option("--output", required=True, type=_Path(file_okay=False), help="The SavedModel folder to write.")
@click.option("--image-size", type=int, help="Input size (default: the source's; 224 for keras.applications).")
@click.option("--depth", type=int, help="With SOURCE 'imagenet' or a tag such as torchvision:IMAGENET1K_V2: the depth.")
@click.option("--variant", type=click.Choice(["v1", "v2"]), help="With SOURCE 'imagenet': v1 or v2.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output folder.")
def export_features(source, output, image_size, depth, variant, overwrite):
    """Export a feature extractor: SavedModel with `embedding` and per-stage `stage_features` signatures.

    SOURCE is one of our run directories or .keras files, a keras.applications name or weights
    file, or 'imagenet' with --depth/--variant.
    """
    from resnet_keras.serving.features import export_features as run_export

    run_export(source, output, image_size=image_size, depth=depth, variant=variant, overwrite=overwrite, log=click.echo)


def _exit_promptly_on_ctrl_c(grace_seconds: float = 2.0) -> None:
    """Ends the process within `grace_seconds` of Ctrl-C, even inside a long TensorFlow call.

    Python raises KeyboardInterrupt only between bytecodes, so a Ctrl-C during graph tracing or a
    long kernel waits for it to return (seconds to minutes), and interpreter teardown with
    TensorFlow loaded takes another 1-2 s. A thread watching the signal wake-up fd gives the main
    thread `grace_seconds` to unwind, then exits with 130. That is no worse than kill -9, which
    runs survive: every file is written atomically and training resumes from the last checkpoint.
    """
    import signal
    import threading
    import time

    if threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        return

    def watch():
        while signal.SIGINT not in os.read(read_fd, 64):
            pass
        time.sleep(grace_seconds)
        os.write(2, b"Aborted.\n")
        os._exit(130)

    threading.Thread(target=watch, name="ctrl-c-watchdog", daemon=True).start()


@cli.command()
@click.option("--dataset", default="folder", show_default=True, help="'folder' or a TFDS name.")
@click.option("--data-dir", help="The image folder (<split>/<class>/<image> or <class>/<image>), or the TFDS data dir.")
@click.option("--output", required=True, type=_Path(file_okay=False), help="A new (or an interrupted) output folder.")
@click.option("--val-split", help="Validation split (default: the dataset's, else held out of train).")
@click.option(
    "--validation-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Fraction of train held out when the dataset has no validation split.",
)
@click.option(
    "--images-per-shard", type=click.IntRange(min=1), default=1024, show_default=True, help="Examples per file."
)
@click.option("--processes", type=click.IntRange(min=1), help="Worker processes (default: the CPU count).")
@click.option("--skip-corrupt", is_flag=True, help="Skip images that do not decode (listed in the manifest).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the order examples are written in.")
def prepare(dataset, data_dir, output, val_split, validation_fraction, images_per_shard, processes, skip_corrupt, seed):
    """Write an image folder or a TFDS dataset as sharded TFRecords (the ImageNet schema) for
    `train --dataset tfrecord --data-dir OUTPUT`; rerunning an interrupted prepare keeps its shards."""
    from resnet_keras.config.schema import DataConfig
    from resnet_keras.data.prepare import prepare as run_prepare

    config = DataConfig(
        dataset=dataset,
        data_dir=data_dir,
        val_split=val_split,
        validation_fraction=validation_fraction,
        skip_corrupt=skip_corrupt,
        seed=seed,
    )
    run_prepare(config, output, images_per_shard=images_per_shard, processes=processes, log=click.echo)


def main():  # console-script entry point
    global _PROCESS_EXIT_ON_INTERRUPT
    _PROCESS_EXIT_ON_INTERRUPT = True
    _exit_promptly_on_ctrl_c()
    cli()


if __name__ == "__main__":
    main()
