"""Tests for resnet_keras.data.pipeline: every source, both augmentation families, seeds, sharding, errors.

Real images come from tests/fixtures/cifar10-mini (the `image_data` fixture in conftest.py);
the TFDS path runs offline through tfds.testing.mock_data with cifar10 metadata written to tmp.
"""

import dataclasses
import hashlib
import io
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from resnet_keras.core import network
from resnet_keras.core.errors import ConfigError, DataError, UsageError
from resnet_keras.data.pipeline import DataConfig, DatasetInfo, describe, make_dataset
from resnet_keras.data.preprocessing import decode_image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def mini(image_data) -> Path:
    return image_data / "cifar10-mini"


def collect(ds):
    """All batches of a dataset as numpy (images, labels), plus the batch sizes seen."""
    images, labels, sizes = [], [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
        sizes.append(len(y))
    return np.concatenate(images), np.concatenate(labels), sizes


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def raises_data_error(fn, *fragments) -> str:
    """Runs fn, expects a one-line DataError containing every fragment; returns the message."""
    with pytest.raises(DataError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def image_folder(root: Path, mini: Path, layout: dict[str, dict[str, int]]) -> Path:
    """root/<split>/<class>/ holding the first n real JPEGs of the class (symlinks); '' = flat."""
    for split, classes in layout.items():
        for name, n in classes.items():
            target = root / split / name
            target.mkdir(parents=True)
            for src in sorted((mini / "train" / name).glob("*.jpg"))[:n]:
                (target / src.name).symlink_to(src)
    return root


def write_image(path: Path, array: np.ndarray, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def cifar10_tfds_dir(tmp_path) -> Path:
    """A TFDS data_dir holding cifar10 metadata only (train 500, test 100); no records."""
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    builder.info.features["label"].names = list(CIFAR10_CLASSES)
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=None)
                for name, n in (("train", 500), ("test", 100))
            ]
        )
    )
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
    return tmp_path


# ----------------------------------------------------------------------------- DataConfig


def test_config_json_round_trip():
    config = DataConfig(
        dataset="folder",
        data_dir="/data",
        val_split="val",
        augment="imagenet",
        validation_fraction=0.2,
        seed=7,
        deterministic=True,
        skip_corrupt=True,
    )
    assert DataConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert DataConfig.from_dict(DataConfig().to_dict()) == DataConfig()


@pytest.mark.parametrize(
    "field, value",
    [
        ("validation_fraction", 0.0),
        ("validation_fraction", 1.0),
        ("validation_fraction", "0.1"),
        ("augment", "autoaugment"),
        ("shuffle_buffer", 0),
        ("seed", -1),
        ("cache", "yes"),
        ("dataset", ""),
        ("val_split", ""),
        ("synthetic_classes", 1),
        ("synthetic_examples", 2.5),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"Received: {field}="):
        DataConfig(**{field: value})


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="resize"):
        DataConfig.from_dict({"dataset": "digits", "resize": 32})


def test_errors_are_usage_errors():
    assert issubclass(DataError, UsageError) and issubclass(ConfigError, UsageError)


# ----------------------------------------------------------------------------- sources


def test_digits(tmp_path):
    config = DataConfig(dataset="digits")
    info = describe(config)
    assert info == DatasetInfo(num_classes=10, class_names=tuple("0123456789"), num_train=1294, num_val=144, channels=3)
    train_x, train_y, _ = collect(make_dataset(config, "train", image_size=32, batch_size=128, training=False))
    val_x, _, _ = collect(make_dataset(config, "val", image_size=32, batch_size=128, training=False))
    test_x, test_y, _ = collect(make_dataset(config, "test", image_size=32, batch_size=128, training=False))
    assert (len(train_y), len(val_x), len(test_y)) == (1294, 144, 359)  # 1797 = 80/20, then 90/10
    assert train_x.shape[1:] == (32, 32, 3) and train_x.dtype == np.float32
    assert np.bincount(test_y, minlength=10).min() >= 35  # stratified: ~36 per class
    # Sensible pictures: grayscale replicated to RGB, full 0..255 range, a bright stroke in the
    # middle columns on a dark background at the left and right edges.
    assert np.array_equal(train_x[..., 0], train_x[..., 2])
    assert train_x.min() == 0 and train_x.max() == 255
    assert train_x[:, :, np.r_[0:4, 28:32]].mean() < 10 and train_x[:, :, 12:20].mean() > 100
    # The held-out test set is fixed: a different training seed does not move it.
    other, _, _ = collect(
        make_dataset(DataConfig(dataset="digits", seed=5), "test", image_size=32, batch_size=128, training=False)
    )
    assert np.array_equal(other, test_x)
    # Splits are disjoint.
    train_ids = {digest(x) for x in train_x}
    assert not train_ids & {digest(x) for x in test_x}
    # "auto" does not augment digits (a flipped 2 is not a 2): training only reorders.
    shuffled, _, _ = collect(
        make_dataset(config, "train", image_size=32, batch_size=128, training=True, drop_remainder=False)
    )
    assert {digest(x) for x in shuffled} == train_ids


