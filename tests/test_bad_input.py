"""A grid of careless and hostile command lines, run in one process: each must exit 2 with one
`Error:` line, no traceback and nothing written."""

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli

DIGITS = ["--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16", "--epochs", "1"]


def bad_train_values():
    cases = {
        "--depth": ["0", "-1", "9", "1000000002", "x"],
        "--width": ["0", "-1", "17", "nan", "inf"],
        "--image-size": ["0", "7", "1000000"],
        "--batch-size": ["0", "-5", str(2**70), "2000"],
        "--epochs": ["0", "-1", str(10**12)],
        "--lr": ["0", "-1", "nan", "inf", "1e39"],
        "--weight-decay": ["-1", "nan", "1e39"],
        "--label-smoothing": ["-0.1", "1", "nan"],
        "--warmup-epochs": ["-1", "5"],
        "--seed": ["-1", str(2**32), str(2**70)],
        "--validation-fraction": ["0", "1", "-0.5", "nan"],
        "--recipe": ["nope"],
        "--strategy": ["nope"],
        "--mixed-precision": ["float8"],
        "--shortcut": ["C"],
        "--family": ["resnext"],
        "--variant": ["v3"],
        "--preset": ["resnet51"],
        "--head-epochs": ["-1", "1"],
        "--backbone-lr-multiplier": ["2", "-1", "nan"],
        "--freeze": ["everything", "backbone"],
        "--bn-policy": ["sometimes", "frozen"],
        "--model-dir": [""],
        "--dataset": ["nope", "folder"],
    }
    for option, values in cases.items():
        for value in values:
            yield pytest.param(["train", *DIGITS, option, value], id=f"train{option}={value[:12]}")


def bad_other_commands(tmp):
    a_file = str(tmp / "a_file")
    return [
        ["train", *DIGITS, "--model-dir", a_file],
        ["train", *DIGITS, "--init-from", str(tmp / "missing")],
        ["train", "--dataset", "folder", "--data-dir", str(tmp / "missing")],
        ["evaluate", "--model-dir", str(tmp / "missing")],
        ["evaluate", "--model-dir", a_file],
        ["evaluate", "--model-dir", str(tmp), "--batch-size", "0"],
        ["export", "--model-dir", str(tmp / "missing")],
        ["export", "--model-dir", str(tmp), "--version", "0"],
        ["export", "--model-dir", str(tmp), "--quantize", "int4"],
        ["export", "--model-dir", str(tmp), "--max-accuracy-drop", "-1"],
        ["export", "--model-dir", str(tmp), "--format", "pickle"],
        ["predict", str(tmp / "missing"), a_file],
        ["predict", a_file, a_file],
        ["predict", str(tmp), a_file, "--top-k", "0"],
        ["info", "--depth", "9"],
        ["info", "--width", "0"],
        ["info", "--family", "resnext"],
        ["tune", "--depths", "x"],
        ["tune", "--lrs", "0:1:2"],
        ["tune", "--max-params", "-5"],
        ["tune", "--widths", "0"],
        ["tune", "--tuner", "grid"],
        ["benchmark", "--steps", "0"],
        ["benchmark", "--batch-size", "0"],
        ["benchmark", "--depth", "9"],
        ["convert", "resnet51", "--output", str(tmp / "x.keras")],
        ["export-features", str(tmp / "missing"), "--output", str(tmp / "features")],
        ["train", "--config", a_file],
        ["train", "--config", str(tmp / "binary.yaml")],
        ["train", "--config", str(tmp / "list.yaml")],
        ["train", "--config", str(tmp / "bomb.yaml")],
        ["train", "--config", str(tmp / "unknown.yaml")],
        ["train", "--config", str(tmp / "typed.yaml")],
        ["train", "--dataset", "folder", "--data-dir", str(tmp / "one_class"), "--depth", "8"],
        ["train", "--dataset", "folder", "--data-dir", str(tmp / "newline"), "--depth", "8"],
    ]


