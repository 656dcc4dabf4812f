"""Shared test fixtures: the real images kept with the tests, and test markers."""

import os
import pathlib

import pytest

import resnet_keras

# Imported before any test module imports TensorFlow, so TF_ENABLE_ONEDNN_OPTS is set as in real use.
assert resnet_keras.__version__

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A copy of the project's ../shared/data/cifar10-mini (1,200 real CIFAR-10 JPEGs, 1.2 MB: images 0000-0099 of
# each class in train/, 0100-0119 in val/), kept in the repository so that a clone passes its tests.
# Benchmarks and long measurements (scripts/) read ../shared/data and stop with an error without it.
REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def pytest_addoption(parser):
    parser.addoption(
        "--extended", action="store_true", help="also run the extended suite (minutes per test; not part of CI)"
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "extended: minutes per test; runs only with --extended (not in CI)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended suite: run with --extended")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def image_data() -> pathlib.Path:
    """The folder holding `cifar10-mini/{train,val}/<class>/NNNN.jpg` (real CIFAR-10 JPEGs)."""
    if not (FIXTURES / "cifar10-mini" / "train").is_dir():
        pytest.fail(f"test images are missing: expected {FIXTURES}/cifar10-mini")
    return FIXTURES
