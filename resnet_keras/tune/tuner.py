"""Hyperparameter search over depth, width, shortcut, learning rate and weight decay with KerasTuner.

How deep and how wide for my data and my budget? `search` answers it with a real KerasTuner oracle
(random search, Hyperband of Li et al. 2018, or Gaussian-process Bayesian optimisation) while every
trial trains with our own pipeline: `data.make_dataset`, the recipe and the `tf.distribute` strategy
of `resnet-keras train`, through `train.train` (never `model.fit`, which fails under
MultiWorkerMirroredStrategy, keras-team/keras#20585).

* `ResNetHyperModel.build(hp)` only maps hyperparameters to a `TrialPlan` (model config, learning
  rate, weight decay); training stays in train.py, as KerasTuner's HyperModel/Tuner split intends.
* `ResNetTuner.run_trial` trains the plan into ``<project>/trial_<id>/run`` (a normal run directory)
  and returns the best epoch's val accuracy / val loss plus the model's size and cost.
* A cost limit (space.py) never trains an oversized candidate: when the limit excludes some
  (depth, width, shortcut) combinations, the three hyperparameters become one ``architecture``
  choice over the feasible ones, listed by size (Bayesian optimisation encodes a choice by its
  index, so it sees a size axis).
* The results directory (results.py) survives interruption: KerasTuner reloads its oracle
  (``overwrite=False``), finished trials are not rerun, and an interrupted trial is retried in the
  same run directory, which resumes after its last finished epoch. Hyperband's successive-halving
  trials start from a copy of the promoted trial's run directory and train on from
  ``tuner/initial_epoch`` to ``tuner/epochs``.
* Distributed search: KerasTuner's chief/worker mode (``KERASTUNER_TUNER_ID``,
  ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``); the chief serves the oracle and writes the
  reports, workers run trials (``scripts/tune_distributed.py`` starts both on one machine).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import DiskFull, TrainingFailure, UsageError
from resnet_keras.core.files import space_for
from resnet_keras.core.storage import as_path, check_reachable, copy_folder
from resnet_keras.runs.rundir import RunDir
from resnet_keras.runs.runlock import holds_lock
from resnet_keras.tune.results import SEARCH_FORMAT, SearchResult, prepare_results_dir, write_reports
from resnet_keras.tune.space import (
    OBJECTIVES,
    Architecture,
    LogRange,
    SearchSpace,
    TuneConfig,
    candidate_costs,
    feasible_architectures,
    measure,
    write_json,
)

PROJECT = "kerastuner"


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """What one trial trains: the model and the two tuned optimiser settings."""

    model_config: ModelConfig
    learning_rate: float
    weight_decay: float
    architecture: Architecture


def _hp_number(hp, name: str, values):
    if isinstance(values, LogRange):
        return hp.Float(name, min_value=values.low, max_value=values.high, sampling="log")
    return hp.Choice(name, list(values))


def _hypermodel_class():
    import keras_tuner

    class ResNetHyperModel(keras_tuner.HyperModel):
        """Maps hyperparameters to a `TrialPlan`; training stays in `train.train` (the tuner runs it).

        `architectures`: None for independent ``depth``, ``width`` and ``shortcut`` choices, or the
        feasible candidates under a cost limit as one ``architecture`` choice ordered by size.
        """

        def __init__(self, space: SearchSpace, num_classes: int, architectures: list[Architecture] | None = None):
            super().__init__(name="resnet")
            self.space, self.num_classes = space, num_classes
            self.by_label = {arch.label: arch for arch in architectures} if architectures else None

        def build(self, hp) -> TrialPlan:
            if self.by_label:
                arch = self.by_label[hp.Choice("architecture", list(self.by_label))]
            else:
                arch = Architecture(
                    hp.Choice("depth", list(self.space.depths)),
                    hp.Choice("width", list(self.space.widths)),
                    hp.Choice("shortcut", list(self.space.shortcuts)),
                )
            learning_rate = _hp_number(hp, "learning_rate", self.space.learning_rates)
            weight_decay = _hp_number(hp, "weight_decay", self.space.weight_decays)
            return TrialPlan(
                self.space.model_config(arch, num_classes=self.num_classes),
                float(learning_rate),
                float(weight_decay),
                arch,
            )

    return ResNetHyperModel


class _FatalUsage(Exception):
    """Carries a UsageError or DiskFull out of KerasTuner's trial loop, which retries any other exception."""

    def __init__(self, error: UsageError | DiskFull):
        super().__init__(str(error))
        self.error = error


