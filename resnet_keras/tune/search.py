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
* A cost limit (`max_params`, `max_flops` in multiply-adds, counted on built models) never trains
  an oversized candidate: when the limit excludes some (depth, width, shortcut) combinations, the
  three hyperparameters become one ``architecture`` choice over the feasible ones, listed by size
  (Bayesian optimisation encodes a choice by its index, so it sees a size axis).
* The results directory survives interruption: KerasTuner reloads its oracle (``overwrite=False``),
  finished trials are not rerun, and an interrupted trial is retried in the same run directory,
  which resumes after its last finished epoch. Hyperband's successive-halving trials start from a
  copy of the promoted trial's run directory and train on from ``tuner/initial_epoch`` to
  ``tuner/epochs``.
* Distributed search: KerasTuner's chief/worker mode (``KERASTUNER_TUNER_ID``,
  ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``); the chief serves the oracle and writes the
  reports, workers run trials (``scripts/tune_distributed.py`` starts both on one machine).

Results directory layout: ``search.json`` (what was searched; another search is refused),
``kerastuner/`` (oracle.json, tuner state, ``trial_<id>/trial.json`` and ``trial_<id>/run/``),
``costs.json`` (params and multiply-adds per architecture, when a cost limit is set),
``trials.csv`` (ranked), ``best.yaml`` (for ``resnet-keras train --config``) and
``objective_vs_size.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_keras.config import specs
from resnet_keras.config.schema import COMPONENT_FIELDS, SHORTCUTS, ModelConfig
from resnet_keras.core import plots
from resnet_keras.core.errors import DiskFull, ResNetKerasError, TrainingFailure, UsageError, expect, is_int, is_number
from resnet_keras.core.files import space_for
from resnet_keras.core.storage import as_path, check_reachable, copy_folder, rmtree, write_atomic
from resnet_keras.runs.rundir import RunDir
from resnet_keras.runs.runlock import holds_lock

TUNERS = ("random", "hyperband", "bayesian")
# Objective -> KerasTuner direction; both are the best epoch's value, as KerasTuner's own Tuner scores.
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}
DEFAULT_DEPTHS = {"cifar": (20, 32, 44, 56, 110), "imagenet": (18, 34, 50, 101, 152)}
DEFAULT_WIDTHS = (0.5, 1.0, 2.0)
PROJECT = "kerastuner"
SEARCH_FILE = "search.json"
SEARCH_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class LogRange:
    """A continuous hyperparameter sampled log-uniformly in [low, high] (KerasTuner `hp.Float`)."""

    low: float
    high: float

    def __post_init__(self):
        expect(
            is_number(self.low) and is_number(self.high) and 0 < self.low < self.high,
            "range",
            f"{self.low}:{self.high}",
            "low:high with 0 < low < high",
        )

    def to_json(self):
        return {"log_range": [float(self.low), float(self.high)]}


def split_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def parse_ints(value, field: str) -> tuple[int, ...]:
    """ "20,32,44", [20, 32] or 20 -> (20, 32, ...); UsageError for anything else."""
    out = []
    for item in split_list(value):
        try:
            number = int(str(item))
        except ValueError:
            raise UsageError(f"Received: {field}={value!r}; expected a comma-separated list of integers.") from None
        out.append(number)
    return tuple(dict.fromkeys(out))


def parse_floats(value, field: str, *, allow_range: bool = False) -> tuple[float, ...] | LogRange:
    """ "0.5,1,2" -> (0.5, 1.0, 2.0); with allow_range also "0.01:0.4" -> LogRange(0.01, 0.4)."""
    if isinstance(value, dict) and "log_range" in value:  # from search.json
        return LogRange(*value["log_range"])
    if allow_range and isinstance(value, str) and ":" in value:
        parts = value.split(":")
        try:
            low, high = (float(part) for part in parts)
        except ValueError:
            raise UsageError(f"Received: {field}={value!r}; expected low:high, e.g. 0.01:0.4.") from None
        return LogRange(low, high)
    out = []
    for item in split_list(value):
        try:
            number = float(str(item))
        except ValueError:
            expected = "a comma-separated list of numbers" + (" or a log range low:high" if allow_range else "")
            raise UsageError(f"Received: {field}={value!r}; expected {expected}.") from None
        out.append(number)
    return tuple(dict.fromkeys(out))