def test_digits_native_size():
    x, _, _ = collect(make_dataset(DataConfig(dataset="digits"), "val", image_size=8, batch_size=200, training=False))
    assert x.shape == (144, 8, 8, 3)
    assert set(np.unique(x)) <= {round(v * 255 / 16) for v in range(17)}  # unresized 0..16 levels


def test_synthetic():
    config = DataConfig(dataset="synthetic", synthetic_examples=96, synthetic_classes=7, seed=3)
    info = describe(config)
    assert (info.num_classes, info.num_train, info.num_val) == (7, 96, 10)
    ds = make_dataset(config, "train", image_size=24, batch_size=32, training=True)
    x, y, sizes = collect(ds)
    assert x.shape == (96, 24, 24, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert sizes == [32, 32, 32] and 0 <= x.min() and x.max() <= 255 and x.std() > 60
    assert set(np.unique(y)) <= set(range(7)) and len(set(np.unique(y))) > 3
    again, _, _ = collect(ds)
    assert np.array_equal(x, again)  # generated once, cached
    forever = make_dataset(config, "train", image_size=24, batch_size=32, training=True, repeat=True)
    assert len(list(forever.take(10))) == 10


def test_folder_with_split_folders(mini):
    config = DataConfig(dataset="folder", data_dir=str(mini))
    assert describe(config) == DatasetInfo(
        num_classes=10, class_names=CIFAR10_CLASSES, num_train=1000, num_val=200, channels=3
    )
    ds = make_dataset(config, "val", image_size=32, batch_size=64, training=False)
    x, y, sizes = collect(ds)
    assert sizes == [64, 64, 64, 8]  # eval keeps the remainder
    assert ds.cardinality() == 4  # known, so Keras shows progress and ends epochs cleanly
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 200
    assert np.array_equal(np.bincount(y), [20] * 10)
    assert ds.skipped_files == 0
    # Labels are the alphabetical class index: the real files of "cat" (3) are labelled 3.
    cat = decode_image(tf.io.read_file(str(mini / "val" / "cat" / "0100.jpg"))).numpy()
    (match,) = [i for i, image in enumerate(x) if np.array_equal(image, cat)]
    assert y[match] == 3
    train = make_dataset(config, "train", image_size=32, batch_size=64, training=True)
    _, _, sizes = collect(train)
    assert sizes == [64] * 15  # training drops the remainder of 1000


def test_folder_class_folders_only(tmp_path, mini):
    root = image_folder(tmp_path / "flat", mini, {"": {"cat": 10, "dog": 10, "ship": 10}})
    config = DataConfig(dataset="folder", data_dir=str(root), validation_fraction=0.2)
    info = describe(config)
    assert (info.class_names, info.num_train, info.num_val) == (("cat", "dog", "ship"), 24, 6)
    train_x, _, _ = collect(make_dataset(config, "train", image_size=32, batch_size=50, training=False))
    val_x, val_y, _ = collect(make_dataset(config, "val", image_size=32, batch_size=50, training=False))
    assert np.array_equal(np.bincount(val_y), [2, 2, 2])  # stratified
    train_ids, val_ids = {digest(x) for x in train_x}, {digest(x) for x in val_x}
    assert len(train_ids | val_ids) == 30 and not train_ids & val_ids
    raises_data_error(
        lambda: make_dataset(config, "test", image_size=32, batch_size=8, training=False),
        "split='test'",
        "'train'",
        "'val'",
    )


def test_folder_accepts_png_bmp_gif_and_mixed_sizes(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, (fmt, ext) in enumerate([("PNG", ".PNG"), ("BMP", ".bmp"), ("GIF", ".gif")]):
            (tmp_path / split / f"c{label}").mkdir(parents=True)
            for k, shape in enumerate([(20, 30, 3), (48, 40, 3)]):
                write_image(
                    tmp_path / split / f"c{label}" / f"{k}{ext}", rng.integers(0, 256, shape, dtype=np.uint8), fmt
                )
        (tmp_path / split / "c0" / "notes.txt").write_text("not an image and not listed")
    config = DataConfig(dataset="folder", data_dir=str(tmp_path))
    assert describe(config).num_train == 6
    for augment in ("cifar", "imagenet", "none"):
        x, y, _ = collect(
            make_dataset(
                dataclasses.replace(config, augment=augment),
                "train",
                image_size=32,
                batch_size=4,
                training=True,
                drop_remainder=False,
            )
        )
        assert x.shape == (6, 32, 32, 3) and sorted(y) == [0, 0, 1, 1, 2, 2]
        assert 0 <= x.min() and x.max() <= 255


def test_tfds_cifar10_mock(cifar10_tfds_dir):
    config = DataConfig(dataset="cifar10", data_dir=str(cifar10_tfds_dir))
    with tfds.testing.mock_data(num_examples=40, data_dir=str(cifar10_tfds_dir)):
        assert describe(config) == DatasetInfo(
            num_classes=10, class_names=CIFAR10_CLASSES, num_train=450, num_val=50, channels=3
        )
        for split, training in (("train", True), ("val", False), ("test", False)):
            x, y, sizes = collect(make_dataset(config, split, image_size=32, batch_size=16, training=training))
            assert x.shape[1:] == (32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
            assert sizes == ([16, 16] if training else [16, 16, 8])
            assert 0 <= x.min() and x.max() <= 255 and x.std() > 30
            assert 0 <= y.min() and y.max() <= 9
        x, _, _ = collect(make_dataset(config, "test", image_size=64, batch_size=16, training=False))
        assert x.shape == (40, 64, 64, 3)


def test_tfds_prepared_copy_grayscale(tmp_path):
    """Real TFRecords (TFDS's offline dummy_mnist: 28x28x1) through the unmocked reader."""
    from tensorflow_datasets.testing import DummyMnist

    DummyMnist(data_dir=str(tmp_path)).download_and_prepare()
    config = DataConfig(dataset="dummy_mnist", data_dir=str(tmp_path))
    info = describe(config)
    assert (info.num_classes, info.num_train, info.num_val, info.channels) == (10, 18, 2, 3)
    x, y, sizes = collect(make_dataset(config, "test", image_size=32, batch_size=8, training=False))
    assert x.shape == (20, 32, 32, 3) and sizes == [8, 8, 4]
    assert np.array_equal(x[..., 0], x[..., 1]) and 0 <= y.min() and y.max() <= 9


@pytest.mark.parametrize(
    "val_split, fraction, expected",
    [
        (None, 0.1, {"train[:450]": 450, "train[450:]": 50}),
        (None, 0.25, {"train[:375]": 375, "train[375:]": 125}),
        ("test", 0.1, {"train": 500, "test": 100}),
    ],
)
def test_tfds_validation_split(cifar10_tfds_dir, val_split, fraction, expected):
    requested = []

    def records(self, split, decoders=None, read_config=None, shuffle_files=False):
        """As many examples as TFDS's own split arithmetic says the requested split has."""
        requested.append(split)
        png = tf.io.encode_png(tf.fill([32, 32, 3], tf.constant(7, tf.uint8)))
        return tf.data.Dataset.range(self.info.splits[split].num_examples).map(
            lambda i: {"id": tf.strings.as_string(i), "image": png, "label": i % 10}
        )

    config = DataConfig(
        dataset="cifar10", data_dir=str(cifar10_tfds_dir), val_split=val_split, validation_fraction=fraction
    )
    with tfds.testing.mock_data(as_dataset_fn=records, data_dir=str(cifar10_tfds_dir)):
        info = describe(config)
        counts = [
            len(collect(make_dataset(config, split, image_size=32, batch_size=64, training=False))[1])
            for split in ("train", "val")
        ]
    assert (info.num_train, info.num_val) == tuple(expected.values()) == tuple(counts)
    assert requested == list(expected)


def test_tfds_unknown_split(cifar10_tfds_dir):
    config = DataConfig(dataset="cifar10", data_dir=str(cifar10_tfds_dir))
    with tfds.testing.mock_data(num_examples=4, data_dir=str(cifar10_tfds_dir)):
        raises_data_error(
            lambda: make_dataset(config, "holdout", image_size=32, batch_size=4, training=False),
            "split='holdout'",
            "'test'",
        )


def test_tfds_not_prepared_offline_fails_fast(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    start = time.monotonic()
    message = raises_data_error(
        lambda: describe(DataConfig(dataset="cifar10", data_dir=str(tmp_path))),
        "'cifar10' is not prepared",
        str(tmp_path),
        "no network",
        "--dataset folder",
        "tfds build cifar10 --data_dir",
    )
    assert time.monotonic() - start < 15, message


def test_tfds_not_prepared_online_downloads(tmp_path, monkeypatch):
    calls = []

    def download_and_prepare(self, *args, **kwargs):
        calls.append(self.name)
        raise RuntimeError("checksum mismatch for cifar-10-binary.tar.gz\nmore detail")

    monkeypatch.setattr(network, "network_available", lambda *args, **kwargs: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    raises_data_error(
        lambda: describe(DataConfig(dataset="cifar10", data_dir=str(tmp_path))),
        "Cannot prepare TFDS dataset 'cifar10'",
        "checksum mismatch",
    )
    assert calls == ["cifar10"]


def test_unknown_dataset_name():
    raises_data_error(
        lambda: describe(DataConfig(dataset="foo")),
        "Received: dataset='foo'; expected a TFDS name, 'folder', 'tfrecord', 'synthetic' or 'digits'",
    )


def test_tfds_non_image_dataset_and_bad_version_fail_before_download(tmp_path, monkeypatch):
    monkeypatch.setattr(network, "network_available", lambda *args, **kwargs: pytest.fail("must not reach the net"))
    raises_data_error(
        lambda: describe(DataConfig(dataset="glue", data_dir=str(tmp_path))),
        "dataset='glue', which is not an image classification dataset",
    )
    raises_data_error(
        lambda: describe(DataConfig(dataset="cifar10:9.9.9", data_dir=str(tmp_path))),
        "dataset='cifar10:9.9.9'",
        "3.0.2",
    )


# ----------------------------------------------------------------------------- augmentation


def shifted(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """The crop at offset (dy, dx) of the image zero-padded by 4, optionally flipped."""
    size = image.shape[0]
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
    crop = padded[dy : dy + size, dx : dx + size]
    return crop[:, ::-1] if flip else crop


def test_cifar_augmentation_is_pad_crop_flip(mini):
    # shuffle_buffer=1 keeps the order, so train view i and eval view i are the same picture.
    config = DataConfig(dataset="folder", data_dir=str(mini), shuffle_buffer=1, augment="cifar", deterministic=True)
    evals, _, _ = collect(make_dataset(config, "val", image_size=32, batch_size=50, training=False))
    again, _, _ = collect(make_dataset(config, "val", image_size=32, batch_size=50, training=False))
    train_ds = make_dataset(config, "val", image_size=32, batch_size=50, training=True)
    trains, _, sizes = collect(train_ds)
    assert np.array_equal(evals, again)  # the eval view is deterministic
    assert not np.array_equal(trains, collect(train_ds)[0])  # every epoch draws new crops
    assert trains.shape == evals.shape == (200, 32, 32, 3) and sizes == [50] * 4
    assert trains.min() >= 0 and trains.max() <= 255 and np.array_equal(trains, np.round(trains))
    flips, moved = [], 0
    for train, original in zip(trains, evals):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(train, shifted(original, dy, dx, flip))
        ]
        assert matches, "a train view is not a padded crop (or its flip) of the image"
        moved += (4, 4, False) not in matches and (4, 4, True) not in matches
        flips.append({flip for _, _, flip in matches})
    assert moved > 150  # 1 - (1/81) of the crops are shifted
    assert 50 < sum(f == {True} for f in flips) < 150  # about half are flipped
    assert 50 < sum(f == {False} for f in flips) < 150


def test_cifar_crops_smaller_than_the_image_keep_its_scale(mini):
    # Training crops of 24 on a 32-pixel view: the central 24 x 24 of a pad-4 crop, not a resize.
    config = DataConfig(dataset="folder", data_dir=str(mini), shuffle_buffer=1, augment="cifar", deterministic=True)
    evals, _, _ = collect(make_dataset(config, "val", image_size=32, batch_size=50, training=False))
    trains, _, _ = collect(make_dataset(config, "val", image_size=32, crop_size=24, batch_size=50, training=True))
    assert trains.shape == (200, 24, 24, 3)
    offsets = set()
    for train, original in zip(trains, evals):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(train, shifted(original, dy, dx, flip)[4:28, 4:28])
        ]
        assert matches, "a 24-pixel train view is not the centre of a padded crop (or its flip)"
        offsets.update(matches)
    assert len(offsets) > 40  # the translations still span the whole +-4 pixels


def flips_seen(trains, originals) -> list[bool]:
    """Whether each training view is a mirrored pad-crop of its original (asserting it is one)."""
    seen = []
    for train, original in zip(trains, originals):
        ways = {
            flip
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(train, shifted(original, dy, dx, flip))
        }
        assert ways, "a training view is not a padded crop of its image"
        seen.append(True in ways and False not in ways)
    return seen


@pytest.mark.parametrize("flip", ["alternating", "random"])
def test_alternating_flips_mirror_each_image_in_every_other_epoch(mini, flip):
    config = DataConfig(dataset="folder", data_dir=str(mini), shuffle_buffer=1, augment="cifar", deterministic=True)
    evals, _, _ = collect(make_dataset(config, "val", image_size=32, batch_size=50, training=False))
    stream = make_dataset(config, "val", image_size=32, batch_size=50, training=True, repeat=True, flip=flip)
    trains = np.concatenate([x.numpy() for x, _ in stream.take(12)])  # epochs 0, 1, 2 of 200 images
    epochs = [flips_seen(trains[e * 200 : (e + 1) * 200], evals) for e in range(3)]
    assert 60 < sum(epochs[0]) < 140  # a coin per image in the first epoch
    opposite = sum(a != b for a, b in zip(epochs[0], epochs[1]))
    if flip == "random":  # independent coins: about half the images face the same way twice
        assert 60 < opposite < 140
        return
    assert opposite == 200 and epochs[2] == epochs[0]
    resumed = make_dataset(
        config, "val", image_size=32, batch_size=50, training=True, repeat=True, flip=flip, skip_batches=4
    )
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in resumed.take(4)]), trains[200:400])
    config = dataclasses.replace(config, seed=1)
    evals, _, _ = collect(make_dataset(config, "val", image_size=32, batch_size=50, training=False))
    other_seed = make_dataset(config, "val", image_size=32, batch_size=50, training=True, repeat=True, flip=flip)
    other = flips_seen(np.concatenate([x.numpy() for x, _ in other_seed.take(4)]), evals)
    assert 60 < sum(a != b for a, b in zip(other, epochs[0])) < 140  # the coins come from the seed


def test_alternating_flips_need_the_cifar_view_of_a_repeated_stream(mini):
    config = DataConfig(dataset="folder", data_dir=str(mini), augment="imagenet")
    with pytest.raises(DataError, match="alternating flips need the 'cifar' view"):
        make_dataset(config, "val", image_size=32, batch_size=50, training=True, repeat=True, flip="alternating")
    with pytest.raises(DataError, match="no repeat"):
        make_dataset(
            dataclasses.replace(config, augment="cifar"),
            "val",
            image_size=32,
            batch_size=50,
            training=True,
            flip="alternating",
        )


def test_imagenet_eval_is_centre_crop_and_train_is_random(tmp_path):
    rng = np.random.default_rng(1)
    pictures = {
        "a": rng.integers(0, 256, (40, 64, 3), dtype=np.uint8),
        "b": rng.integers(0, 256, (80, 50, 3), dtype=np.uint8),
    }
    for split in ("train", "val"):
        for name, picture in pictures.items():
            (tmp_path / split / name).mkdir(parents=True)
            write_image(tmp_path / split / name / "x.png", picture, "PNG")
    config = DataConfig(dataset="folder", data_dir=str(tmp_path), augment="imagenet", deterministic=True)
    x, y, _ = collect(make_dataset(config, "val", image_size=32, batch_size=2, training=False))
    for image, label in zip(x, y):
        picture = pictures["ab"[label]]
        h, w = picture.shape[:2]
        short = round(32 / 0.875)  # 37
        new_h, new_w = round(h * short / min(h, w)), round(w * short / min(h, w))
        resized = tf.image.resize(picture, [new_h, new_w], antialias=True).numpy()
        top, left = (new_h - 32) // 2, (new_w - 32) // 2
        np.testing.assert_allclose(image, resized[top : top + 32, left : left + 32], atol=1e-3)
    views = np.concatenate(
        [
            collect(
                make_dataset(
                    dataclasses.replace(config, seed=seed), "train", image_size=32, batch_size=2, training=True
                )
            )[0]
            for seed in range(6)
        ]
    )
    assert views.shape == (12, 32, 32, 3) and 0 <= views.min() and views.max() <= 255
    assert len({digest(v) for v in views}) == 12  # random crops differ by seed
    assert not any(np.allclose(v, e, atol=1) for v in views for e in x)


# ----------------------------------------------------------------------------- seeds and sharding


@pytest.mark.parametrize("augment", ["cifar", "imagenet"])
def test_seeded_pipeline_is_reproducible(mini, augment):
    def first_batches(seed, epochs=1):
        config = DataConfig(dataset="folder", data_dir=str(mini), seed=seed, deterministic=True, augment=augment)
        ds = make_dataset(config, "val", image_size=32, batch_size=50, training=True)
        return [collect(ds.take(2)) for _ in range(epochs)]

    (x1, y1, _), (x1_epoch2, y1_epoch2, _) = first_batches(seed=3, epochs=2)
    ((x2, y2, _),) = first_batches(seed=3)
    ((x3, _, _),) = first_batches(seed=4)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(y1, y1_epoch2)  # each epoch reshuffles
    for deterministic, training, expected in [(True, True, True), (False, True, False), (False, False, True)]:
        config = DataConfig(dataset="folder", data_dir=str(mini), deterministic=deterministic)
        ds = make_dataset(config, "val", image_size=32, batch_size=50, training=training)
        assert ds.options().deterministic is expected  # evaluation always keeps its order


@pytest.mark.parametrize("augment", ["cifar", "imagenet"])
def test_repeated_stream_resumes_where_a_reader_stopped(mini, augment):
    # 200 images in batches of 50: 4 batches an epoch, so skipping 6 lands mid-way through epoch 1.
    config = DataConfig(dataset="folder", data_dir=str(mini), seed=5, deterministic=True, augment=augment)

    def stream(skip, take):
        ds = make_dataset(config, "val", image_size=32, batch_size=50, training=True, repeat=True, skip_batches=skip)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(take)]

    straight = stream(0, 11)
    resumed = stream(6, 5)
    for (x, y), (x_resumed, y_resumed) in zip(straight[6:], resumed):
        assert np.array_equal(x, x_resumed) and np.array_equal(y, y_resumed)
    epochs = [np.concatenate([y for _, y in straight[i : i + 4]]) for i in (0, 4)]
    assert sorted(epochs[0]) == sorted(epochs[1])  # each epoch is one pass over the split
    assert not np.array_equal(epochs[0], epochs[1])  # in a new order


