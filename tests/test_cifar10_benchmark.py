"""The CIFAR-10 budget record's script: epochs fitted to the budget, and the accounting of its seconds."""

import importlib.util
import json
import math
import types

import pytest
from conftest import REPO


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_epochs_for_budget_leaves_the_margin_and_trains_at_least_one_epoch():
    bench = load_script("cifar10_benchmark")
    assert bench.epochs_for_budget(1409, 72.0) == int(bench.BUDGET_MARGIN * 1409 / 72.0) == 18
    assert bench.epochs_for_budget(1409, 140.0) == 9  # a machine half as fast trains half the epochs
    assert bench.epochs_for_budget(10, 72.0) == 1


def test_refit_fits_what_is_left_to_the_last_real_epoch_and_sets_the_retrace_aside():
    bench = load_script("cifar10_benchmark")
    left = 1409 - 9.0 - 110.0
    assert bench.refit_epochs([56.0, 54.0], left, 2.0) == 2 + int(bench.REFIT_MARGIN * (left - 2.0) / 54.0) == 24
    assert bench.refit_epochs([56.0, 54.0], 100.0, 2.0) == 3  # at least one epoch more
    assert bench.refit_epochs([50.0, 50.0], 500.0, 0.0) == 2 + 9  # 0.96 x 10 epochs
    # A one-epoch warm-up: that epoch's pace is taken without its tracing.
    assert bench.refit_epochs([52.0], 502.0, 2.0) == 1 + int(bench.REFIT_MARGIN * 500.0 / 50.0) == 10


def watch_epochs(bench, watch, seconds, first_step=1.0, steps=60):
    """Feeds `watch` epochs of these seconds on a fake clock, the first step of its first epoch taking
    `first_step` s; returns the _Refit it raised (or None)."""
    clock = iter(range(0, 10**6, 1000))  # any increasing times: only the first step's is read
    now = [0.0]
    bench.time = types.SimpleNamespace(perf_counter=lambda: now[0])
    watch.trainer = types.SimpleNamespace(steps_per_epoch=steps)
    for epoch, took in enumerate(seconds, 1):
        now[0] = float(next(clock))
        watch.on_epoch_begin(epoch)
        now[0] += first_step
        watch.on_train_batch_end(epoch, 1, None)
        try:
            watch.on_epoch_end(epoch, dict(seconds=took))
        except bench._Refit as stop:
            return stop
    return None


def test_budget_watch_stops_at_the_warm_up_and_when_the_pace_would_overrun():
    bench = load_script("cifar10_benchmark")
    # The first step took 3 s against an average of 56 / 56 = 1 s: 2 s of tracing.
    stop = watch_epochs(bench, bench.BudgetWatch(23, 9.0, 1409.0, warmup_end=2), [56.0, 54.0, 54.0], 3.0, 56)
    assert (stop.reason, stop.retrace) == ("warm-up", 2.0)
    assert stop.epochs == bench.refit_epochs([56.0, 54.0], 1409 - 9 - 110, 2.0)
    # Slow epochs during the warm-up wait for its end.
    stop = watch_epochs(bench, bench.BudgetWatch(25, 120.0, 1409.0, warmup_end=2), [70.0] + [57.0] * 24, 12.0)
    assert stop.reason == "warm-up" and stop.retrace == pytest.approx(12.0 - 70.0 / 60)
    assert stop.epochs == bench.refit_epochs([70.0, 57.0], 1409 - 120 - 127, 12.0 - 70.0 / 60)
    # 25 epochs planned from 54 s, then they take 57 s (the first 60 s, 3 s of it tracing): stopped at
    # once, with as many epochs as fit at 57 s after a restart's tracing.
    stop = watch_epochs(bench, bench.BudgetWatch(25, 120.0, 1409.0), [60.0] + [57.0] * 24, 4.0)
    assert (stop.reason, stop.epoch_seconds, stop.retrace) == ("pace", 57.0, 3.0)
    assert stop.epochs == 1 + int((1409 - 120 - 60 - 3.0) / 57.0) < 25
    # On pace: no stop; and none when only the last epoch is left (a restart would save nothing).
    assert watch_epochs(bench, bench.BudgetWatch(25, 60.0, 1409.0), [56.0] + [53.0] * 24, 4.0) is None  # 1,388 s
    assert watch_epochs(bench, bench.BudgetWatch(3, 0.0, 100.0), [30.0, 45.0, 45.0]) is None  # over, but by one


