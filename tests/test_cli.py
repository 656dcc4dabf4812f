"""The `resnet-keras` command line: output, exit codes and one-line errors."""

import json

import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_info_json_gives_published_sizes():
    result = run("info", "--depth", "18", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["resnet18"]["trainable_params"] == 11_689_512
    assert rows["resnet18"]["blocks_per_stage"] == [2, 2, 2, 2]
    assert rows["resnet18"]["multiply_adds"] == pytest.approx(1.8e9, rel=0.02)
    assert set(rows) == {"resnet18", "resnet18_v2", "resnet18d", "seresnet18"}


def test_info_table_for_cifar_presets():
    result = run("info", "--family", "cifar", "--variant", "v1")
    assert result.exit_code == 0, result.output
    for name, params in [("resnet20", "269,722"), ("resnet56", "853,018"), ("resnet1202", "19,421,274")]:
        line = next(ly for ly in result.output.splitlines() if ly.split()[0] == name)
        assert params in line


def test_info_accepts_any_6n_plus_2_depth_and_overrides():
    result = run("info", "--depth", "26", "--width", "2", "--num-classes", "100", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["family"], row["blocks_per_stage"], row["width"], row["num_classes"]) == ("cifar", [4, 4, 4], 2.0, 100)


def test_info_can_force_the_cifar_family_for_depth_50():
    result = run("info", "--depth", "50", "--family", "cifar", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["family"] for r in rows} == {"cifar"} and rows[0]["blocks_per_stage"] == [8, 8, 8]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["info", "--depth", "51"], "depth=51"),
        (["info", "--depth", "50", "--width", "-1"], "width=-1.0"),
        (["info", "--depth", "50", "--image-size", "4"], "image_size=4"),
        (["info", "--family", "resnext"], "'--family'"),
        (["info", "--depth", "fifty"], "'--depth'"),
        (["nonsense"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, fragment):
    result = run(*args)
    assert result.exit_code == 2
    lines = [ly for ly in result.output.splitlines() if ly.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def test_version_and_help():
    assert run("--version").exit_code == 0
    result = run("--help")
    assert result.exit_code == 0 and "info" in result.output


def test_help_of_every_command_imports_no_tensorflow():
    """`--help` answers at once: neither TensorFlow, Keras nor KerasTuner is imported for it."""
    import subprocess
    import sys

    names = sorted(cli.commands)
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from resnet_keras.cli.main import cli\n"
        f"for args in [['--help']] + [[name, '--help'] for name in {names!r}]:\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'keras_tuner', 'torch') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
    assert len(names) >= 10  # info, convert, train, evaluate, export, predict, export-features, benchmark, ...
