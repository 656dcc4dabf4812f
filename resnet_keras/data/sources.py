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

from resnet_keras.config.schema import DataConfig
from resnet_keras.core import network
from resnet_keras.core.errors import DataError, first_line
from resnet_keras.data.preprocessing import (
    IMAGE_EXTENSIONS,
    JPEG_DCT,
    decode_image,
    image_file_problem,
    list_image_files,
    to_rgb,
)

log = logging.getLogger(__name__)

# Held-out splits (digits test, carved validation) use a fixed seed, not DataConfig.seed, so runs
# with different seeds validate on the same images, as TFDS slicing does.
SPLIT_SEED = 0
TFDS_PROBE_URL = "https://storage.googleapis.com"  # TFDS's download bucket
_ACCEPTED = "expected a TFDS name, 'folder', 'tfrecord', 'synthetic' or 'digits'"


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
    # TFDS: where the items come from (name, data_dir, split expression, image key), for
    # processes that re-read them (`records.prepare`).
    origin: dict | None = None
    # Sharded files: (input pipelines, pipeline id) -> (items of this pipeline's whole files, their
    # count), so each worker reads a disjoint set of files instead of every file (`data.make_dataset`).
    read_shard: Callable[[int, int], tuple[tf.data.Dataset, int]] | None = None
    # The items are encoded JPEG bytes: the training view may decode only its crop.
    jpeg: bool = False


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
    opener = {
        "folder": _folder_source,
        "synthetic": _synthetic_source,
        "digits": _digits_source,
        "tfrecord": _tfrecord_source,
    }.get(config.dataset, _tfds_source)
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
            problem = image_file_problem(path)  # regular files only: a FIFO would hang the reader
            if problem is None:
                paths.append(path)
                labels.append(label)
            else:
                bad.append((path, problem))
    if bad and not config.skip_corrupt:
        path, problem = bad[0]
        raise DataError(
            f"{problem[0].upper()}{problem[1:]}: {path}"
            f"{f' and {len(bad) - 1} more bad file(s)' if len(bad) > 1 else ''};"
            " remove it or skip such files (--skip-corrupt)"
        )
    if bad:
        log.warning("Skipped %d file(s) that are not images: %s", len(bad), ", ".join(path for path, _ in bad))
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
        origin = dict(name=config.dataset, data_dir=config.data_dir, split=expr, image_key=image_key)

        def read_shard(num_pipelines, index):
            # Whole files per input pipeline (TFDS assigns file i to pipeline i mod N), so workers
            # read disjoint files instead of every record; by example when there are too few files.
            files = info.splits[expr].file_instructions
            if len(files) < num_pipelines:
                shard = items.shard(num_pipelines, index)
                return shard, len(range(n)[index::num_pipelines])
            context = tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=index)
            mine = builder.as_dataset(
                split=expr,
                shuffle_files=False,
                read_config=tfds.ReadConfig(input_context=context),
                decoders={image_key: tfds.decode.SkipDecoding()},
            )
            mine = mine.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))
            return mine, sum(_instruction_examples(file) for file in files[index::num_pipelines])

        return Split(
            items,
            n,
            lambda data: to_rgb(image_feature.decode_example(data)),
            tuple(image_feature.shape[:2]),
            origin=origin,
            read_shard=read_shard,
        )

    return Source(tuple(info.features[label_key].names), count(train), count(val), 0, split)


def _instruction_examples(file) -> int:
    """Examples a TFDS file instruction reads (`take` is -1 for "to the end of the file")."""
    return file.take if file.take >= 0 else file.examples_in_shard - file.skip


# -- sharded TFRecords


def _tfrecord_source(config: DataConfig) -> Source:
    """`<data_dir>/train-*` and `validation-*` TFRecord files of `tf.train.Example` in the ImageNet
    schema (`resnet_keras.data.records`): ours from `resnet-keras prepare`, or those of the common
    ImageNet conversion scripts (1-based labels: `label_offset=1`). `data_dir` is a local folder
    or any `tf.io.gfile` URL (gs://...).

    Class names come from the manifest or `labels.txt`; split sizes from the manifest, else one
    counting pass over the files. The first record of every file is checked (a TFRecord, the
    schema's keys, a label among the classes) before training, so a wrong file is named at once.
    """

    if config.data_dir is None:
        raise DataError("Received: data_dir=None; dataset 'tfrecord' needs the folder or URL of the TFRecord files")
    root = config.data_dir.rstrip("/")
    manifest = _read_manifest(root)
    class_names = _record_class_names(root, manifest)
    prefixes = {"train": "train", "val": config.val_split or "validation"}
    if config.train_split != "train":
        prefixes["train"] = config.train_split
    files = {split: _list_records(root, prefix) for split, prefix in prefixes.items()}
    counts = {}
    for split, names in files.items():
        counts[split] = _record_counts(root, names, manifest, prefixes[split])
        for name in names:
            _check_first_record(name, len(class_names), config.label_offset)

    def split(name, image_size):
        if name not in files:
            extra = _list_records(root, name)
            files[name], counts[name] = extra, _record_counts(root, extra, manifest, name)
        return _record_split(files[name], counts[name], config, training=name == "train")

    return Source(class_names, sum(counts["train"]), sum(counts["val"]), 0, split)