def test_sharding_with_input_context(mini):
    config = DataConfig(dataset="folder", data_dir=str(mini))
    everything, _, _ = collect(make_dataset(config, "val", image_size=32, batch_size=40, training=False))
    shards = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        ds = make_dataset(config, "val", image_size=32, batch_size=40, training=False, input_context=context)
        x, _, sizes = collect(ds)
        assert sizes == [20] * 5  # the per-replica batch
        assert ds.options().experimental_distribute.auto_shard_policy == (tf.data.experimental.AutoShardPolicy.OFF)
        shards.append({digest(image) for image in x})
        train = make_dataset(config, "train", image_size=32, batch_size=40, training=True, input_context=context)
        assert collect(train)[0].shape == (500 // 20 * 20, 32, 32, 3)
    assert len(shards[0]) == len(shards[1]) == 100 and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {digest(image) for image in everything}
    plain = make_dataset(config, "val", image_size=32, batch_size=40, training=False)
    assert plain.options().experimental_distribute.auto_shard_policy == (tf.data.experimental.AutoShardPolicy.DATA)
    with pytest.raises(DataError, match="batch_size=41"):
        make_dataset(config, "val", image_size=32, batch_size=41, training=False, input_context=context)


# ----------------------------------------------------------------------------- bad inputs


def test_missing_and_empty_folders(tmp_path):
    def open_folder(path):
        return lambda: describe(DataConfig(dataset="folder", data_dir=str(path)))

    raises_data_error(open_folder(tmp_path / "nowhere"), "not found", str(tmp_path / "nowhere"))
    raises_data_error(open_folder(tmp_path), "No class folders", str(tmp_path))
    (tmp_path / "cat").mkdir()
    raises_data_error(open_folder(tmp_path), "has no images", str(tmp_path / "cat"))
    raises_data_error(lambda: describe(DataConfig(dataset="folder")), "data_dir=None")


def test_split_with_different_classes(tmp_path, mini):
    root = image_folder(
        tmp_path, mini, {"train": {"cat": 3, "dog": 3, "ship": 3}, "val": {"cat": 2, "dog": 2, "truck": 2}}
    )
    raises_data_error(
        lambda: describe(DataConfig(dataset="folder", data_dir=str(root))),
        str(root / "val"),
        "missing ['ship']",
        "extra ['truck']",
    )


def test_unknown_split_lists_available(mini):
    config = DataConfig(dataset="folder", data_dir=str(mini))
    raises_data_error(
        lambda: make_dataset(config, "test", image_size=32, batch_size=8, training=False),
        "split='test'",
        "'train'",
        "'val'",
    )
    raises_data_error(lambda: describe(dataclasses.replace(config, val_split="holdout")), "split='holdout'")


@pytest.fixture
def folder_with_bad_files(tmp_path, mini):
    root = image_folder(tmp_path, mini, {"train": {"cat": 5, "dog": 5}, "val": {"cat": 2, "dog": 2}})
    (root / "train" / "cat" / "notes.jpg").write_text("this is a text file, not a JPEG")
    jpeg = (mini / "train" / "dog" / "0099.jpg").read_bytes()
    (root / "train" / "dog" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return root


def test_corrupt_files_are_named(folder_with_bad_files):
    config = DataConfig(dataset="folder", data_dir=str(folder_with_bad_files))
    raises_data_error(lambda: describe(config), str(folder_with_bad_files / "train/cat/notes.jpg"), "--skip-corrupt")
    (folder_with_bad_files / "train" / "cat" / "notes.jpg").unlink()
    assert describe(config).num_train == 11  # the truncated file's header looks fine
    raises_data_error(
        lambda: make_dataset(config, "train", image_size=32, batch_size=4, training=True),
        str(folder_with_bad_files / "train/dog/truncated.jpg"),
        "--skip-corrupt",
    )


@pytest.mark.parametrize("cache", [True, False])
def test_skip_corrupt_drops_and_counts(folder_with_bad_files, cache):
    config = DataConfig(dataset="folder", data_dir=str(folder_with_bad_files), skip_corrupt=True, cache=cache)
    info = describe(config)
    assert (info.num_train, info.skipped_files) == (11, 1)
    ds = make_dataset(config, "train", image_size=32, batch_size=4, training=False)
    x, y, _ = collect(ds)
    assert len(y) == 10 and np.array_equal(np.bincount(y), [5, 5])
    # With the cache every file is decoded up front, so the truncated JPEG is counted too.
    assert ds.skipped_files == (2 if cache else 1)
    assert ds.cardinality() == (3 if cache else tf.data.UNKNOWN_CARDINALITY)
