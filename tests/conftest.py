"""Shared test fixtures: the real data beside the project, and test markers."""

import os
import pathlib

import pytest

import resnet_keras

# Imported before any test module imports TensorFlow, so TF_ENABLE_ONEDNN_OPTS is set as in real use.
assert resnet_keras.__version__

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
def shared_data() -> pathlib.Path:
    """`../shared/data` (real CIFAR-10 JPEGs). Missing data is a failure, never a skip."""
    if not (SHARED_DATA / "cifar10-mini" / "train").is_dir():
        pytest.fail(f"real test data is missing: expected {SHARED_DATA}/cifar10-mini (see ../shared/data/README.md)")
    return SHARED_DATA