def _tuner_class():
    import keras_tuner

    class FatalUsage(_FatalUsage, keras_tuner.errors.FatalError):
        pass

    class ResNetTuner(keras_tuner.Tuner):
        """A KerasTuner `Tuner` whose trials run `train.train` in ``trial_<id>/run``."""

        def __init__(self, *, data_config, train_config, costs: dict, log: Callable[[str], None], **kwargs):
            self.data_config, self.train_config, self.costs, self.log = data_config, train_config, costs, log
            self._asked = 0
            super().__init__(**kwargs)

        def on_search_begin(self):
            # Saved before the first trial too, so a search killed during trial 0 reloads its oracle.
            self.save()

        def pre_create_trial(self):
            # The oracle answers IDLE while Hyperband waits for other workers' trials and
            # BaseTuner asks again at once; a short pause keeps that from spinning a core.
            self._asked += 1
            if self._asked > 1:
                time.sleep(min(5.0, 0.25 * self._asked))

        def on_trial_begin(self, trial):
            self._asked = 0
            super().on_trial_begin(trial)

        def run_trial(self, trial, *args, **kwargs):
            start = time.perf_counter()
            values = trial.hyperparameters.values
            plan = self.hypermodel.build(trial.hyperparameters)
            epochs = int(values.get("tuner/epochs", self.train_config.epochs))
            train_config = dataclasses.replace(
                self.train_config,
                epochs=epochs,
                learning_rate=plan.learning_rate,
                weight_decay=plan.weight_decay,
                family=plan.model_config.family,
            )
            run_dir = _trial_run_dir(self, trial)
            prefix = f"[trial {trial.trial_id}] "
            self.log(
                f"{prefix}{plan.model_config.name} shortcut {plan.architecture.shortcut}, "
                f"lr {plan.learning_rate:.4g}, weight decay {plan.weight_decay:.3g}, {epochs} epochs -> {run_dir}"
            )
            _train_trial(plan, self.data_config, train_config, run_dir, _prefixed(self.log, prefix), FatalUsage)
            if plan.architecture.label not in self.costs:  # counted once per architecture, not per trial
                self.costs[plan.architecture.label] = measure(plan.model_config)
            return _scores(RunDir(run_dir).read_history(), self.costs[plan.architecture.label], start)

        def load_model(self, trial):
            """The trial's final trained model (`get_best_models` works on a finished search)."""
            return RunDir(as_path(self.get_trial_dir(trial.trial_id)) / "run").load_model("final")

    return ResNetTuner


def _trial_run_dir(tuner, trial) -> Path:
    """``trial_<id>/run``, with who ran it recorded; a trial Hyperband promotes starts from a copy of
    its past run (train resumes when the epochs grow)."""
    values = trial.hyperparameters.values
    trial_dir = as_path(tuner.get_trial_dir(trial.trial_id))
    run_dir = trial_dir / "run"
    write_json(trial_dir / "ran_by.json", dict(tuner_id=tuner.tuner_id, host=socket.gethostname(), pid=os.getpid()))
    past_id = values.get("tuner/trial_id")
    if past_id and not RunDir(run_dir).is_run():
        past = as_path(tuner.get_trial_dir(past_id)) / "run"
        if not RunDir(past).checkpoint_dir.is_dir():
            tuner.log(f"trial {past_id}'s run is not on this machine; training from scratch")
        else:
            copy_folder(past, run_dir, marker=RunDir.CONFIG)
            tuner.log(f"continuing trial {past_id} from epoch {int(values.get('tuner/initial_epoch', 0))}")
    return run_dir


