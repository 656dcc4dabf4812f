"""Sharded TFRecord datasets: `prepare` writes them, `open_records` reads their layout back.

The files follow the layout and `tf.train.Example` schema of the ImageNet conversion scripts
that the ecosystem reads (TensorFlow's `inception/data/build_imagenet_data.py`, Model Garden,
TPU reference models)::

    <out>/train-00000-of-00128 ... <out>/validation-00000-of-00016
    image/encoded (JPEG bytes)  image/format (b"JPEG")  image/class/label (int64)
    image/class/text  image/height  image/width  image/filename

plus `labels.txt` (class names in label order) and `manifest.json` (counts per split and class,
each shard's file name, example count and byte size, the label offset). Our labels start at 0;
the conversion scripts' start at 1 (0 was "background"): `DataConfig.label_offset` subtracts it.

`prepare` decodes every image once on the way in (with Pillow, in worker processes, so no
TensorFlow runtime is forked): a file that does not decode is named (or skipped with
`skip_corrupt`); anything but an 8-bit RGB JPEG (PNG, grayscale, CMYK, 16-bit, palette) is
re-encoded as an RGB JPEG, so the reader only ever decodes RGB JPEG. Each shard is written under
a temporary name and renamed, so a killed run leaves only whole shards, and a rerun keeps them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from resnet_keras.errors import DataError, UsageError, first_line
from resnet_keras.files import space_for, write_atomic

MANIFEST = "manifest.json"
LABELS = "labels.txt"
PLAN = ".prepare-plan.json"  # the listing a partial `prepare` was writing, to resume only the same one
# Our split names -> the file prefix of the conversion scripts.
SPLIT_FILES = {"train": "train", "val": "validation"}
KEYS = {
    "encoded": "image/encoded",
    "format": "image/format",
    "label": "image/class/label",
    "text": "image/class/text",
    "height": "image/height",
    "width": "image/width",
    "filename": "image/filename",
}
JPEG_QUALITY = 95  # for re-encoded images: close to lossless at a third of PNG's size
DEFAULT_IMAGES_PER_SHARD = 1024  # ~100 MB of ImageNet JPEGs: the size the TFRecord guides recommend


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}"


# ----------------------------------------------------------------------------- framing
#
# A TFRecord file is a chain of records: uint64 length (little-endian), uint32 masked CRC32C of
# those 8 bytes, the data, uint32 masked CRC32C of the data. TensorFlow's reader allocates `length`
# bytes before it reads them, so a length that claims more than the file holds (with a valid CRC:
# anyone can compute one) kills the process natively. We walk the headers ourselves first.

HEADER_BYTES = 12  # length + its CRC
FOOTER_BYTES = 4  # the data's CRC


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C that TFRecord framing stores (TensorFlow's `crc32c::Mask`).

    Pure Python (~0.2 us a byte): for 8-byte headers; record data is left to TensorFlow's own
    check, which fails cleanly (DataLossError)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _length_crc_tables() -> tuple[int, tuple[tuple[int, ...], ...]]:
    """CRC32C of 8-byte strings as one lookup per byte: for a fixed length the CRC is affine in the
    bits, so crc(b0..b7) = crc(zeros) ^ T0[b0] ^ ... ^ T7[b7]: eight lookups, no bit loop."""

    def crc(data: bytes) -> int:
        value = 0xFFFFFFFF
        for byte in data:
            value = _CRC32C[(value ^ byte) & 0xFF] ^ (value >> 8)
        return value ^ 0xFFFFFFFF

    base = crc(bytes(8))
    tables = tuple(tuple(crc(bytes(k) + bytes([b]) + bytes(7 - k)) ^ base for b in range(256)) for k in range(8))
    return base, tables


_LENGTH_CRC_BASE, _LENGTH_CRC_TABLES = _length_crc_tables()


def masked_length_crc(header: bytes) -> int:
    """`masked_crc32c` of an 8-byte length field, by table."""
    t = _LENGTH_CRC_TABLES
    crc = (
        _LENGTH_CRC_BASE
        ^ t[0][header[0]] ^ t[1][header[1]] ^ t[2][header[2]] ^ t[3][header[3]]
        ^ t[4][header[4]] ^ t[5][header[5]] ^ t[6][header[6]] ^ t[7][header[7]]
    )  # fmt: skip
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def is_url(name: str) -> bool:
    return "://" in name


def _open_record_file(name: str):
    """(read_at(offset, n) -> bytes, close(), size, identity) of a local regular file (identity:
    path, device, inode, size, mtime) or a tf.io.gfile URL (identity None); DataError for anything
    else (a FIFO would block, a device never end)."""
    import stat

    if is_url(name):
        import tensorflow as tf

        try:
            handle, size = tf.io.gfile.GFile(name, "rb"), tf.io.gfile.stat(name).length
        except tf.errors.OpError as error:
            raise DataError(f"Cannot read {name}: {first_line(error)}") from None

        def read_at(offset, count):
            handle.seek(offset)
            return handle.read(count)

        return read_at, handle.close, size, None
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer for ever.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise DataError(f"Cannot read {name}: {error.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DataError(f"{name} is not a regular file; TFRecord files must be regular files")
    identity = (name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    page = {"start": 0, "data": b""}

    def read_at(offset, count):
        # One page read serves every header in it: small records cost one syscall per 4 KB, and a
        # large record one page read, what the kernel reads anyway.
        at = offset - page["start"]
        if not (0 <= at and at + count <= len(page["data"])):
            page["start"], page["data"], at = offset, os.pread(fd, max(count, 4096), offset), 0
        return page["data"][at : at + count]

    return read_at, (lambda: os.close(fd)), info.st_size, identity


# A local file's identity -> its records: a run opens its dataset several times (describe,
# each split's pipeline); a walk costs microseconds a record, so an unchanged file is walked once a process.
_WALKED: dict[tuple, int] = {}


def walk_records(name: str, *, limit: int | None = None) -> int:
    """Records in the TFRecord file `name`, counted from the framing headers alone (seeks from header
    to header, a 4 KB page read each, the data skipped), each length checked against its CRC and the
    bytes left in the file.

    Stops after `limit` records (None: the whole file). DataError naming the file and the byte
    offset for a length that fails its CRC, claims more than the file holds, or a truncated end.
    """
    read_at, close, size, key = _open_record_file(name)
    if key in _WALKED:
        close()
        return _WALKED[key] if limit is None else min(limit, _WALKED[key])
    count = offset = 0
    try:
        while offset < size and (limit is None or count < limit):
            header = read_at(offset, HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                raise DataError(
                    f"{name} is not a readable TFRecord file ({size - offset} stray byte(s) after record {count})"
                )
            length, crc = struct.unpack("<QI", header)
            if crc != masked_length_crc(header):
                raise DataError(
                    f"{name} is not a readable TFRecord file (the length of record {count + 1} "
                    f"at byte {offset} fails its checksum)"
                )
            end = offset + HEADER_BYTES + length + FOOTER_BYTES
            if end > size:
                raise DataError(
                    f"{name} is not a readable TFRecord file (record {count + 1} at byte {offset} claims "
                    f"{length} bytes; the file has {size}): it is truncated or damaged"
                )
            offset, count = end, count + 1
    finally:
        close()
    if key is not None and offset >= size:  # walked to the end: the whole file is good
        _WALKED[key] = count
    return count


# ----------------------------------------------------------------------------- one image


def encode_image(data: bytes, name: str) -> tuple[bytes, int, int]:
    """Encoded image bytes -> (RGB JPEG bytes, height, width), decoding the image fully once.

    An 8-bit RGB JPEG is kept byte for byte; anything else is converted to RGB (grey replicated,
    alpha dropped, CMYK converted, 16 bits scaled to 8) and encoded as JPEG. Raises ValueError
    naming `name` when the bytes do not decode.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the whole image: truncated files fail here, not in training
            if image.format == "JPEG" and image.mode == "RGB":
                return data, image.height, image.width
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = Image.fromarray((np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            rgb = image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad data
        raise ValueError(f"{name}: cannot decode ({first_line(error)})") from None
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), rgb.height, rgb.width


def make_example(jpeg: bytes, label: int, text: str, height: int, width: int, filename: str) -> bytes:
    import tensorflow as tf

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    values = dict(
        encoded=jpeg,
        format=b"JPEG",
        label=int(label),
        text=text.encode(),
        height=int(height),
        width=int(width),
        filename=filename.encode(),
    )
    features = {KEYS[key]: feature(value) for key, value in values.items()}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


# ----------------------------------------------------------------------------- one shard


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One shard to write: `items` are (file path, label) pairs, or (TFDS index, label) with `tfds`."""

    path: str
    items: tuple[tuple[str, int], ...]
    class_names: tuple[str, ...]
    skip_corrupt: bool
    tfds: dict | None = None  # {"name", "data_dir", "split", "start"}: read the images from TFDS


def write_shard(job: ShardJob) -> dict:
    """Writes one shard (temporary name, then rename); returns its manifest entry."""
    import tensorflow as tf

    path = Path(job.path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    counts, skipped = [0] * len(job.class_names), []
    images = _tfds_images(job) if job.tfds else ((item, _read(item)) for item, _ in job.items)
    # About the shard's size, for the space check: the images' bytes (TFDS's are not known here).
    needed = 0 if job.tfds else sum(os.path.getsize(item) + 256 for item, _ in job.items if os.path.isfile(item))
    with space_for(path, needed):
        try:
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for (name, data), (_, label) in zip(images, job.items, strict=True):
                    try:
                        jpeg, height, width = encode_image(data, name)
                    except ValueError as error:
                        if not job.skip_corrupt:
                            raise DataError(f"{error}; remove it or skip such files (--skip-corrupt)") from None
                        skipped.append(name)
                        continue
                    text = job.class_names[label]
                    writer.write(make_example(jpeg, label, text, height, width, os.path.basename(name)))
                    counts[label] += 1
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return dict(file=path.name, examples=sum(counts), bytes=path.stat().st_size, per_class=counts, skipped=skipped)


def _start_worker(parent_pid: int) -> None:
    """A worker's first act: die with the parent (a killed `prepare` leaves no worker behind), then
    import TensorFlow with stderr pointed at /dev/null: its C++ start-up lines, printed once per
    worker process, would bury the command's own output."""
    import sys

    from resnet_keras.processes import die_with_parent

    die_with_parent(parent_pid)
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read(path: str) -> bytes:
    from resnet_keras.preprocessing import open_regular_file

    try:
        with open_regular_file(path) as handle:
            return handle.read()
    except ValueError as error:  # replaced by a FIFO or device since the listing
        raise DataError(f"{path}: {error}") from None


def _tfds_images(job: ShardJob):
    """(name, encoded bytes) of this shard's TFDS examples, read in this worker process."""
    import tensorflow_datasets as tfds

    spec = job.tfds
    builder = tfds.builder(spec["name"], data_dir=spec["data_dir"])
    items = builder.as_dataset(
        split=spec["split"],
        shuffle_files=False,
        decoders={spec["image_key"]: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False),  # read once, in order: no in-memory copy
    )
    items = items.skip(spec["start"]).take(len(job.items))
    for offset, example in enumerate(items.as_numpy_iterator()):
        yield f"{spec['name']}/{spec['split']}#{spec['start'] + offset}", example[spec["image_key"]]


# ----------------------------------------------------------------------------- prepare


def prepare(
    config,
    output_dir: str | os.PathLike,
    *,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    processes: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Writes `config`'s train and val splits (a folder in either layout, or a TFDS dataset) as
    sharded TFRecords in `output_dir`; returns the manifest.

    `config` is a `DataConfig` (its `skip_corrupt`, `val_split` and `validation_fraction` apply).
    Shards already written by an interrupted run of the same listing are kept; a different
    listing in the same folder is refused (UsageError). `processes` defaults to the CPU count.
    """
    from resnet_keras.sources import open_source

    if not (isinstance(images_per_shard, int) and images_per_shard >= 1):
        raise UsageError(f"Received: images_per_shard={images_per_shard!r}; expected an integer >= 1")
    if config.dataset in ("digits", "synthetic", "tfrecord"):
        raise UsageError(f"Received: dataset={config.dataset!r}; prepare reads an image folder or a TFDS dataset")
    out = Path(output_dir)
    source = open_source(config)
    names = source.class_names
    listings = {split: _listing(source, split, config) for split in SPLIT_FILES}
    plan = dict(
        # skip_corrupt changes no finished shard: a rerun may add it after a corrupt file stopped a run.
        source={key: value for key, value in config.to_dict().items() if key != "skip_corrupt"},
        images_per_shard=images_per_shard,
        fingerprint=hashlib.sha256(json.dumps([names, listings], default=str).encode()).hexdigest(),
    )
    _check_or_start(out, plan)
    jobs = []
    for split, (items, tfds_spec) in listings.items():
        count = max(1, -(-len(items) // images_per_shard))
        for index in range(count):
            chunk = tuple(items[index * images_per_shard : (index + 1) * images_per_shard])
            spec = dict(tfds_spec, start=index * images_per_shard) if tfds_spec else None
            path = out / shard_name(SPLIT_FILES[split], index, count)
            jobs.append(ShardJob(str(path), chunk, names, config.skip_corrupt, spec))
    todo = [job for job in jobs if not Path(job.path).exists()]
    kept = {job.path: _existing_entry(job) for job in jobs if Path(job.path).exists()}
    if kept:
        log(f"Keeping {len(kept)} shard(s) already written in {out}.")
    workers = max(1, min(processes or os.cpu_count() or 1, len(todo) or 1))
    log(f"Writing {len(todo)} shard(s) of {sum(len(j.items) for j in todo)} images with {workers} process(es).")
    entries = dict(kept)
    if workers == 1:
        for job in todo:
            entries[job.path] = write_shard(job)
    else:
        import multiprocessing

        # spawn: a forked TensorFlow runtime can deadlock. The workers are started from this thread,
        # which waits in `map` until they are done: the parent-death signal is tied to the thread.
        context = multiprocessing.get_context("spawn")
        start = dict(initializer=_start_worker, initargs=(os.getpid(),))
        with ProcessPoolExecutor(workers, mp_context=context, **start) as pool:
            for job, entry in zip(todo, pool.map(write_shard, todo), strict=True):
                entries[job.path] = entry
    manifest = _manifest(names, jobs, entries, images_per_shard)
    write_atomic(out / LABELS, "".join(f"{name}\n" for name in names))
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (out / PLAN).unlink(missing_ok=True)
    for split, facts in manifest["splits"].items():
        log(f"{split}: {facts['examples']} images in {len(facts['shards'])} shard(s), {facts['skipped']} skipped")
    return manifest


def _listing(source, split: str, config) -> tuple[list, dict | None]:
    """[(path or index, label)] of a split in the source's (seeded, class-mixing) order."""
    part = source.split(split, 224)
    labels = [int(label) for _, label in part.items.as_numpy_iterator()]
    if part.files:
        return list(zip(part.files, labels, strict=True)), None
    # TFDS: the split expression the source reads, re-read by index ranges in the worker processes.
    return list(zip(range(len(labels)), labels, strict=True)), part.origin


def _check_or_start(out: Path, plan: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    previous = out / PLAN
    if previous.exists():
        if json.loads(previous.read_text()) != plan:
            raise UsageError(
                f"{out} holds shards of an interrupted prepare of another listing or setting "
                f"({PLAN}); use an empty --output folder"
            )
        return
    if any(p.name != PLAN for p in out.iterdir()):
        raise UsageError(f"{out} is not empty; prepare writes into a new or empty folder (or resumes its own)")
    write_atomic(previous, json.dumps(plan))


def _existing_entry(job: ShardJob) -> dict:
    """The manifest entry of a shard a previous run finished (counted from the file)."""
    import tensorflow as tf

    counts = [0] * len(job.class_names)
    walk_records(job.path)  # a shard tampered with since must not crash TensorFlow's reader
    for record in tf.data.TFRecordDataset(job.path):
        example = tf.train.Example.FromString(record.numpy())
        counts[example.features.feature[KEYS["label"]].int64_list.value[0]] += 1
    path = Path(job.path)
    return dict(file=path.name, examples=sum(counts), bytes=path.stat().st_size, per_class=counts, skipped=[])


def _manifest(names: Sequence[str], jobs: list[ShardJob], entries: dict, images_per_shard: int) -> dict:
    splits = {}
    for split, prefix in SPLIT_FILES.items():
        shards = [entries[job.path] for job in jobs if Path(job.path).name.startswith(prefix + "-")]
        per_class = [sum(s["per_class"][i] for s in shards) for i in range(len(names))]
        splits[split] = dict(
            prefix=prefix,
            examples=sum(s["examples"] for s in shards),
            skipped=sum(len(s["skipped"]) for s in shards),
            skipped_files=[f for s in shards for f in s["skipped"]],
            per_class=dict(zip(names, per_class, strict=True)),
            shards=[dict(file=s["file"], examples=s["examples"], bytes=s["bytes"]) for s in shards],
        )
    return dict(format="resnet-keras tfrecord 1", label_offset=0, class_names=list(names), splits=splits)
