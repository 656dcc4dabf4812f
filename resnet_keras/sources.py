"""Dataset sources: where a split's images and labels come from, before decoding and views.

A source lists a dataset's classes and split sizes without decoding an image (`open_source`,
used by `data.describe`), and gives each split as a `Split`: a tf.data stream of
``(item, label)`` and the function that decodes an item to uint8 RGB. Sources:

* ``folder``: ``<root>/<split>/<class>/<image>`` when ``<root>/<train_split>`` has subfolders, else
  ``<root>/<class>/<image>`` with validation held out (stratified, fixed seed).
* a registered TFDS image-classification dataset, prepared on first use when a network exists.
* ``digits``: scikit-learn's 1797 8x8 digits. ``synthetic``: random pixels, for benchmarks.

Given the class names of a trained run (``class_names=``), a folder is read by those names: a
folder holding only a ``test/`` split, or only class folders, is labelled as the run was, a class
the run does not know is an error and a missing one is fine.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from resnet_keras import network
from resnet_keras.config import DataConfig
from resnet_keras.errors import DataError, first_line
from resnet_keras.preprocessing import IMAGE_EXTENSIONS, decode_image, is_image_file, list_image_files, to_rgb

log = logging.getLogger(__name__)

# Held-out splits (digits test, carved validation) use a fixed seed, not DataConfig.seed, so runs
# with different seeds validate on the same images, as TFDS slicing does.
SPLIT_SEED = 0
TFDS_PROBE_URL = "https://storage.googleapis.com"  # TFDS's download bucket
_ACCEPTED = "expected a TFDS name, 'folder', 'synthetic' or 'digits'"


@dataclasses.dataclass(frozen=True)
class Split:
    """One split before decoding: ``items`` yields ``(item, label int32)``, ``decode(item)`` gives
    uint8 ``[H, W, 3]``; ``shape`` is ``(H, W)`` with ``None`` where sizes vary."""

    items: tf.data.Dataset
    count: int
    decode: Callable[[tf.Tensor], tf.Tensor]
    shape: tuple[int | None, int | None]
    files: tuple[str, ...] = ()  # folder sources: path per item, to name files that fail to decode
    skipped: int = 0


@dataclasses.dataclass(frozen=True)
class Source:
    class_names: tuple[str, ...]
    num_train: int
    num_val: int
    skipped: int
    split: Callable[[str, int], Split]  # (split name, image_size) -> Split


def open_source(config: DataConfig, class_names: tuple[str, ...] | None = None) -> Source:
    """The dataset's source. `class_names` (a trained model's) reads a folder by those names."""
    if class_names is not None and config.dataset == "folder":
        return _labelled_folder_source(config, tuple(class_names))
    opener = {"folder": _folder_source, "synthetic": _synthetic_source, "digits": _digits_source}.get(
        config.dataset, _tfds_source
    )
    return opener(config)


def _split_not_found(split, available, where) -> DataError:
    return DataError(f"Received: split={split!r}; {where} has splits {sorted(available)}")


def _holdout_count(total: int, fraction: float, what: str) -> int:
    held = round(total * fraction)
    if not 1 <= held < total:
        raise DataError(
            f"Received: validation_fraction={fraction}; holding it out of the {total} "
            f"examples of {what} leaves an empty split"
        )
    return held


def _carve(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices into (kept, held out) with round(N * fraction) held out."""
    held = _holdout_count(len(labels), fraction, "the split")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * held / len(labels)
    per_class = np.floor(quota).astype(int)
    # Largest remainders get the leftover slots, so the total is exact.
    per_class[np.argsort(per_class - quota, kind="stable")[: held - per_class.sum()]] += 1
    held_out = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)])
    mask = np.zeros(len(labels), bool)
    mask[held_out] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _in_memory_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 [n, h, w, c] images (c = 1 or 3) held in memory."""
    return Split(
        tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))), len(labels), to_rgb, images.shape[1:3]
    )


def _digits_source(config: DataConfig) -> Source:
    """scikit-learn's 1797 8x8 digits (values 0..16) as uint8 RGB; fixed stratified 80/20
    train/test split, validation held out of train."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    train, test = _carve(labels, 0.2, SPLIT_SEED)
    named = {"train": train, "test": test}
    if config.train_split not in named:
        raise _split_not_found(config.train_split, named, "dataset 'digits'")
    train = named[config.train_split]
    if config.val_split is None:
        keep, held = _carve(labels[train], config.validation_fraction, SPLIT_SEED)
        train, val = train[keep], train[held]
    elif config.val_split in named:
        val = named[config.val_split]
    else:
        raise _split_not_found(config.val_split, named, "dataset 'digits'")
    parts = {**named, "train": train, "val": val}

    def split(name, image_size):
        if name not in parts:
            raise _split_not_found(name, parts, "dataset 'digits'")
        return _in_memory_split(images[parts[name]], labels[parts[name]])

    return Source(tuple(str(d) for d in range(10)), len(train), len(val), 0, split)