def _train_trial(plan: TrialPlan, data_config, train_config, run_dir: Path, log, fatal: type) -> None:
    """`train.train` of one trial; a diverging run is a failed trial, a usage error or a full disk
    (`fatal`) stops the search."""
    from resnet_keras.training import train as train_lib

    try:
        with space_for(run_dir):  # a full disk is DiskFull here, which is not retried
            train_lib.train(plan.model_config, data_config, train_config, run_dir, log=log)
    except TrainingFailure as error:  # e.g. a learning rate so high the loss diverges
        import keras_tuner

        raise keras_tuner.errors.FailedTrialError(str(error)) from error
    except (UsageError, DiskFull) as error:  # retrying would refuse, or fill the disk, again
        raise fatal(error) from error
    finally:
        import keras

        keras.backend.clear_session()  # the next trial builds a fresh model and graph


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda line: log(prefix + line)


def _scores(history: list[dict], cost: dict, start: float) -> dict:
    """What a trial reports to the oracle: the best epoch's metrics, the model's size and cost."""
    return {
        "val_accuracy": max(row["val_accuracy"] for row in history),
        "val_loss": min(row["val_loss"] for row in history),
        "params": float(cost["params"]),
        "multiply_adds": float(cost["multiply_adds"]),
        "epochs": float(len(history)),
        "seconds": round(time.perf_counter() - start, 2),
    }


