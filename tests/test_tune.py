"""Hyperparameter search: the space, the HyperModel, real KerasTuner searches on real images, resume,
the best config through `train --config`, bad input, and a chief with two workers on localhost.

Trials are tiny (ResNet-8/14 at width <= 0.25, 32x32 CIFAR-10 JPEGs from tests/fixtures/cifar10-mini,
batch 16, 2 steps per epoch), so a trial costs its TensorFlow tracing more than its training.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.core.errors import ConfigError, UsageError
from resnet_keras.tune import results as tune_results
from resnet_keras.tune import space as tune_space
from resnet_keras.tune import tuner as tune_tuner
from resnet_keras.tune.space import Architecture, LogRange, SearchSpace, TuneConfig

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--depths",
    "8",
    "--widths",
    "0.125,0.25",
    "--shortcuts",
    "A",
    "--epochs-per-trial",
    "1",
    "--steps-per-epoch",
    "2",
    "--batch-size",
    "16",
]


def quiet(_line):
    pass


def data_args(image_data):
    return ["--dataset", "folder", "--data-dir", str(image_data / "cifar10-mini")]


def read_trials(results_dir):
    with open(Path(results_dir) / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def trial_json(results_dir, trial_id):
    return json.loads((Path(results_dir) / "kerastuner" / f"trial_{trial_id}" / "trial.json").read_text())


def history_epochs(run_dir):
    with open(Path(run_dir) / "history.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def tune_cli(*args):
    return CliRunner().invoke(cli, ["tune", *args])


# ----------------------------------------------------------------------------- space and parsing (no training)


def test_parsers_accept_lists_ranges_and_counts():
    assert tune_space.parse_ints("20, 32,44", "depths") == (20, 32, 44)
    assert tune_space.parse_ints([20, 20, 56], "depths") == (20, 56)
    assert tune_space.parse_floats("0.5,1,2", "widths") == (0.5, 1.0, 2.0)
    assert tune_space.parse_floats("0.01:0.4", "lrs", allow_range=True) == LogRange(0.01, 0.4)
    assert [tune_space.parse_count(v, "max_params") for v in ("250k", "1.5M", "2G", 300000, "1,000")] == [
        250_000,
        1_500_000,
        2_000_000_000,
        300_000,
        1000,
    ]
    for bad in ("lots", "-5", "0"):
        with pytest.raises(UsageError, match="max_params"):
            tune_space.parse_count(bad, "max_params")
    with pytest.raises(UsageError, match="depths='20,x'"):
        tune_space.parse_ints("20,x", "depths")
    with pytest.raises(ConfigError, match="low:high"):
        tune_space.parse_floats("0.4:0.01", "lrs", allow_range=True)


def test_space_defaults_per_family_and_validation():
    cifar = SearchSpace()
    assert (cifar.family, cifar.depths, cifar.widths, cifar.shortcuts, cifar.image_size) == (
        "cifar",
        (20, 32, 44, 56, 110),
        (0.5, 1.0, 2.0),
        ("A", "B"),
        32,
    )
    assert isinstance(cifar.learning_rates, LogRange) and isinstance(cifar.weight_decays, LogRange)
    imagenet = SearchSpace(depths=(18, 34))
    assert (imagenet.family, imagenet.image_size) == ("imagenet", 224)
    assert SearchSpace(family="imagenet").depths == (18, 34, 50, 101, 152)
    assert SearchSpace(depths=(26, 50), family="cifar").depths == (26, 50)  # any 6n+2 with --family cifar
    with pytest.raises(UsageError, match="different families"):
        SearchSpace(depths=(20, 50))
    with pytest.raises(UsageError, match="empty search space: --widths"):
        SearchSpace(widths=())
    with pytest.raises(ConfigError, match="depth=21"):
        SearchSpace(depths=(20, 21))
    with pytest.raises(ConfigError, match="shortcuts"):
        SearchSpace(shortcuts=("C",))


def test_hypermodel_maps_hyperparameters_to_model_config():
    import keras_tuner

    space = SearchSpace(
        depths=(20, 32), widths=(0.5, 1), learning_rates=(0.05, 0.1), weight_decays=LogRange(1e-5, 1e-3)
    )
    hypermodel = tune_tuner._hypermodel_class()(space, num_classes=7)
    hp = keras_tuner.HyperParameters()
    hp.values.update(depth=32, width=0.5, shortcut="B", learning_rate=0.1, weight_decay=3e-4)
    plan = hypermodel.build(hp)
    config = plan.model_config
    assert (config.depth, config.family, config.width, config.shortcut, config.num_classes, config.image_size) == (
        32,
        "cifar",
        0.5,
        "B",
        7,
        32,
    )
    assert (plan.learning_rate, plan.weight_decay) == (0.1, 3e-4)
    names = {p.name: type(p).__name__ for p in hp.space}
    assert names == {
        "depth": "Choice",
        "width": "Choice",
        "shortcut": "Choice",
        "learning_rate": "Choice",
        "weight_decay": "Float",
    }

    # Under a cost limit the architecture is one choice over the feasible candidates only.
    feasible = [Architecture(20, 0.5, "A"), Architecture(32, 0.5, "A")]
    constrained = tune_tuner._hypermodel_class()(space, num_classes=7, architectures=feasible)
    hp = keras_tuner.HyperParameters()
    constrained.build(hp)
    (arch_hp,) = [p for p in hp.space if p.name == "architecture"]
    assert list(arch_hp.values) == ["resnet20-w0.5-A", "resnet32-w0.5-A"]
    assert not {"depth", "width", "shortcut"} & {p.name for p in hp.space}


def test_cost_limit_keeps_feasible_candidates_smallest_first():
    space = SearchSpace(depths=(20, 32), widths=(0.5, 1.0), shortcuts=("A",))
    costs = {
        a.label: {"params": a.depth * a.width * 1000, "multiply_adds": a.depth * a.width * 1e6}
        for a in space.architectures()
    }
    ok = tune_space.feasible_architectures(space, costs, max_params=20_000, max_flops=None)
    assert [a.label for a in ok] == ["resnet20-w0.5-A", "resnet32-w0.5-A", "resnet20-w1-A"]
    with pytest.raises(UsageError, match="no candidate meets the cost limit --max-flops 1,000 .*resnet20-w0.5-A"):
        tune_space.feasible_architectures(space, costs, max_params=None, max_flops=1000)


def test_a_bigger_max_trials_extends_a_search_but_other_changes_do_not():
    old = {"space": {"depths": [20]}, "tune": {"tuner": "random", "max_trials": 5}}
    assert (
        tune_results._differences(old, {"space": {"depths": [20]}, "tune": {"tuner": "random", "max_trials": 9}}) == []
    )
    assert tune_results._differences(
        old, {"space": {"depths": [20, 32]}, "tune": {"tuner": "hyperband", "max_trials": 5}}
    ) == ["space.depths: [20] -> [20, 32]", "tune.tuner: 'random' -> 'hyperband'"]


def test_a_search_written_before_newer_train_fields_still_resumes():
    from resnet_keras.config.schema import TrainConfig

    train = {
        k: v for k, v in TrainConfig(recipe="short").to_dict().items() if k not in ("learning_rate", "weight_decay")
    }
    new = {"train": train, "tune": {"tuner": "random"}}
    old = {
        "train": {k: v for k, v in train.items() if k not in ("optimizer", "ema_decay", "mixup")},
        "tune": new["tune"],
    }
    assert tune_results._differences(old, new) == []
    changed = {"train": {**train, "mixup": 0.5}, "tune": new["tune"]}
    assert tune_results._differences(old, changed) == ["train.mixup: 0.0 -> 0.5"]


# ----------------------------------------------------------------------------- bad input on the command line


def test_empty_space_is_exit_2_before_reading_data(tmp_path):
    result = tune_cli(
        "--depths",
        ",",
        "--dataset",
        "folder",
        "--data-dir",
        str(tmp_path / "missing"),
        "--results-dir",
        str(tmp_path / "r"),
    )
    assert result.exit_code == 2
    assert result.output.strip() == "Error: empty search space: --depths gives no values."
    assert not (tmp_path / "r").exists()


def test_cost_limit_nothing_meets_is_exit_2(tmp_path, image_data):
    result = tune_cli(*data_args(image_data), *TINY, "--max-params", "1k", "--results-dir", str(tmp_path / "r"))
    assert result.exit_code == 2, result.output
    assert (
        "Error: no candidate meets the cost limit --max-params 1,000 (the smallest, resnet8-w0.125-A, has 1,356"
        in result.output
    )
    assert "Traceback" not in result.output
    assert not list((tmp_path / "r" / "kerastuner").glob("trial_*"))  # nothing trained


def test_a_train_size_larger_than_the_image_size_is_exit_2_before_any_trial(tmp_path, image_data):
    args = [*data_args(image_data), *TINY, "--train-image-size", "40", "--results-dir", str(tmp_path / "r")]
    result = tune_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Error: Received: train_image_size=40; expected an integer from" in result.output
    assert not (tmp_path / "r").exists()


def test_a_folder_that_is_not_a_search_is_refused(tmp_path, image_data):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    result = tune_cli(*data_args(image_data), *TINY, "--results-dir", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "is not a search directory" in result.output
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "address, allowed", [("10.1.2.3", False), ("0.0.0.0", False), ("127.0.0.2", True), ("::1", True)]
)
def test_the_chief_serves_the_unauthenticated_oracle_on_loopback_only_unless_allowed(
    tmp_path, image_data, monkeypatch, address, allowed
):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", address)
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    import resnet_keras.tune.tuner as tune_module

    if allowed:
        tune_module.check_oracle_address(allow_remote=False)
        return
    result = tune_cli(*data_args(image_data), *TINY, "--results-dir", str(tmp_path / "r"))
    assert result.exit_code == 2 and "no authentication" in result.output and "--allow-remote-oracle" in result.output
    assert not (tmp_path / "r").exists()
    tune_module.check_oracle_address(allow_remote=True)  # the explicit flag lets it through


def test_diverging_trials_are_recorded_as_failed_and_three_in_a_row_stop_the_search(tmp_path, image_data, monkeypatch):
    # The training loop raises TrainingFailure when the loss becomes NaN; stand in for it so that
    # real KerasTuner bookkeeping is tested without training.
    import resnet_keras.training.train

    def diverge(*args, **kwargs):
        raise resnet_keras.core.errors.TrainingFailure("loss became NaN at epoch 1 step 1")

    monkeypatch.setattr(resnet_keras.training.train, "train", diverge)
    args = [*data_args(image_data), *TINY, "--lrs", "0.1,0.2,0.4"]
    result = tune_cli(*args, "--max-trials", "2", "--results-dir", str(tmp_path / "two"))
    assert result.exit_code == 0, result.output
    rows = read_trials(tmp_path / "two")
    assert [r["status"] for r in rows] == ["FAILED", "FAILED"] and [r["rank"] for r in rows] == ["", ""]
    assert "No trial completed" in result.output and not (tmp_path / "two" / "best.yaml").exists()

    result = tune_cli(*args, "--max-trials", "5", "--results-dir", str(tmp_path / "five"))
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("Error: the search stopped after consecutive failed trials (last: ")
    )
    assert "loss became NaN" in result.output.strip().splitlines()[-1]


def test_a_full_disk_stops_the_search_at_once_in_one_line(tmp_path, image_data, monkeypatch):
    """KerasTuner retries a trial that raises; a full disk would only fill again: exit 2, the
    trial's folder and the space named, no second trial."""
    import errno

    import resnet_keras.training.train

    calls = []

    def disk_full(*args, **kwargs):
        calls.append(args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(resnet_keras.training.train, "train", disk_full)
    results = tmp_path / "search"
    result = tune_cli(*data_args(image_data), *TINY, "--max-trials", "3", "--results-dir", str(results))
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: no space left on the device for ") and "trial_" in line and "free" in line, line
    assert len(calls) == 1


# ----------------------------------------------------------------------------- real searches


@pytest.mark.slow
def test_random_search_ranks_trials_resumes_refuses_another_search_and_its_best_config_trains(
    tmp_path, image_data, monkeypatch
):
    # One test, so pytest-xdist never runs this search twice on two workers.
    results = tmp_path / "random"
    args = [*data_args(image_data), *TINY, "--max-trials", "2", "--results-dir", str(results)]
    result = tune_cli(*args)
    assert result.exit_code == 0, result.output
    assert "rank" in result.output and f"Wrote {results / 'best.yaml'}" in result.output

    # The ranked table, sizes counted on the built models, one epoch per trial.
    rows = read_trials(results)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"COMPLETED"}
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["objective"]) >= float(rows[1]["objective"])
    assert {r["depth"] for r in rows} == {"8"} and {r["width"] for r in rows} <= {"0.125", "0.25"}
    for row in rows:
        assert int(row["params"]) == {"0.125": 1356, "0.25": 5006}[row["width"]]
        assert int(row["multiply_adds"]) > int(row["params"]) and float(row["seconds"]) > 0
        assert row["worker"] == "tuner0"
        assert history_epochs(results / "kerastuner" / f"trial_{row['trial']}" / "run") == [1]
    assert (results / "objective_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    best = yaml.safe_load((results / "best.yaml").read_text())
    top = rows[0]
    assert (best["depth"], best["width"], best["shortcut"]) == (8, float(top["width"]), "A")
    assert best["lr"] == pytest.approx(float(top["learning_rate"]))
    assert best["weight_decay"] == pytest.approx(float(top["weight_decay"]))

    # Rerunning the same command trains nothing and keeps every finished run as it was.
    histories = {p: (p.read_text(), p.stat().st_mtime_ns) for p in results.glob("kerastuner/trial_*/run/history.csv")}
    assert len(histories) == 2
    monkeypatch.chdir(tmp_path)  # --export writes saved_models/ under the working directory
    result = tune_cli(*args, "--export")
    assert result.exit_code == 0, result.output
    assert "Resuming the search" in result.output and "2 finished trials are kept" in result.output
    best_trial = results / "kerastuner" / f"trial_{rows[0]['trial']}" / "run"
    assert f"Exported the best trial ({best_trial})" in result.output
    assert len(list((tmp_path / "saved_models").glob("resnet8_*/1/saved_model.pb"))) == 1
    assert "[trial " not in result.output
    assert {p: (p.read_text(), p.stat().st_mtime_ns) for p in histories} == histories
    assert len(read_trials(results)) == 2

    # Another search in the same directory is refused, and changes nothing.
    before = (results / "search.json").read_text()
    result = tune_cli(*args, "--tuner", "bayesian")
    assert result.exit_code == 2
    assert "holds a different search (tune.tuner: 'random' -> 'bayesian')" in result.output
    result = tune_cli(*args, "--widths", "0.25")
    assert result.exit_code == 2 and "space.widths: [0.125, 0.25] -> [0.25]" in result.output
    assert (results / "search.json").read_text() == before

    # `train --config best.yaml` trains the best trial's network with its learning rate and decay.
    model_dir = tmp_path / "best"
    result = CliRunner().invoke(
        cli, ["train", "--config", str(results / "best.yaml"), "--batch-size", "64", "--model-dir", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    run = json.loads((model_dir / "config.json").read_text())
    assert (run["model"]["depth"], run["model"]["width"], run["model"]["shortcut"]) == (
        best["depth"],
        best["width"],
        best["shortcut"],
    )
    assert run["train"]["learning_rate"] == pytest.approx(best["lr"])
    assert run["model"]["weight_decay"] == pytest.approx(best["weight_decay"])
    assert run["data"]["data_dir"] == best["data_dir"] and history_epochs(model_dir) == [1]


def _search(image_data, results, tune, **space):
    from resnet_keras.data.pipeline import DataConfig
    from resnet_keras.training.train import TrainConfig

    space = SearchSpace(**{"depths": (8,), "widths": (0.125, 0.25), "shortcuts": ("A",), **space})
    data = DataConfig(dataset="folder", data_dir=str(image_data / "cifar10-mini"))
    train = TrainConfig(epochs=tune.epochs_per_trial, batch_size=16, steps_per_epoch=2)
    return tune_tuner.search(space, tune, data, train, results, log=quiet)


@pytest.mark.slow
def test_hyperband_promotes_a_trial_and_trains_on_from_its_checkpoint(tmp_path, image_data):
    # factor 2, max 2 epochs: bracket 1 runs two 1-epoch trials, then the better one on to epoch 2.
    # The cost limit (5,000 params) keeps only width 0.125 of depths 8 and 14: the architecture choice.
    tune = TuneConfig(tuner="hyperband", epochs_per_trial=2, hyperband_factor=2, max_trials=3, max_params=5000)
    result = _search(image_data, tmp_path / "hb", tune, depths=(8, 14))
    rows = {r["trial"]: r for r in result.rows}
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows.values())
    assert all(r["params"] <= 5000 and r["width"] == 0.125 for r in rows.values())
    (promoted,) = [r for r in rows.values() if r["continued_from"]]
    source = rows[promoted["continued_from"]]
    assert (source["epochs"], promoted["epochs"]) == (1, 2)
    assert (promoted["depth"], promoted["learning_rate"]) == (source["depth"], source["learning_rate"])
    trials = tmp_path / "hb" / "kerastuner"
    with (
        open(trials / f"trial_{promoted['trial']}" / "run" / "history.csv") as a,
        open(trials / f"trial_{source['trial']}" / "run" / "history.csv") as b,
    ):
        promoted_history, source_history = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [int(r["epoch"]) for r in promoted_history] == [1, 2]
    assert promoted_history[0] == source_history[0]  # epoch 1 was not retrained
    assert json.loads((tmp_path / "hb" / "costs.json").read_text()).keys() == {
        "resnet8-w0.125-A",
        "resnet8-w0.25-A",
        "resnet14-w0.125-A",
        "resnet14-w0.25-A",
    }


@pytest.mark.slow
def test_bayesian_search_fits_its_gaussian_process_after_the_initial_points(tmp_path, image_data):
    tune = TuneConfig(tuner="bayesian", epochs_per_trial=1, max_trials=3, initial_points=2, objective="val_loss")
    result = _search(image_data, tmp_path / "bo", tune, learning_rates=LogRange(0.01, 0.2))
    assert [r["status"] for r in result.rows] == ["COMPLETED"] * 3
    losses = [r["objective"] for r in result.rows]
    assert losses == sorted(losses) and losses == [r["val_loss"] for r in result.rows]  # min objective first
    assert result.best == result.rows[0]
    assert all(0.01 <= r["learning_rate"] <= 0.2 for r in result.rows)


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_that_trial_and_keeps_the_finished_one(tmp_path, image_data):
    results = tmp_path / "killed"
    args = [
        *data_args(image_data),
        "--depths",
        "8",
        "--widths",
        "0.125,0.25",
        "--shortcuts",
        "A",
        "--epochs-per-trial",
        "2",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "16",
        "--max-trials",
        "2",
        "--results-dir",
        str(results),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet_keras.cli", "tune", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = results / "kerastuner" / "trial_1" / "run" / "checkpoints" / "checkpoint"
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # trial 1 has finished epoch 1 of 2
    finally:
        proc.kill()
        proc.wait()
    assert marker.exists(), "the search never reached trial 1"
    assert trial_json(results, 0)["status"] == "COMPLETED"
    assert trial_json(results, 1)["status"] == "RUNNING"  # killed mid-trial
    finished = results / "kerastuner" / "trial_0" / "run" / "history.csv"
    before = (finished.read_text(), finished.stat().st_mtime_ns)

    result = tune_cli(*args)
    assert result.exit_code == 0, result.output
    assert "1 interrupted trial(s) restart" in result.output
    assert "[trial 0]" not in result.output
    assert "[trial 1] Resuming" in result.output and "after epoch 1" in result.output
    assert (finished.read_text(), finished.stat().st_mtime_ns) == before
    assert history_epochs(results / "kerastuner" / "trial_1" / "run") == [1, 2]
    rows = read_trials(results)
    assert sorted(r["trial"] for r in rows) == ["0", "1"] and {r["status"] for r in rows} == {"COMPLETED"}


# ----------------------------------------------------------------------------- chief and workers


def _pids(output):
    return [int(line.split(" pid ")[1]) for line in output.splitlines() if line.startswith("started ")]


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_a_chief_and_two_workers_complete_a_search_together(tmp_path, image_data):
    results = tmp_path / "dist"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "tune_distributed.py"),
        "--workers",
        "2",
        "--timeout",
        "400",
        "--",
        *data_args(image_data),
        *TINY,
        "--max-trials",
        "4",
        "--results-dir",
        str(results),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=460)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(_pids(proc.stdout)) == 3 and all(_gone(pid) for pid in _pids(proc.stdout))
    rows = read_trials(results)  # written by the chief from its oracle
    assert len(rows) == 4 and {r["status"] for r in rows} == {"COMPLETED"}
    assert {r["worker"] for r in rows} == {"tuner0", "tuner1"}  # both workers ran trials
    statuses = {
        p.parent.name: json.loads(p.read_text())["status"] for p in results.glob("kerastuner/trial_*/trial.json")
    }
    assert statuses == {f"trial_{i}": "COMPLETED" for i in range(4)}
    assert "[tuner0] [trial " in proc.stdout and "[tuner1] [trial " in proc.stdout
    assert "[chief] Wrote " in proc.stdout and (results / "best.yaml").exists()


def test_the_distributed_script_stops_every_process_on_timeout(tmp_path, image_data):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "tune_distributed.py"),
        "--workers",
        "2",
        "--timeout",
        "2",
        "--",
        *data_args(image_data),
        *TINY,
        "--results-dir",
        str(tmp_path / "r"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 124, proc.stdout
    assert "timeout after 2 s; stopping the search" in proc.stdout
    assert _pids(proc.stdout) and all(_gone(pid) for pid in _pids(proc.stdout))