def _synthetic_source(config: DataConfig) -> Source:
    """Uniform random uint8 images generated in the pipeline from (seed, index); random labels."""
    num_val = _holdout_count(config.synthetic_examples, config.validation_fraction, "'synthetic'")
    counts = {"train": config.synthetic_examples, "val": num_val}

    def split(name, image_size):
        if name not in counts:
            raise _split_not_found(name, counts, "dataset 'synthetic'")
        offset = 0 if name == "train" else config.synthetic_examples  # val images differ
        rng = np.random.default_rng([config.seed, offset])
        labels = rng.integers(0, config.synthetic_classes, counts[name]).astype(np.int32)
        items = tf.data.Dataset.from_tensor_slices((np.arange(counts[name]) + offset, labels))

        def generate(index):
            seed = tf.stack([tf.cast(config.seed, tf.int64), index])
            shape = [image_size, image_size, 3]
            return tf.cast(tf.random.stateless_uniform(shape, seed, 0, 256, tf.int32), tf.uint8)

        return Split(items, counts[name], generate, (image_size, image_size))

    classes = tuple(str(c) for c in range(config.synthetic_classes))
    return Source(classes, counts["train"], counts["val"], 0, split)


# -- image folders


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_split(
    directory: Path, class_names: tuple[str, ...], config: DataConfig, train_dir: Path | None, *, subset: bool = False
):
    """Lists directory/<class>/<image>; returns (paths, labels, skipped). The class folders must be
    `class_names` (with `subset`, some of them: a trained run's classes, `train_dir` None). Files
    whose first bytes are not JPEG/PNG/GIF/BMP are skipped (skip_corrupt) or raise a DataError."""
    found = tuple(d.name for d in _subdirs(directory))
    missing = sorted(set(class_names) - set(found))
    extra = sorted(set(found) - set(class_names))
    if subset and extra:
        raise DataError(
            f"Class folders {extra[:5]} in {directory} are not classes of the model, which knows "
            f"{len(class_names)}: {', '.join(class_names[:10])}{' ...' if len(class_names) > 10 else ''}"
        )
    if not subset and (missing or extra):
        raise DataError(
            f"Class folders in {directory} differ from those in {train_dir}: missing {missing}, extra {extra}"
        )
    paths, labels, bad = [], [], []
    for label, name in enumerate(class_names):
        if name not in found:
            continue
        files = list_image_files(directory / name)
        if not files and directory == train_dir:
            raise DataError(f"Class folder {directory / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for path in files:
            if is_image_file(path):
                paths.append(path)
                labels.append(label)
            else:
                bad.append(path)
    if bad and not config.skip_corrupt:
        raise DataError(
            f"Not an image file (JPEG/PNG/GIF/BMP): {bad[0]}"
            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''};"
            " remove it or skip such files (--skip-corrupt)"
        )
    if bad:
        log.warning("Skipped %d file(s) that are not images: %s", len(bad), ", ".join(bad))
    if not paths:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {directory}")
    return np.array(paths), np.array(labels, np.int32), len(bad)


