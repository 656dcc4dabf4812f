"""Sharded TFRecord datasets: the format (`prepare.prepare` writes a source into it shard by shard;
`sources.open_records` reads its layout back), record framing checks and the shard writer.

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
import io
import os
import struct
from pathlib import Path

from resnet_keras.core.errors import DataError, first_line
from resnet_keras.core.files import space_for

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


def _read(path: str) -> bytes:
    from resnet_keras.data.preprocessing import open_regular_file

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
