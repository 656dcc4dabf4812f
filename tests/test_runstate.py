"""A run directory whose files disagree with themselves: each reader refuses with one `Error:` line
(exit 2) and changes nothing, or, for a truncated latest checkpoint, resumes from the one before.

One tiny real run (ResNet-8 at width 0.25 on 16x16 digits, 2 epochs) is trained once and copied
into each test, which damages its copy the way a user or a full disk would.
"""

import csv
import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli

TINY_CLI = ["--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16", "--batch-size", "64"]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


def tree(path: Path) -> dict:
    """Every file under `path` with its content hash: what "nothing changed" compares."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run("train", *TINY_CLI, "--epochs", "2", "--model-dir", str(model_dir))
    assert result.exit_code == 0, result.output
    return model_dir


@pytest.fixture
def copy(finished_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


def test_a_finished_run_without_its_checkpoints_is_refused_not_retrained(copy):
    shutil.rmtree(copy / "checkpoints")
    before = tree(copy)
    line = one_error_line(run("train", *TINY_CLI, "--epochs", "3", "--model-dir", str(copy)))
    assert "no checkpoint" in line and "--overwrite" in line and "restore the checkpoints" in line
    assert "model.keras" in line and "2 epochs of history.csv" in line
    assert tree(copy) == before


def test_history_missing_rows_the_checkpoint_covers_is_refused(copy):
    (copy / "history.csv").write_text((copy / "history.csv").read_text().splitlines()[0] + "\n")
    before = tree(copy)
    line = one_error_line(run("train", *TINY_CLI, "--epochs", "3", "--model-dir", str(copy)))
    assert "history.csv has 0 epochs but the checkpoint is after epoch 2" in line
    assert tree(copy) == before


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(copy):
    data = sorted(
        (copy / "checkpoints").glob("ckpt-*.data-00000-of-00001"), key=lambda p: int(p.name[5:].split(".")[0])
    )
    assert len(data) == 2
    latest = data[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    result = run("train", *TINY_CLI, "--epochs", "3", "--model-dir", str(copy))
    assert result.exit_code == 0, result.output
    older = data[0].name.split(".")[0]
    assert f"{latest.name.split('.')[0]} is unreadable" in result.output
    assert f"resuming from {older}, the newest readable one" in result.output
    assert "Resuming" in result.output and "after epoch 1" in result.output
    with open(copy / "history.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3]


def test_no_readable_checkpoint_is_one_line(copy):
    for path in (copy / "checkpoints").glob("ckpt-*.data-00000-of-00001"):
        path.write_bytes(b"")
    before = tree(copy)
    line = one_error_line(run("train", *TINY_CLI, "--epochs", "3", "--model-dir", str(copy)))
    assert "no checkpoint in" in line and "can be read" in line and "--overwrite" in line
    assert tree(copy) == before


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_every_reader_validates_the_run_config_as_train_does(copy, command, tmp_path):
    config = json.loads((copy / "config.json").read_text())
    config["train"]["batch_size"] = "16"
    (copy / "config.json").write_text(json.dumps(config))
    extra = ["--base-dir", str(tmp_path / "exported")] if command == "export" else []
    line = one_error_line(run(command, "--model-dir", str(copy), *extra))
    assert "config.json is not a valid run config" in line and "batch_size='16'" in line
    assert not (tmp_path / "exported").exists()
    # train, too, names the field (as a config that differs from the command line's).
    assert "batch_size" in one_error_line(run("train", *TINY_CLI, "--epochs", "3", "--model-dir", str(copy)))


@pytest.mark.parametrize(
    "garbage, expected",
    [
        ("epoch,loss\n1,2\n", "line 1: expected the columns"),
        (None, "line 3: loss='not-a-number' is not a number"),
        (None, "line 2: epoch '7'; expected 1"),
        ("\x00" * 100, "history.csv"),
    ],
)
def test_a_garbage_history_is_one_line(copy, garbage, expected):
    text = (copy / "history.csv").read_text()
    if garbage is None and "loss=" in expected:
        header, first, second = text.splitlines()
        fields = second.split(",")
        fields[1] = "not-a-number"
        garbage = "\n".join([header, first, ",".join(fields)]) + "\n"
    elif garbage is None:
        header, first, second = text.splitlines()
        garbage = "\n".join([header, "7" + first[1:], second]) + "\n"
    (copy / "history.csv").write_text(garbage)
    line = one_error_line(run("train", *TINY_CLI, "--epochs", "3", "--model-dir", str(copy)))
    assert "history.csv" in line and expected in line


def test_a_truncated_model_keras_says_so(copy):
    model = copy / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    line = one_error_line(run("evaluate", "--model-dir", str(copy)))
    assert "model.keras is damaged or incomplete" in line and "--weights best" in line
    assert "not found" not in line.lower()


def test_a_labels_file_of_huge_names_is_refused_at_once(copy):
    (copy / "labels.txt").write_text("".join(f"{i}{'x' * 1_000_000}\n" for i in range(10)))
    start = time.monotonic()
    line = one_error_line(run("evaluate", "--model-dir", str(copy)))
    assert time.monotonic() - start < 30
    assert "labels.txt is larger than 10 class names of at most 256 characters" in line
    (copy / "labels.txt").write_text("".join(f"{i}{'x' * 300}\n" for i in range(10)))
    assert "at most 256 characters" in one_error_line(run("evaluate", "--model-dir", str(copy)))