def _folder_split(paths: np.ndarray, labels: np.ndarray, skipped: int, seed: int) -> Split:
    # Listings go class by class; a fixed permutation lets a bounded shuffle buffer mix classes.
    order = np.random.default_rng(seed).permutation(len(paths))
    paths, labels = paths[order], labels[order]

    items = tf.data.Dataset.from_tensor_slices((paths, labels))
    decode = lambda path: decode_image(tf.io.read_file(path))  # noqa: E731
    return Split(items, len(paths), decode, (None, None), tuple(paths), skipped)


def _folder_source(config: DataConfig) -> Source:
    """<root>/<split>/<class>/<image> when <root>/<train_split> has subfolders, else
    <root>/<class>/<image> with validation held out (stratified, fixed seed)."""
    layouts = "<root>/<class>/<image> or <root>/<split>/<class>/<image>"
    if config.data_dir is None:
        raise DataError(f"Received: data_dir=None; dataset 'folder' needs data_dir={layouts}")
    root = Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root}; expected {layouts}")
    if not _subdirs(root):
        raise DataError(f"No class folders in {root}; expected {layouts}")
    train_dir = root / config.train_split
    has_splits = train_dir.is_dir() and _subdirs(train_dir)
    split_dirs = {d.name: d for d in _subdirs(root)} if has_splits else {}
    if not split_dirs:
        if config.val_split is not None:
            raise DataError(
                f"Received: val_split={config.val_split!r}; {root} holds class "
                f"folders, not split folders, so use val_split=None"
            )
        train_dir = root
    class_names = tuple(d.name for d in _subdirs(train_dir))
    unprintable = [name for name in class_names if not name.isprintable()]
    if unprintable:
        raise DataError(
            f"Class folder names must be printable single lines (they become labels.txt lines and "
            f"export labels); rename {unprintable[0]!r} in {train_dir}"
        )
    paths, labels, skipped = _scan_split(train_dir, class_names, config, train_dir)
    val_name = config.val_split or next((n for n in ("validation", "val") if n in split_dirs), None)
    if val_name is None:
        keep, held = _carve(labels, config.validation_fraction, SPLIT_SEED)
        parts = {"train": (paths[keep], labels[keep], skipped), "val": (paths[held], labels[held], 0)}
    elif val_name in split_dirs:
        parts = {
            "train": (paths, labels, skipped),
            "val": _scan_split(split_dirs[val_name], class_names, config, train_dir),
        }
    else:
        raise _split_not_found(val_name, split_dirs, str(root))

    def split(name, image_size):
        if name not in parts and name not in split_dirs:
            raise _split_not_found(name, set(split_dirs) | set(parts), str(root))
        listing = parts.get(name) or _scan_split(split_dirs[name], class_names, config, train_dir)
        return _folder_split(*listing, seed=config.seed)

    return Source(class_names, len(parts["train"][0]), len(parts["val"][0]), parts["train"][2] + parts["val"][2], split)


def _labelled_folder_source(config: DataConfig, class_names: tuple[str, ...]) -> Source:
    """A folder read with a trained model's classes: <root>/<split>/<class>/<image>, or class folders
    directly under <root> (then every split name reads the whole folder)."""
    layouts = "<root>/<class>/<image> or <root>/<split>/<class>/<image>"
    root = Path(config.data_dir).expanduser() if config.data_dir else None
    if root is None or not root.is_dir():
        raise DataError(f"Image folder not found: {root}; expected {layouts}")
    subdirs = {d.name: d for d in _subdirs(root)}
    if not subdirs:
        raise DataError(f"No class or split folders in {root}; expected {layouts}")
    flat = set(subdirs) <= set(class_names)

    def split(name, image_size):
        directory = root if flat else subdirs.get(name)
        if directory is None:
            raise _split_not_found(name, subdirs, str(root))
        paths, labels, skipped = _scan_split(directory, class_names, config, None, subset=True)
        return _folder_split(paths, labels, skipped, seed=config.seed)

    return Source(class_names, 0, 0, 0, split)


