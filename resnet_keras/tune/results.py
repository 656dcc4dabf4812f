"""A search's results directory and reports.

Layout: ``search.json`` (what was searched; another search is refused), ``kerastuner/``
(oracle.json, tuner state, ``trial_<id>/trial.json`` and ``trial_<id>/run/``), ``costs.json``
(params and multiply-adds per architecture, when a cost limit is set), ``trials.csv`` (ranked),
``best.yaml`` (for ``resnet-keras train --config``; its keys are the option table's names,
`resnet_keras.config.options`) and ``objective_vs_size.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

from resnet_keras.config.options import GROUPS, option_values
from resnet_keras.core import plots
from resnet_keras.core.errors import ResNetKerasError, UsageError
from resnet_keras.core.storage import as_path, rmtree, write_atomic
from resnet_keras.tune.space import OBJECTIVES, Architecture, SearchSpace, TuneConfig, write_json

SEARCH_FILE = "search.json"
SEARCH_FORMAT = 1


def prepare_results_dir(results_dir: Path, spec: dict, overwrite: bool, who: str) -> bool:
    """Creates or checks `results_dir`; True when it holds this search already (resume)."""
    search_file = results_dir / SEARCH_FILE
    if search_file.exists():
        try:
            old = json.loads(search_file.read_text())
        except ValueError as error:
            raise UsageError(
                f"{search_file} is not a valid search file ({error}); use --overwrite or another --results-dir"
            ) from None
        if overwrite and who != "worker":  # a worker never deletes the chief's results
            rmtree(results_dir)
        else:
            differing = _differences(old, spec)
            if differing:
                raise UsageError(
                    f"{results_dir} holds a different search ({'; '.join(differing)}); "
                    "use --overwrite or another --results-dir"
                )
            return True
    elif results_dir.exists() and any(not p.name.startswith(".") for p in results_dir.iterdir()):
        raise UsageError(
            f"{results_dir} exists, is not empty and is not a search directory (no {SEARCH_FILE}); "
            "use another --results-dir"
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(search_file, spec)
    return False


def _with_new_train_fields(old: dict) -> dict:
    """A search file written before some TrainConfig fields existed, with those fields as its recipe
    fills them today, so the search still resumes (a run directory gets the same rule)."""
    from resnet_keras.config.schema import TrainConfig

    train = old.get("train")
    if not isinstance(train, dict):
        return old
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        filled = TrainConfig(**{key: value for key, value in train.items() if key in known}).to_dict()
    except (ResNetKerasError, TypeError):
        return old
    return {**old, "train": {**{key: filled[key] for key in known - set(train)}, **train}}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    if not prefix:
        old = _with_new_train_fields(old)
        for section in ("train",):  # keys the spec leaves out on purpose stay out of the comparison
            if isinstance(new.get(section), dict) and isinstance(old.get(section), dict):
                old = {**old, section: {k: v for k, v in old[section].items() if k in new[section]}}
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key == "tune":
            continue
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (prefix == "tune." and key == "max_trials"):  # more trials extends a search
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    if not prefix:
        out += _differences(old.get("tune", {}), new.get("tune", {}), "tune.")
    return out


@dataclasses.dataclass
class SearchResult:
    """What a finished search (single process or chief) produced."""

    results_dir: Path
    rows: list[dict]  # ranked, see TABLE_FIELDS
    best: dict | None
    files: dict[str, Path]
    best_run: Path | None = None  # the best trial's run directory (resnet-keras export takes it)


TABLE_FIELDS = (
    "rank",
    "trial",
    "status",
    "depth",
    "width",
    "shortcut",
    "learning_rate",
    "weight_decay",
    "epochs",
    "params",
    "multiply_adds",
    "objective",
    "val_accuracy",
    "val_loss",
    "seconds",
    "continued_from",
    "worker",
)


# ----------------------------------------------------------------------------- reports


def _trial_rows(tuner, space: SearchSpace, tune: TuneConfig, costs: dict) -> list[dict]:
    rows = []
    by_label = {arch.label: arch for arch in space.architectures()}
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        arch = (
            by_label[values["architecture"]]
            if "architecture" in values
            else Architecture(values["depth"], values["width"], values["shortcut"])
        )

        def metric(name, trial=trial):
            return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None

        cost = costs.get(arch.label, {})
        ran_by = as_path(tuner.get_trial_dir(trial.trial_id)) / "ran_by.json"
        row = dict(
            trial=trial.trial_id,
            status=trial.status,
            depth=arch.depth,
            width=arch.width,
            shortcut=arch.shortcut,
            learning_rate=values["learning_rate"],
            weight_decay=values["weight_decay"],
            epochs=int(metric("epochs")) if metric("epochs") is not None else values.get("tuner/epochs"),
            params=int(metric("params") or cost.get("params") or 0) or None,
            multiply_adds=int(metric("multiply_adds") or cost.get("multiply_adds") or 0) or None,
            objective=metric(tune.objective) if trial.status == "COMPLETED" else None,
            val_accuracy=metric("val_accuracy"),
            val_loss=metric("val_loss"),
            seconds=metric("seconds"),
            continued_from=values.get("tuner/trial_id"),
            worker=json.loads(ran_by.read_text()).get("tuner_id") if ran_by.exists() else None,
        )
        rows.append(row)
    sign = -1 if OBJECTIVES[tune.objective] == "max" else 1
    rows.sort(key=lambda r: (r["objective"] is None, sign * (r["objective"] or 0), r["trial"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row["objective"] is not None else None
    return rows


# The options best.yaml sets, in its order: the network found, the data and the trials' recipe.
BEST_OPTIONS = (
    *("depth", "family", "variant", "width", "shortcut", "image_size"),
    *GROUPS["source"],
    *GROUPS["data"],
    *("recipe", "epochs", "batch_size", "lr", "weight_decay", *GROUPS["schedule"], "strategy"),
    *GROUPS["runtime"],
    "seed",
    *GROUPS["components"],
)


def _best_yaml(best: dict, space: SearchSpace, data_config, train_config, tune: TuneConfig) -> str:
    """`train --config best.yaml` trains the best trial's network with its learning rate and decay."""
    import yaml

    model_config = space.model_config(Architecture(best["depth"], best["width"], best["shortcut"]), num_classes=1)
    config = option_values(BEST_OPTIONS, model=model_config, data=data_config, train=train_config)
    config.update(
        data_dir=os.path.abspath(data_config.data_dir) if data_config.data_dir else None,
        epochs=best["epochs"] or train_config.epochs,
        lr=float(best["learning_rate"]),
        weight_decay=float(best["weight_decay"]),
    )
    config = {key: value for key, value in config.items() if value is not None}
    steps = (
        f"\n# Trials ran {train_config.steps_per_epoch} steps per epoch; train runs full epochs."
        if train_config.steps_per_epoch
        else ""
    )
    header = (
        f"# Best trial {best['trial']} of a {tune.tuner} search: {tune.objective} {best['objective']:.4f}, "
        f"{best['params']:,} parameters, {best['multiply_adds']:,} multiply-adds.\n"
        f"# resnet-keras train --config best.yaml  (epochs is the trial's; pass --epochs N for a full run){steps}\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def write_reports(
    tuner,
    space: SearchSpace,
    tune: TuneConfig,
    data_config,
    train_config,
    results_dir: Path,
    costs: dict,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """trials.csv (ranked), best.yaml and objective_vs_size.png from the oracle's trials."""
    rows = _trial_rows(tuner, space, tune, costs)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TABLE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files = {"trials": results_dir / "trials.csv"}
    write_atomic(files["trials"], out.getvalue())
    best = rows[0] if rows and rows[0]["objective"] is not None else None
    if best:
        files["best"] = results_dir / "best.yaml"
        write_atomic(files["best"], _best_yaml(best, space, data_config, train_config, tune))
        files["plot"] = results_dir / "objective_vs_size.png"
        write_atomic(
            files["plot"],
            plots.objective_vs_size(rows, tune.objective, OBJECTIVES[tune.objective] == "max", tune.tuner),
        )
    else:
        log("No trial completed; no best.yaml or plot written.")
    best_run = as_path(tuner.get_trial_dir(best["trial"])) / "run" if best else None
    return SearchResult(results_dir, rows, best, files, best_run)