@pytest.fixture
def workdir(tmp_path, monkeypatch, image_data):
    """A working folder with a few hostile files; the default runs/ would land here."""
    (tmp_path / "a_file").write_text("not a folder")
    images = sorted((image_data / "cifar10-mini" / "train" / "cat").iterdir())[:4]
    for folder in ("one_class/cat", "newline/dog", "newline/ca\nt"):
        (tmp_path / folder).mkdir(parents=True)
        for image in images:
            (tmp_path / folder / image.name).write_bytes(image.read_bytes())
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "list.yaml").write_text("- depth\n- 20\n")
    (tmp_path / "bomb.yaml").write_text(
        'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(8))
    )
    (tmp_path / "unknown.yaml").write_text("depht: 20\n")
    (tmp_path / "typed.yaml").write_text("dataset: digits\nepochs: [1]\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def listing(root):
    return sorted(
        os.path.relpath(os.path.join(parent, name), root)
        for parent, dirs, files in os.walk(root)
        for name in dirs + files
    )


def check(args, root):
    before = listing(root)
    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, (args, result.exit_code, result.output[-1500:])
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output[-1500:])
    assert "Traceback" not in result.output
    assert listing(root) == before, (args, set(listing(root)) - set(before))


@pytest.mark.parametrize("args", list(bad_train_values()))
def test_bad_train_options(workdir, args):
    check(args, workdir)


def test_bad_command_lines(workdir):
    failures = []
    for args in bad_other_commands(workdir):
        try:
            check(args, workdir)
        except AssertionError as error:
            failures.append(str(error)[:600])
    assert not failures, "\n".join(failures)


def special_file_cases(tmp):
    """(command line, the FIFO it meets) for every reader of user files."""
    folder = ["--dataset", "folder", "--data-dir", str(tmp / "images"), "--depth", "8", "--image-size", "16"]
    records = ["--dataset", "tfrecord", "--depth", "8", "--image-size", "16", "--model-dir", str(tmp / "run")]
    return {
        "prepare": (["prepare", *folder[:4], "--output", str(tmp / "out")], tmp / "images" / "cat" / "zz.jpg"),
        "train-folder": (["train", *folder, "--model-dir", str(tmp / "run")], tmp / "images" / "cat" / "zz.jpg"),
        "train-config": (["train", "--config", str(tmp / "options.yaml")], tmp / "options.yaml"),
        "tfrecord-shard": (
            ["train", *records, "--data-dir", str(tmp / "shard")],
            tmp / "shard" / "train-00001-of-00002",
        ),
        "tfrecord-manifest": (
            ["train", *records, "--data-dir", str(tmp / "manifest")],
            tmp / "manifest" / "manifest.json",
        ),
        "tfrecord-labels": (["train", *records, "--data-dir", str(tmp / "labels")], tmp / "labels" / "labels.txt"),
    }


@pytest.mark.parametrize("case", list(special_file_cases(Path("/x"))))
def test_a_fifo_where_a_file_is_read_is_exit_2_naming_it_never_a_hang(tmp_path, image_data, case):
    # Real processes with a timeout: opening a FIFO for reading waits for a writer for ever, which would
    # hang an in-process runner too. Nobody ever writes to these FIFOs.
    import subprocess
    import sys

    import tensorflow as tf

    images = sorted((image_data / "cifar10-mini" / "train" / "cat").iterdir())[:8]
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for image in images:
            (tmp_path / "images" / name / image.name).write_bytes(image.read_bytes())
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[0].read_bytes()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
            }
        )
    ).SerializeToString()
    for name in ("shard", "manifest", "labels"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels.txt").write_text("cat\ndog\n")
        for shard in ("train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001"):
            with tf.io.TFRecordWriter(str(tmp_path / name / shard)) as writer:
                writer.write(example)
    args, fifo = special_file_cases(tmp_path)[case]
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "resnet_keras.cli", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(errors) == 1 and str(fifo) in errors[0] and "not a regular file" in errors[0].lower(), result.stderr[
        -2000:
    ]
    assert not (tmp_path / "run").exists()