# -- TFDS


def _tfds_builder(config: DataConfig):
    """The registered builder, checked to be image classification before anything is downloaded.
    Returns (builder, image feature key, label feature key)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(config.dataset, data_dir=config.data_dir)
    except (ValueError, AssertionError) as err:  # unknown name, config or version
        reason = _ACCEPTED if isinstance(err, tfds.core.registered.DatasetNotFoundError) else (first_line(err))
        raise DataError(f"Received: dataset={config.dataset!r}; {reason}") from err
    info = builder.info
    keys = info.supervised_keys
    pair = isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)
    image_key, label_key = keys if pair else ("image", "label")
    image = info.features[image_key] if image_key in info.features else None
    label = info.features[label_key] if label_key in info.features else None
    if not (
        isinstance(image, tfds.features.Image)
        and isinstance(label, tfds.features.ClassLabel)
        and image.shape[-1] in (1, 3, 4)
        and image.np_dtype == np.uint8
    ):
        raise DataError(
            f"Received: dataset={config.dataset!r}, which is not an image "
            f"classification dataset (features: {sorted(info.features)}); {_ACCEPTED}"
        )
    return builder, image_key, label_key


def _prepare(builder, name: str) -> None:
    """Downloads and prepares the dataset unless it is prepared; fails fast when offline."""
    if builder.is_prepared():
        return
    root = builder.data_dir_root
    # tfds.load retries for ~200 s when offline; a 3 s probe tells the user at once.
    if not network.network_available(TFDS_PROBE_URL):
        raise DataError(
            f"TFDS dataset {name!r} is not prepared under {root} and there is no network to "
            f"download it; use --dataset folder --data-dir <root of <class>/<image> folders>, or a "
            f"--data-dir holding a prepared copy made with `tfds build {name} --data_dir DIR` on a "
            f"networked machine"
        )
    log.info("Downloading and preparing TFDS dataset %s into %s", name, root)
    try:
        builder.download_and_prepare()
    except Exception as err:  # noqa: BLE001 - any failure here is reported as a data problem
        raise DataError(f"Cannot prepare TFDS dataset {name!r} under {root}: {first_line(err)}") from err


def _tfds_source(config: DataConfig) -> Source:
    """A registered TFDS image-classification dataset: features "image" (tfds Image) and "label"
    (ClassLabel), or the dataset's supervised keys."""
    import tensorflow_datasets as tfds

    builder, image_key, label_key = _tfds_builder(config)
    _prepare(builder, config.dataset)
    info = builder.info
    image_feature = info.features[image_key]

    def count(expr):
        try:
            return info.splits[expr].num_examples
        except (KeyError, ValueError, AssertionError) as err:
            raise _split_not_found(expr, info.splits, f"TFDS dataset {config.dataset!r}") from err

    train, total = config.train_split, count(config.train_split)
    val = config.val_split or ("validation" if "validation" in info.splits else None)
    if val is None:
        if "[" in train:
            raise DataError(
                f"Received: train_split={train!r}; cannot hold validation out of a sliced split, so set val_split too"
            )
        cut = total - _holdout_count(total, config.validation_fraction, repr(train))
        train, val = f"{train}[:{cut}]", f"{train}[{cut}:]"
    parts = {"train": train, "val": val}

    def split(name, image_size):
        expr = parts.get(name, name)
        n = count(expr)
        items = builder.as_dataset(split=expr, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})
        items = items.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))
        return Split(items, n, lambda data: to_rgb(image_feature.decode_example(data)), tuple(image_feature.shape[:2]))

    return Source(tuple(info.features[label_key].names), count(train), count(val), 0, split)