def role() -> str:
    """ "chief" or "worker" in KerasTuner's distributed mode (KERASTUNER_* variables), else "single"."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not os.environ.get(name):
            raise UsageError(
                f"KERASTUNER_ORACLE_IP is set but {name} is not; distributed tuning needs "
                "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT."
            )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def check_oracle_address(allow_remote: bool) -> None:
    """Refuses to serve KerasTuner's oracle beyond this machine unless asked.

    The chief serves the oracle with gRPC on KERASTUNER_ORACLE_IP with no authentication and no
    encryption: anyone who reaches the port can read the search and report forged results. On
    loopback only local workers reach it; across machines use a private network, an SSH tunnel
    (chief on 127.0.0.1, `ssh -L PORT:127.0.0.1:PORT chief` from each worker) or a mesh VPN, and
    pass `allow_remote` (--allow-remote-oracle) for a non-loopback address.
    """
    import ipaddress

    address = os.environ.get("KERASTUNER_ORACLE_IP", "")
    if address in ("localhost", "") or allow_remote:
        return
    try:
        loopback = ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if not loopback:
        raise UsageError(
            f"KERASTUNER_ORACLE_IP={address} would serve KerasTuner's oracle, which has no authentication, "
            "beyond this machine; use 127.0.0.1 with an SSH tunnel, or pass --allow-remote-oracle on a private "
            "network (docs/tuning.md, Security)"
        )


def _make_oracle(tune: TuneConfig):
    import keras_tuner

    objective = keras_tuner.Objective(tune.objective, OBJECTIVES[tune.objective])
    common = dict(objective=objective, seed=tune.seed + 1)
    if tune.tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=tune.trial_limit, **common)
    if tune.tuner == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=tune.trial_limit, num_initial_points=tune.initial_points, **common
        )
    oracle = keras_tuner.oracles.HyperbandOracle(
        max_epochs=tune.epochs_per_trial,
        factor=tune.hyperband_factor,
        hyperband_iterations=tune.hyperband_iterations,
        **common,
    )
    oracle.max_trials = tune.trial_limit  # an optional cap on top of the bracket schedule
    return oracle


def _hyperband_min_epochs(tune: TuneConfig) -> int:
    """The fewest epochs any Hyperband round trains (KerasTuner's bracket formula)."""
    brackets, epochs = 0, float(tune.epochs_per_trial)
    while epochs >= 1:
        epochs /= tune.hyperband_factor
        brackets += 1
    return math.ceil(tune.epochs_per_trial / tune.hyperband_factor ** (brackets - 1))


@holds_lock("results_dir", "tune", writer=lambda arguments: role() != "worker")  # workers share the chief's
def search(
    space: SearchSpace,
    tune: TuneConfig,
    data_config,
    train_config,
    results_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    allow_remote_oracle: bool = False,
    log: Callable[[str], None] = print,
) -> SearchResult | None:
    """Runs (or resumes) a search; returns the ranked trials, or None on a distributed worker.

    `train_config` is the base recipe (batch, strategy, precision, steps_per_epoch, seed); each trial
    replaces its epochs (`tune.epochs_per_trial`, or Hyperband's round), learning rate and weight
    decay. Raises UsageError for a bad space, a cost limit nothing meets or a results directory of
    another search; TrainingFailure when KerasTuner stops after consecutive failed trials.
    """
    from resnet_keras.data import pipeline as data_lib

    who = role()
    if who == "chief":
        check_oracle_address(allow_remote_oracle)
    results_dir = as_path(results_dir)
    check_reachable(results_dir)  # offline, a bucket fails here in one line
    info = data_lib.describe(data_config)  # fails fast (exit 2) on a missing dataset
    train_config = _trial_train_config(space, tune, train_config, info.num_classes)
    spec = {
        "format": SEARCH_FORMAT,
        "space": space.to_dict(),
        "tune": tune.to_dict(),
        "num_classes": info.num_classes,
        "data": data_config.to_dict(),
        "train": {k: v for k, v in train_config.to_dict().items() if k not in ("learning_rate", "weight_decay")},
    }
    resuming = prepare_results_dir(results_dir, spec, overwrite, who)
    costs, architectures = _within_cost_limit(space, tune, info.num_classes, results_dir, log)
    tuner = _tuner_class()(
        oracle=_make_oracle(tune),
        hypermodel=_hypermodel_class()(space, info.num_classes, architectures),
        directory=str(results_dir),
        project_name=PROJECT,
        overwrite=False,
        data_config=data_config,
        train_config=train_config,
        costs=costs,
        log=log,
    )
    if resuming and who != "worker":
        trials = tuner.oracle.trials.values()
        done = sum(t.status in ("COMPLETED", "FAILED") for t in trials)
        log(
            f"Resuming the search in {results_dir}: {done} finished trials are kept"
            + (f", {len(trials) - done} interrupted trial(s) restart" if len(trials) > done else "")
        )
    _run_search(tuner, results_dir)
    if who == "worker":
        return None
    return write_reports(tuner, space, tune, data_config, train_config, results_dir, costs, log=log)


def _trial_train_config(space: SearchSpace, tune: TuneConfig, train_config, num_classes: int):
    """The base recipe every trial starts from, checked against every candidate network."""
    for arch in space.architectures():  # a training size the networks cannot use fails here, not in each trial
        train_config.for_model(space.model_config(arch, num_classes=num_classes))
    if tune.tuner == "hyperband" and train_config.warmup_epochs:
        # Every round of a bracket must share one run config: warm up within the shortest round.
        warmup = min(train_config.warmup_epochs, 0.5 * _hyperband_min_epochs(tune))
        train_config = dataclasses.replace(train_config, warmup_epochs=warmup)
    return dataclasses.replace(train_config, epochs=tune.epochs_per_trial)


def _within_cost_limit(
    space: SearchSpace, tune: TuneConfig, num_classes: int, results_dir: Path, log: Callable[[str], None]
) -> tuple[dict, list[Architecture] | None]:
    """(costs, the feasible candidates) under a cost limit; ({}, None) without one, or when all fit."""
    costs: dict = {}
    architectures = None
    if tune.max_params is not None or tune.max_flops is not None:
        costs = candidate_costs(space, num_classes, results_dir / "costs.json", log=log)
        feasible = feasible_architectures(space, costs, tune.max_params, tune.max_flops)
        if len(feasible) < len(costs):
            architectures = feasible
            log(
                f"{len(feasible)} of {len(costs)} candidate networks meet the cost limit: "
                + ", ".join(a.label for a in feasible)
            )
    return costs, architectures


def _run_search(tuner, results_dir: Path) -> None:
    """KerasTuner's trial loop, its stops as our errors."""
    try:
        with space_for(results_dir):  # KerasTuner's own files (oracle.json, trial.json) on a full disk
            tuner.search()
    except _FatalUsage as error:
        raise error.error from None
    except RuntimeError as error:
        if "consecutive failures" not in str(error):
            raise
        last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise TrainingFailure(f"the search stopped after consecutive failed trials (last: {last})") from None
