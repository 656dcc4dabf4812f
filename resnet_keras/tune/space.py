"""What a hyperparameter search may choose from, and what its candidates cost.

`SearchSpace` holds the depths, widths, shortcuts, learning rates and weight decays (a tuple of
choices, or a `LogRange` sampled log-uniformly); `TuneConfig` says how to search (the KerasTuner
oracle, trial budget, objective, cost limits). The parsers turn the command line's lists
("20,32,44", "0.01:0.4", "250k") into them. A cost limit (`max_params`, `max_flops` in
multiply-adds, counted on built models by `measure`) never trains an oversized candidate:
`feasible_architectures` lists the candidates within it, smallest first.

No KerasTuner and no TensorFlow at import: `measure` imports them when it counts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_keras.config import specs
from resnet_keras.config.schema import SHORTCUTS, ModelConfig
from resnet_keras.core.errors import ResNetKerasError, UsageError, expect, is_int, is_number
from resnet_keras.core.storage import write_atomic

TUNERS = ("random", "hyperband", "bayesian")
# Objective -> KerasTuner direction; both are the best epoch's value, as KerasTuner's own Tuner scores.
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}
DEFAULT_DEPTHS = {"cifar": (20, 32, 44, 56, 110), "imagenet": (18, 34, 50, 101, 152)}
DEFAULT_WIDTHS = (0.5, 1.0, 2.0)


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
            write_json(cache, costs)
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


def write_json(path: Path, data) -> None:
    """The search's JSON files (search.json, costs.json, ran_by.json): sorted keys, written atomically."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