@pytest.mark.slow
def test_budget_run_fits_its_epochs_and_counts_the_calibration(image_data, tmp_path, capsys):
    bench = load_script("cifar10_benchmark")
    budget = 20.0  # room for a calibration, the warm-up and more epochs after the refit
    summary_path = tmp_path / "summary.json"
    argv = ["--data-root", str(image_data / "cifar10-mini"), "--width", "0.5", "--batch-size", "32"]
    argv += ["--budget-seconds", str(budget), "--model-dir", str(tmp_path / "run"), "--json-out", str(summary_path)]
    assert bench.main(argv) == 0

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    calibration = next(line for line in lines if line["kind"] == "calibration")
    epochs = [line for line in lines if line["kind"] == "epoch"]
    summary = json.loads(summary_path.read_text())

    assert calibration["steps"] == 2 * bench.CALIBRATION_STEPS and calibration["epoch_seconds"] > 0
    provisional = bench.epochs_for_budget(budget - calibration["train_seconds"], calibration["epoch_seconds"])
    # Fitted again at the end of the warm-up (its whole epochs, at least one) from the real epochs, then
    # resumed; unless the provisional plan leaves at most one epoch after the warm-up, which a slow machine's
    # calibration can (the refit rule itself is timed-free in the test above).
    refits = [line for line in lines if line["kind"] == "refit"]
    warmup_end = max(1, math.ceil(summary["warmup_epochs"]))
    if provisional <= warmup_end + 1:
        assert refits == [] and summary["epochs"] == len(epochs) == provisional and summary["refits"] == []
    else:
        assert refits[0]["reason"] == "warm-up" and refits[0]["planned_epochs"] == provisional
        before = [float(row["seconds"]) for row in bench.read_history(tmp_path / "run")[:warmup_end]]
        assert refits[0]["after_epoch"] == warmup_end
        left = budget - calibration["train_seconds"] - sum(before)
        assert refits[0]["epochs"] == bench.refit_epochs(before, left, refits[0]["retrace_seconds"])
        assert all(r["reason"] == "pace" and r["epochs"] < r["planned_epochs"] for r in refits[1:])  # only fewer
        assert summary["epochs"] == refits[-1]["epochs"] == len(epochs) and summary["refits"] == refits
    # Cumulative training seconds start from the calibration's and only grow.
    seconds = [calibration["train_seconds"]] + [e["train_seconds"] for e in epochs]
    assert seconds == sorted(seconds) and seconds[1] > seconds[0]
    assert summary["train_seconds"] == pytest.approx(epochs[-1]["train_seconds"], abs=0.2)
    # The record is the last epoch that ended inside the budget.
    inside = [e["val_accuracy"] for e in epochs if e["train_seconds"] <= budget]
    assert summary["val_accuracy_within_budget"] == (inside[-1] if inside else None)
    assert summary["final_within_budget"] == (epochs[-1]["train_seconds"] <= budget)
    assert 0.0 <= summary["final_val_accuracy_tta"] <= 1.0 and summary["tta"] == "shifts"
    assert summary["final_val_accuracy_by_tta"]["shifts"] == summary["final_val_accuracy_tta"]
    assert set(summary["final_val_accuracy_by_tta"]) == {"shifts", "flip"}


def test_ablation_lists_arms_and_tabulates_against_the_first(capsys):
    ablation = load_script("cifar10_ablation")
    assert ablation.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(ablation.arm_key(name) in listed for name in ablation.ARMS)

    def result(accuracy, within=True):
        return dict(
            epochs=18,
            train_seconds=1400.0,
            images_per_second=620.0,
            val_accuracy_within_budget=accuracy,
            final_val_accuracy_tta=0.9,
            final_within_budget=within,
        )

    text = ablation.table({"baseline": result(0.88), "no EMA": result(0.8825), "SE": result(0.87, False)})
    rows = text.splitlines()[2:]
    assert rows[0].startswith("| baseline | 18 |") and "88.00 %" in rows[0]
    assert "| +0.25 |" in rows[1] and "90.00 %" in rows[1]
    assert "| -1.00 |" in rows[2] and rows[2].endswith("| - |")  # TTA of a model past the budget is not shown


def test_ablation_refuses_an_unknown_arm():
    ablation = load_script("cifar10_ablation")
    with pytest.raises(SystemExit, match="unknown arm"):
        ablation.main(["--arms", "baseline", "no-such-arm"])