_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_count(value, field: str) -> int | None:
    """A parameter or multiply-add budget: 250000, "250k", "1.5M" or "2G"; None for no limit."""
    if value is None:
        return None
    match = re.fullmatch(
        r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgG]?)\s*", str(value).replace(",", "").replace("_", "")
    )
    if not match or float(match.group(1)) * _SUFFIXES[match.group(2).lower()] < 1:
        raise UsageError(f"Received: {field}={value!r}; expected a positive count such as 250000, 250k, 1.5M or 2G.")
    return int(float(match.group(1)) * _SUFFIXES[match.group(2).lower()])


# ----------------------------------------------------------------------------- the search space


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One (depth, width, shortcut) candidate; `label` names it in the ``architecture`` hyperparameter."""

    depth: int
    width: float
    shortcut: str

    @property
    def label(self) -> str:
        return f"resnet{self.depth}-w{self.width:g}-{self.shortcut}"


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What `search` may choose from. `None` fields resolve to defaults in `__post_init__`.

    depths: any depth of `family` (CIFAR: 6n+2, default the presets 20/32/44/56/110; ImageNet:
    18/34/50/101/152). family: default from the depths (Table 1 depths are ImageNet), else
    "cifar". widths: multipliers (default 0.5/1/2). shortcuts: "A" and/or "B". learning_rates and
    weight_decays: a tuple of choices or a `LogRange` (defaults 0.01..0.4 and 1e-5..1e-3,
    log-uniform). image_size: default the family's (32 CIFAR, 224 ImageNet).
    """

    depths: tuple[int, ...] | None = None
    widths: tuple[float, ...] = DEFAULT_WIDTHS
    shortcuts: tuple[str, ...] = SHORTCUTS
    learning_rates: tuple[float, ...] | LogRange = LogRange(0.01, 0.4)
    weight_decays: tuple[float, ...] | LogRange = LogRange(1e-5, 1e-3)
    family: str | None = None
    variant: str = "v1"
    image_size: int | None = None

    def __post_init__(self):
        family = self.family
        if family is None:
            families = {specs.default_family(d) for d in self.depths or () if is_int(d) and _valid_depth(d)}
            if len(families) > 1:
                raise UsageError(
                    f"Received: depths={list(self.depths)}; they belong to different families "
                    "(18/34/50/101/152 are ImageNet depths); give --family cifar or --family imagenet."
                )
            family = families.pop() if families else "cifar"
        expect(family in specs.FAMILIES, "family", family, " or ".join(specs.FAMILIES))
        object.__setattr__(self, "family", family)
        if self.depths is None:
            object.__setattr__(self, "depths", DEFAULT_DEPTHS[family])
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "widths", tuple(float(w) if is_number(w) else w for w in self.widths))
        object.__setattr__(self, "shortcuts", tuple(str(s).upper() for s in self.shortcuts))
        for field in ("depths", "widths", "shortcuts", "learning_rates", "weight_decays"):
            value = getattr(self, field)
            if not isinstance(value, LogRange) and not value:
                flag = "--" + field.replace("_", "-").replace("learning-rates", "lrs")
                raise UsageError(f"empty search space: {flag} gives no values.")
        expect(all(is_int(d) for d in self.depths), "depths", self.depths, "integers")
        expect(all(is_number(w) for w in self.widths), "widths", self.widths, "numbers")
        if not isinstance(self.learning_rates, LogRange):
            expect(
                all(is_number(v) and v > 0 for v in self.learning_rates),
                "learning_rates",
                self.learning_rates,
                "numbers > 0",
            )
        if not isinstance(self.weight_decays, LogRange):
            expect(
                all(is_number(v) and v >= 0 for v in self.weight_decays),
                "weight_decays",
                self.weight_decays,
                "numbers >= 0",
            )
        for shortcut in self.shortcuts:
            expect(shortcut in SHORTCUTS, "shortcuts", self.shortcuts, "values among 'A' (zero-pad), 'B' (projection)")
        for depth, width in itertools.product(self.depths, self.widths):
            # Validates depth for the family, width, variant and image size without TensorFlow.
            self.model_config(Architecture(depth, width, self.shortcuts[0]), num_classes=1)
        if self.image_size is None:
            object.__setattr__(self, "image_size", ModelConfig(depth=self.depths[0], family=family).image_size)

    def architectures(self) -> list[Architecture]:
        return [Architecture(d, w, s) for d, w, s in itertools.product(self.depths, self.widths, self.shortcuts)]

    def model_config(self, arch: Architecture, *, num_classes: int) -> ModelConfig:
        return ModelConfig(
            depth=arch.depth,
            family=self.family,
            variant=self.variant,
            width=arch.width,
            shortcut=arch.shortcut,
            image_size=self.image_size,
            num_classes=num_classes,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = (
                value.to_json() if isinstance(value, LogRange) else (list(value) if isinstance(value, tuple) else value)
            )
        return out


def _valid_depth(depth: int) -> bool:
    try:
        specs.default_family(depth)
        return True
    except ResNetKerasError:
        return False


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """How to search. max_trials: None means 10 for random/bayesian and the bracket schedule for
    Hyperband (a number caps it). epochs_per_trial is Hyperband's max_epochs. max_params (trainable)
    and max_flops (multiply-adds per image, as `resnet-keras info` counts them) limit the candidates.
    initial_points: Bayesian random start (KerasTuner's default 3 x the number of hyperparameters).
    seed: the oracle's seed (KerasTuner treats 0 as "random", so it gets seed + 1)."""

    tuner: str = "random"
    max_trials: int | None = None
    epochs_per_trial: int = 10
    objective: str = "val_accuracy"
    max_params: int | None = None
    max_flops: int | None = None
    hyperband_factor: int = 3
    hyperband_iterations: int = 1
    initial_points: int | None = None
    seed: int = 0

    def __post_init__(self):
        expect(self.tuner in TUNERS, "tuner", self.tuner, "one of " + ", ".join(TUNERS))
        expect(self.objective in OBJECTIVES, "objective", self.objective, "one of " + ", ".join(OBJECTIVES))
        expect(
            self.max_trials is None or (is_int(self.max_trials) and self.max_trials >= 1),
            "max_trials",
            self.max_trials,
            "an integer >= 1",
        )
        expect(
            is_int(self.epochs_per_trial) and self.epochs_per_trial >= 1,
            "epochs_per_trial",
            self.epochs_per_trial,
            "an integer >= 1",
        )
        for field in ("max_params", "max_flops"):
            value = getattr(self, field)
            expect(value is None or (is_int(value) and value >= 1), field, value, "None or an integer >= 1")
        expect(
            is_int(self.hyperband_factor) and self.hyperband_factor >= 2,
            "hyperband_factor",
            self.hyperband_factor,
            "an integer >= 2",
        )
        expect(
            is_int(self.hyperband_iterations) and self.hyperband_iterations >= 1,
            "hyperband_iterations",
            self.hyperband_iterations,
            "an integer >= 1",
        )
        expect(
            self.initial_points is None or (is_int(self.initial_points) and self.initial_points >= 1),
            "initial_points",
            self.initial_points,
            "None or an integer >= 1",
        )
        expect(is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")

    @property
    def trial_limit(self) -> int | None:
        if self.max_trials is None and self.tuner != "hyperband":
            return 10
        return self.max_trials

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
            from resnet_keras.training import train as train_lib

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
            trial_dir = as_path(self.get_trial_dir(trial.trial_id))
            run_dir = trial_dir / "run"
            _write_json(
                trial_dir / "ran_by.json", dict(tuner_id=self.tuner_id, host=socket.gethostname(), pid=os.getpid())
            )
            if values.get("tuner/trial_id") and not RunDir(run_dir).is_run():
                self._continue_from(values["tuner/trial_id"], int(values.get("tuner/initial_epoch", 0)), run_dir)
            prefix = f"[trial {trial.trial_id}] "
            self.log(
                f"{prefix}{plan.model_config.name} shortcut {plan.architecture.shortcut}, "
                f"lr {plan.learning_rate:.4g}, weight decay {plan.weight_decay:.3g}, {epochs} epochs -> {run_dir}"
            )
            try:
                with space_for(run_dir):  # a full disk is DiskFull here, which is not retried
                    train_lib.train(
                        plan.model_config,
                        self.data_config,
                        train_config,
                        run_dir,
                        log=lambda line: self.log(prefix + line),
                    )
            except TrainingFailure as error:  # e.g. a learning rate so high the loss diverges
                import keras_tuner

                raise keras_tuner.errors.FailedTrialError(str(error)) from error
            except (UsageError, DiskFull) as error:  # retrying would refuse, or fill the disk, again
                raise FatalUsage(error) from error
            finally:
                import keras

                keras.backend.clear_session()  # the next trial builds a fresh model and graph
            history = RunDir(run_dir).read_history()
            if plan.architecture.label not in self.costs:  # counted once per architecture, not per trial
                self.costs[plan.architecture.label] = measure(plan.model_config)
            cost = self.costs[plan.architecture.label]
            return {
                "val_accuracy": max(row["val_accuracy"] for row in history),
                "val_loss": min(row["val_loss"] for row in history),
                "params": float(cost["params"]),
                "multiply_adds": float(cost["multiply_adds"]),
                "epochs": float(len(history)),
                "seconds": round(time.perf_counter() - start, 2),
            }

        def _continue_from(self, past_id: str, initial_epoch: int, run_dir: Path) -> None:
            """Hyperband promotes `past_id`: start from a copy of its run (train resumes when epochs grow)."""
            past = as_path(self.get_trial_dir(past_id)) / "run"
            if not RunDir(past).checkpoint_dir.is_dir():
                self.log(f"trial {past_id}'s run is not on this machine; training from scratch")
                return
            copy_folder(past, run_dir, marker=RunDir.CONFIG)
            self.log(f"continuing trial {past_id} from epoch {initial_epoch}")

        def load_model(self, trial):
            """The trial's final trained model (`get_best_models` works on a finished search)."""
            return RunDir(as_path(self.get_trial_dir(trial.trial_id)) / "run").load_model("final")

    return ResNetTuner


# ----------------------------------------------------------------------------- cost of candidates


def measure(model_config: ModelConfig) -> dict[str, int]:
    """Trainable parameters and multiply-adds per image, counted on the built model."""
    import keras

    from resnet_keras.zoo.models import describe

    row = describe(model_config)
    keras.backend.clear_session()
    return {"params": int(row["trainable_params"]), "multiply_adds": int(row["multiply_adds"])}


def candidate_costs(
    space: SearchSpace, num_classes: int, cache: Path | None = None, log: Callable[[str], None] = print
) -> dict[str, dict[str, int]]:
    """{architecture label: {"params", "multiply_adds"}} for every candidate, cached in `cache`."""
    costs = json.loads(cache.read_text()) if cache and cache.exists() else {}
    missing = [arch for arch in space.architectures() if arch.label not in costs]
    if missing:
        log(f"Counting parameters and multiply-adds of {len(missing)} candidate networks...")
    for arch in missing:
        costs[arch.label] = measure(space.model_config(arch, num_classes=num_classes))
        if cache:
            _write_json(cache, costs)
    return {arch.label: costs[arch.label] for arch in space.architectures()}


def feasible_architectures(
    space: SearchSpace, costs: dict, max_params: int | None, max_flops: int | None
) -> list[Architecture]:
    """The candidates within the limits, smallest first; UsageError when none is."""
    archs = space.architectures()
    ok = [
        a
        for a in archs
        if (max_params is None or costs[a.label]["params"] <= max_params)
        and (max_flops is None or costs[a.label]["multiply_adds"] <= max_flops)
    ]
    if not ok:
        small_p = min(archs, key=lambda a: costs[a.label]["params"])
        small_f = min(archs, key=lambda a: costs[a.label]["multiply_adds"])
        limits = []
        if max_params is not None:
            limits.append(
                f"--max-params {max_params:,} (the smallest, {small_p.label}, has "
                f"{costs[small_p.label]['params']:,} parameters)"
            )
        if max_flops is not None:
            limits.append(
                f"--max-flops {max_flops:,} (the cheapest, {small_f.label}, needs "
                f"{costs[small_f.label]['multiply_adds']:,} multiply-adds)"
            )
        raise UsageError(
            "no candidate meets the cost limit "
            + " and ".join(limits)
            + "; raise the limit or add smaller --depths/--widths."
        )
    return sorted(ok, key=lambda a: (costs[a.label]["params"], costs[a.label]["multiply_adds"], a.label))


# ----------------------------------------------------------------------------- results directory


def _write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def _prepare_results_dir(results_dir: Path, spec: dict, overwrite: bool, who: str) -> bool:
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
    _write_json(search_file, spec)
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


# ----------------------------------------------------------------------------- the search


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
    for arch in space.architectures():  # a training size the networks cannot use fails here, not in each trial
        train_config.for_model(space.model_config(arch, num_classes=info.num_classes))
    if tune.tuner == "hyperband" and train_config.warmup_epochs:
        # Every round of a bracket must share one run config: warm up within the shortest round.
        warmup = min(train_config.warmup_epochs, 0.5 * _hyperband_min_epochs(tune))
        train_config = dataclasses.replace(train_config, warmup_epochs=warmup)
    train_config = dataclasses.replace(train_config, epochs=tune.epochs_per_trial)
    spec = {
        "format": SEARCH_FORMAT,
        "space": space.to_dict(),
        "tune": tune.to_dict(),
        "num_classes": info.num_classes,
        "data": data_config.to_dict(),
        "train": {k: v for k, v in train_config.to_dict().items() if k not in ("learning_rate", "weight_decay")},
    }
    resuming = _prepare_results_dir(results_dir, spec, overwrite, who)

    costs: dict = {}
    architectures = None
    if tune.max_params is not None or tune.max_flops is not None:
        costs = candidate_costs(space, info.num_classes, results_dir / "costs.json", log=log)
        feasible = feasible_architectures(space, costs, tune.max_params, tune.max_flops)
        if len(feasible) < len(costs):
            architectures = feasible
            log(
                f"{len(feasible)} of {len(costs)} candidate networks meet the cost limit: "
                + ", ".join(a.label for a in feasible)
            )
    hypermodel = _hypermodel_class()(space, info.num_classes, architectures)
    tuner = _tuner_class()(
        oracle=_make_oracle(tune),
        hypermodel=hypermodel,
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
    if who == "worker":
        return None
    return write_reports(tuner, space, tune, data_config, train_config, results_dir, costs, log=log)


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


def _best_yaml(best: dict, space: SearchSpace, data_config, train_config, tune: TuneConfig) -> str:
    import yaml

    config = dict(
        depth=best["depth"],
        family=space.family,
        variant=space.variant,
        width=best["width"],
        shortcut=best["shortcut"],
        image_size=space.image_size,
        dataset=data_config.dataset,
        data_dir=os.path.abspath(data_config.data_dir) if data_config.data_dir else None,
        val_split=data_config.val_split,
        validation_fraction=data_config.validation_fraction,
        deterministic=data_config.deterministic,
        skip_corrupt=data_config.skip_corrupt,
        recipe=train_config.recipe,
        epochs=best["epochs"] or train_config.epochs,
        batch_size=train_config.batch_size,
        lr=float(best["learning_rate"]),
        weight_decay=float(best["weight_decay"]),
        label_smoothing=train_config.label_smoothing,
        warmup_epochs=train_config.warmup_epochs,
        strategy=train_config.strategy,
        mixed_precision=train_config.mixed_precision,
        xla=train_config.xla,
        seed=train_config.seed,
        **{field: getattr(train_config, field) for field in COMPONENT_FIELDS},
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
