"""`tune`: a KerasTuner search over depth, width, shortcut, learning rate and weight decay."""

from __future__ import annotations

import os

import click

from resnet_keras.cli.options import (
    ConfigCommand,
    NonEmptyPath,
    format_table,
    group,
    option,
    options,
    resolve_precision,
)
from resnet_keras.config.options import fields
from resnet_keras.config.schema import STRATEGIES
from resnet_keras.tune import space as tune_space
from resnet_keras.tune.tuner import search as run_search

# The search: where it goes, the oracle and its budget; tune's own.
_search_options = options(
    click.option("--name", help="Search name; results go to runs/tune-<name> (default <dataset>-<tuner>)."),
    click.option(
        "--results-dir",
        type=NonEmptyPath(file_okay=False),
        help="Results directory (default runs/tune-<name>); rerunning resumes the search.",
    ),
    click.option(
        "--tuner", type=click.Choice(tune_space.TUNERS), default="random", show_default=True, help="KerasTuner oracle."
    ),
    click.option(
        "--max-trials", type=int, help="Trials to run (default 10; Hyperband: its bracket schedule, a number caps it)."
    ),
    click.option(
        "--epochs-per-trial",
        type=int,
        default=10,
        show_default=True,
        help="Epochs per trial (Hyperband: the most any trial trains).",
    ),
    "steps_per_epoch",
    click.option(
        "--objective",
        type=click.Choice(list(tune_space.OBJECTIVES)),
        default="val_accuracy",
        show_default=True,
        help="What the search optimises (the best epoch's value).",
    ),
    click.option("--max-params", help="Only candidates with at most this many trainable parameters (e.g. 300k, 2M)."),
    click.option("--max-flops", help="Only candidates with at most this many multiply-adds per image (e.g. 50M, 2G)."),
)
# The search space (tune.space.SearchSpace) and the oracles' settings.
_space_options = options(
    option("family", help="Network family (default from --depths, else cifar)."),
    option("variant", default="v1", show_default=True),
    click.option("--depths", help="Depths to try, e.g. 20,32,44 (CIFAR: any 6n+2; default the family's presets)."),
    click.option("--widths", help="Width multipliers to try (default 0.5,1,2)."),
    click.option("--shortcuts", help="Shortcut options to try: A, B or A,B (default A,B)."),
    click.option("--lrs", help="Learning rates: a list (0.05,0.1,0.2) or a log range low:high (default 0.01:0.4)."),
    click.option("--weight-decays", help="Weight decays: a list or a log range low:high (default 1e-5:1e-3)."),
    "image_size",
    click.option("--hyperband-factor", type=int, default=3, show_default=True, help="Hyperband's reduction factor."),
    click.option("--hyperband-iterations", type=int, default=1, show_default=True, help="Hyperband iterations."),
    click.option("--initial-points", type=int, help="Bayesian: random trials before the Gaussian process."),
)


@click.command(
    cls=ConfigCommand,
    config_help="YAML or JSON file of option values (lists allowed); options on the command line override it.",
)
@_search_options
@_space_options
@group("source")
@option("recipe", help="Training recipe of every trial.")
@option("batch_size")
@group("schedule")
@group("components")
@option(
    "strategy",
    type=click.Choice([name for name in STRATEGIES if name != "multi-worker"]),
    help="tf.distribute strategy of each trial.",
)
@group("runtime")
@option("seed", help="Seed of the oracle, weights and data order.")
@group("data")
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
    "The oracle has no authentication: only on a private network (docs/tuning.md, Security).",
)
@click.pass_context
def tune(ctx, **p):
    """Search depth, width, shortcut, learning rate and weight decay with KerasTuner.

    Every trial trains with the pipeline, recipe and strategy of `train`. Writes trials.csv (ranked),
    best.yaml (for `train --config`) and objective_vs_size.png to the results directory. For a
    distributed search, run scripts/tune_distributed.py (KerasTuner chief and workers).
    """
    from resnet_keras.data.pipeline import DataConfig

    space = _search_space(p)
    tune_config = _tune_config(p)
    data_config = DataConfig(**fields("data", p))
    from resnet_keras.training.train import TrainConfig

    p["mixed_precision"] = resolve_precision(p["mixed_precision"])
    train_config = TrainConfig(epochs=p["epochs_per_trial"], **fields("train", p))
    result = run_search(
        space,
        tune_config,
        data_config,
        train_config,
        p["results_dir"] or os.path.join("runs", f"tune-{_search_name(p)}"),
        overwrite=p["overwrite"],
        allow_remote_oracle=p["allow_remote_oracle"],
        log=click.echo,
    )
    if result is None:  # a distributed worker: the chief writes the reports
        click.echo("Worker finished: the chief has every trial.")
        return
    _print_trials(result, p["objective"])
    if p["export"]:
        if not result.best_run:
            raise click.ClickException("--export: no trial completed, nothing to export.")
        from resnet_keras.serving.export import export_saved_model

        report = export_saved_model(result.best_run, log=click.echo)
        click.echo(f"Exported the best trial ({result.best_run}) to {report['path']}")


def _search_space(p: dict) -> tune_space.SearchSpace:
    return tune_space.SearchSpace(
        depths=tune_space.parse_ints(p["depths"], "depths") if p["depths"] is not None else None,
        widths=tune_space.parse_floats(p["widths"], "widths") if p["widths"] is not None else tune_space.DEFAULT_WIDTHS,
        shortcuts=tuple(str(s).upper() for s in tune_space.split_list(p["shortcuts"]))
        if p["shortcuts"] is not None
        else ("A", "B"),
        **{
            key: tune_space.parse_floats(p[flag], flag, allow_range=True)
            for key, flag in (("learning_rates", "lrs"), ("weight_decays", "weight_decays"))
            if p[flag] is not None
        },
        family=p["family"],
        variant=p["variant"],
        image_size=p["image_size"],
    )


def _tune_config(p: dict) -> tune_space.TuneConfig:
    return tune_space.TuneConfig(
        tuner=p["tuner"],
        max_trials=p["max_trials"],
        epochs_per_trial=p["epochs_per_trial"],
        objective=p["objective"],
        max_params=tune_space.parse_count(p["max_params"], "max_params"),
        max_flops=tune_space.parse_count(p["max_flops"], "max_flops"),
        hyperband_factor=p["hyperband_factor"],
        hyperband_iterations=p["hyperband_iterations"],
        initial_points=p["initial_points"],
        seed=p["seed"],
    )


def _search_name(p: dict) -> str:
    return p["name"] or "{}-{}".format(
        os.path.basename(os.path.normpath(p["data_dir"]))
        if p["dataset"] == "folder" and p["data_dir"]
        else p["dataset"].replace("/", "_"),
        p["tuner"],
    )


def _print_trials(result, objective: str) -> None:
    """The ranked trials as a table, the files written, and how to train the best."""
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
    columns = [("rank", "rank"), ("trial", "trial"), ("depth", "depth"), ("width", "width")]
    columns += [("shortcut", "shortcut"), ("learning_rate", "lr"), ("weight_decay", "wd"), ("epochs", "epochs")]
    columns += [("params", "params"), ("multiply_adds", "mult-adds"), ("objective", objective)]
    columns += [("seconds", "seconds"), ("status", "status")]
    click.echo("")
    click.echo(format_table(rows, columns))
    for path in result.files.values():
        click.echo(f"Wrote {path}")
    if result.best:
        click.echo(
            f"Train the best: resnet-keras train --config {result.files['best']} --epochs N --model-dir runs/best"
        )