def _op_reason(error: Exception) -> str:
    """A TensorFlow op error's own words, without the function and op names it is wrapped in."""
    import re

    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first_line(error))
    return re.sub(r"\s*\[Op:\w+\].*$", "", text)


def _gfile_error(what: str, error: Exception) -> DataError:
    return DataError(f"Cannot read {what}: {first_line(error)}")


def _require_regular(path: str) -> None:
    """DataError unless a local `path` is a regular file: reading a FIFO blocks for ever."""
    import os
    import stat

    from resnet_keras.data import records

    if not records.is_url(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise DataError(f"{path} is not a regular file")


def _read_manifest(root: str) -> dict | None:
    import json

    from resnet_keras.data import records

    path = f"{root}/{records.MANIFEST}"
    try:
        if not tf.io.gfile.exists(path):
            if not tf.io.gfile.isdir(root):
                raise DataError(f"TFRecord folder not found: {root}")
            return None
        _require_regular(path)
        with tf.io.gfile.GFile(path) as handle:
            manifest = json.load(handle)
    except tf.errors.OpError as error:
        raise _gfile_error(root, error) from None
    except ValueError as error:
        raise DataError(f"{path} is not a manifest written by `resnet-keras prepare` ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise DataError(f"{path} is not a manifest written by `resnet-keras prepare` (no splits)")
    return manifest


def _record_class_names(root: str, manifest: dict | None) -> tuple[str, ...]:
    from resnet_keras.data import records

    if manifest and manifest.get("class_names"):
        return tuple(manifest["class_names"])
    path = f"{root}/{records.LABELS}"
    try:
        if tf.io.gfile.exists(path):
            _require_regular(path)
            with tf.io.gfile.GFile(path) as handle:
                names = tuple(line.strip() for line in handle.read().splitlines() if line.strip())
            if len(names) >= 2:
                return names
    except tf.errors.OpError as error:
        raise _gfile_error(path, error) from None
    raise DataError(
        f"No class names for the TFRecords in {root}: expected {records.MANIFEST} or {records.LABELS} "
        "(one class name per line, in label order)"
    )


def _list_records(root: str, prefix: str) -> list[str]:
    try:
        names = sorted(tf.io.gfile.glob(f"{root}/{prefix}-*"))
    except tf.errors.OpError as error:
        raise _gfile_error(root, error) from None
    names = [n for n in names if not n.rsplit("/", 1)[-1].startswith(".")]
    if not names:
        raise DataError(f"No TFRecord files {root}/{prefix}-* (expected {prefix}-00000-of-NNNNN ...)")
    return names


def _record_counts(root: str, names: list[str], manifest: dict | None, prefix: str) -> list[int]:
    """Examples per file: the manifest's, checked against the files, else counted from the files.

    Counting walks the record headers (`records.walk_records`: header to header, the data skipped, every
    length checked, so no record can make TensorFlow's reader allocate more than the file holds).
    A manifest is checked against the names and byte sizes of the files and, for local files, against
    the walked counts; a URL's files (one request per read) get their first header walked and the
    declared count bounded by the size (every record takes at least 16 bytes of framing).
    """
    from resnet_keras.data import records

    if manifest is None:
        log.info("No manifest in %s: counting the records of %d file(s)", root, len(names))
        return [records.walk_records(name) for name in names]
    entry = next((e for e in manifest["splits"].values() if e.get("prefix") == prefix), None)
    listed = {shard["file"]: shard for shard in (entry or {}).get("shards", [])}
    found = {name.rsplit("/", 1)[-1]: name for name in names}
    if set(listed) != set(found):
        odd = sorted(set(listed) ^ set(found))
        raise DataError(
            f"The manifest in {root} disagrees with the {prefix} files: {odd[:3]} "
            f"{'listed but missing' if odd[0] in listed else 'present but not listed'}; rerun prepare"
        )
    framing = records.HEADER_BYTES + records.FOOTER_BYTES
    for file, name in found.items():
        size = tf.io.gfile.stat(name).length
        if size != listed[file]["bytes"]:
            raise DataError(f"{name} has {size} bytes; the manifest in {root} expects {listed[file]['bytes']}")
        declared = listed[file]["examples"]
        if isinstance(declared, bool) or not (isinstance(declared, int) and declared >= 0):
            raise DataError(f"The manifest in {root} gives {file} examples={declared!r}; expected a count")
        if records.is_url(name):
            records.walk_records(name, limit=1)
            if declared * framing > size:
                raise DataError(
                    f"The manifest in {root} declares {declared} records in {name}, which has only {size} bytes "
                    f"(room for at most {size // framing}); rerun prepare"
                )
            continue
        found_count = records.walk_records(name)
        if found_count != declared:
            raise DataError(
                f"{name} holds {found_count} records; the manifest in {root} declares {declared}; rerun prepare"
            )
    return [int(listed[name.rsplit("/", 1)[-1]]["examples"]) for name in names]


def find_damaged_record_file(config: DataConfig) -> tuple[str, str] | None:
    """(file, reason) of the first of a `tfrecord` dataset's files that does not read to its end
    (a record whose checksum fails), or None. Reads every file: called when training hit one."""
    from resnet_keras.data import records

    root = config.data_dir.rstrip("/")
    for prefix in (config.train_split, config.val_split or "validation"):
        for name in _list_records(root, prefix):
            try:
                records.walk_records(name)
            except DataError as error:
                return name, str(error).removeprefix(f"{name} ")
            try:
                tf.data.TFRecordDataset(name).reduce(0, lambda n, _: n + 1)
            except tf.errors.OpError as error:
                return name, _op_reason(error)
    return None


def _check_first_record(name: str, num_classes: int, offset: int) -> None:
    from resnet_keras.data import records

    records.walk_records(name, limit=1)  # the length TensorFlow would allocate, checked first
    try:
        first = next(iter(tf.data.TFRecordDataset(name).take(1)), None)
    except tf.errors.OpError as error:
        raise DataError(f"{name} is not a readable TFRecord file ({_op_reason(error)})") from None
    if first is None:
        return
    try:
        example = tf.train.Example.FromString(first.numpy())
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        raise DataError(f"{name}: its records are not tf.train.Example protos") from None
    feature = example.features.feature
    missing = [records.KEYS[k] for k in ("encoded", "label") if records.KEYS[k] not in feature]
    if missing:
        raise DataError(f"{name}: the Example has no {', '.join(missing)}; expected the ImageNet TFRecord schema")
    label = feature[records.KEYS["label"]].int64_list.value[0] - offset
    if not 0 <= label < num_classes:
        raise DataError(
            f"{name}: label {label + offset} minus label_offset {offset} is outside the {num_classes} classes"
            f"{' (1-based labels need --label-offset 1)' if label == num_classes else ''}"
        )


def _record_split(names: list[str], counts: list[int], config: DataConfig, training: bool) -> Split:
    """A Split over whole files, interleaved; `read_shard` gives one input pipeline its files."""
    from resnet_keras.data import records

    order = np.random.default_rng(config.seed).permutation(len(names)) if training else np.arange(len(names))
    names, counts = [names[i] for i in order], [counts[i] for i in order]
    spec = {
        records.KEYS["encoded"]: tf.io.FixedLenFeature([], tf.string),
        records.KEYS["label"]: tf.io.FixedLenFeature([], tf.int64),
    }

    @tf.autograph.experimental.do_not_convert  # no Python control flow; AutoGraph trips over the closure
    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        return example[records.KEYS["encoded"]], tf.cast(example[records.KEYS["label"]] - config.label_offset, tf.int32)

    def read(files):
        files = tf.data.Dataset.from_tensor_slices(files)
        # Parallel reads of several files at once: what keeps remote (gs://) storage from stalling the pipeline.
        ds = files.interleave(
            tf.autograph.experimental.do_not_convert(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20)),
            cycle_length=min(16, len(names)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

    def read_shard(num_pipelines, index):
        mine = list(range(index, len(names), num_pipelines))
        if not mine:
            raise DataError(
                f"{len(names)} TFRecord file(s) cannot be shared by {num_pipelines} workers; write more shards"
            )
        return read([names[i] for i in mine]), sum(counts[i] for i in mine)

    def decode(data):
        return tf.ensure_shape(tf.io.decode_jpeg(data, channels=3, dct_method=JPEG_DCT), [None, None, 3])

    return Split(read(names), sum(counts), decode, (None, None), read_shard=read_shard, jpeg=True)
