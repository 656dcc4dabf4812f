"""scripts/torch_cifar_control.py, the PyTorch control of the paper run: the parts that run without torch.

The control is only a control if it reads the split our `train` reads and augments as the reference
does; torch itself stays out of CI (the script imports it inside `main`)."""

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from resnet_keras.config.schema import DataConfig
from resnet_keras.data.pipeline import make_dataset

MINI_TRAIN = REPO / "tests" / "fixtures" / "cifar10-mini" / "train"  # class folders: val is carved out


def load_control():
    spec = importlib.util.spec_from_file_location("torch_cifar_control", REPO / "scripts" / "torch_cifar_control.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_control_reads_the_split_that_train_reads():
    control = load_control()
    split = control.list_split(sys.executable, str(MINI_TRAIN), 0.1)
    train, val = split["train"]["paths"], split["val"]["paths"]
    assert not set(train) & set(val) and len(train) + len(val) == len(list(MINI_TRAIN.glob("*/*.jpg")))
    assert len(val) == round(0.1 * (len(train) + len(val)))
    per_class = Counter(Path(p).parent.name for p in val)
    assert set(per_class) == set(split["class_names"]) and max(per_class.values()) - min(per_class.values()) <= 1
    # The labels the control gives the held-out files are those our validation stream yields, in order.
    _, labels = control.load(val, split["class_names"])
    config = DataConfig(dataset="folder", data_dir=str(MINI_TRAIN), validation_fraction=0.1)
    ours = np.concatenate(
        [y.numpy() for _, y in make_dataset(config, "val", image_size=32, batch_size=64, training=False)]
    )
    assert sorted(labels.tolist()) == sorted(ours.tolist())


def test_the_control_augments_each_image_with_its_own_padded_crop_and_flip():
    control = load_control()
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)  # no zeros: the padding shows
    out = control.augment(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    views = set()
    for image, crop in zip(padded, out):
        found = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(
                (image[dy : dy + 32, dx : dx + 32, :])[:, ::-1] if flip else image[dy : dy + 32, dx : dx + 32], crop
            )
        ]
        assert len(found) == 1
        views.add(found[0])
    assert len(views) > 32  # per image, not one view per batch


def test_the_control_network_is_the_papers_resnet20():
    torch = pytest.importorskip("torch")
    model = load_control().resnet_cifar(20, 10)
    assert sum(p.numel() for p in model.parameters()) == 269_722  # as ours: the paper's 0.27M
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
