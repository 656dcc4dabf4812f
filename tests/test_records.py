"""`prepare` (image folder -> sharded TFRecords) and the `tfrecord` source: schema, re-encoding,
resume, per-worker file sharding, and one-line errors for bad files (real CIFAR-10 JPEGs)."""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from resnet_keras.cli.main import cli
from resnet_keras.config.schema import DataConfig
from resnet_keras.core.errors import DataError, UsageError
from resnet_keras.data import records
from resnet_keras.data.pipeline import describe, make_dataset
from resnet_keras.data.prepare import prepare
from resnet_keras.data.sources import open_source


def quiet(_message):
    pass


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, image_data):
    """Three classes of real JPEGs, plus one image per odd kind (grey PNG, CMYK JPEG, 16-bit PNG, palette GIF)."""
    root = tmp_path_factory.mktemp("odd")
    mini = image_data / "cifar10-mini" / "train"
    for name in ("airplane", "cat", "ship"):
        (root / name).mkdir()
        for path in sorted((mini / name).glob("*.jpg"))[:10]:
            shutil.copy(path, root / name / path.name)
    photo = Image.open(sorted((mini / "cat").glob("*.jpg"))[0]).resize((40, 30))
    photo.convert("L").save(root / "cat" / "grey.png")
    photo.convert("CMYK").save(root / "cat" / "cmyk.jpg")
    Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257).save(root / "ship" / "deep.png")
    photo.convert("P").save(root / "ship" / "palette.gif")
    return root


def read_examples(path):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


def value(example, key):
    feature = example.features.feature[records.KEYS[key]]
    return feature.int64_list.value[0] if feature.int64_list.value else feature.bytes_list.value[0]


def test_prepare_writes_the_imagenet_schema_and_re_encodes_odd_images_as_rgb_jpeg(odd_folder, tmp_path):
    out = tmp_path / "records"
    config = DataConfig(dataset="folder", data_dir=str(odd_folder), validation_fraction=0.2)
    manifest = prepare(config, out, images_per_shard=8, processes=1, log=quiet)
    assert (out / "labels.txt").read_text().split() == ["airplane", "cat", "ship"]
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["examples"] + val["examples"] == 34 and val["examples"] == 7
    assert [s["file"] for s in train["shards"]] == [f"train-0000{i}-of-00004" for i in range(4)]
    assert sum(train["per_class"].values()) == train["examples"]
    examples = [e for s in train["shards"] + val["shards"] for e in read_examples(out / s["file"])]
    assert len(examples) == 34
    by_name = {f"{value(e, 'text').decode()}/{value(e, 'filename').decode()}": e for e in examples}
    for name in ("cat/grey.png", "cat/cmyk.jpg", "ship/deep.png", "ship/palette.gif"):
        example = by_name[name]
        image = tf.io.decode_jpeg(value(example, "encoded")).numpy()  # a JPEG now, whatever it was
        assert value(example, "format") == b"JPEG" and image.shape == (30, 40, 3), name
        assert (value(example, "height"), value(example, "width")) == (30, 40)
    assert value(by_name["ship/deep.png"], "text") == b"ship" and value(by_name["ship/deep.png"], "label") == 2
    grey = tf.io.decode_jpeg(value(by_name["ship/deep.png"], "encoded")).numpy().astype(int)
    assert 20 < grey.mean() < 235  # 16 bits scaled to 8, not clipped to white
    # A source JPEG in RGB is stored byte for byte.
    original = sorted((odd_folder / "airplane").glob("*.jpg"))[0]
    assert value(by_name[f"airplane/{original.name}"], "encoded") == original.read_bytes()

    # The tfrecord source reads them back with the manifest's counts and classes.
    info = describe(DataConfig(dataset="tfrecord", data_dir=str(out)))
    assert (info.num_train, info.num_val, info.class_names) == (27, 7, ("airplane", "cat", "ship"))


def test_a_corrupt_image_is_named_or_skipped_and_an_interrupted_prepare_resumes(odd_folder, tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(odd_folder, folder)
    (folder / "cat" / "broken.jpg").write_bytes((folder / "cat" / "cmyk.jpg").read_bytes()[:300])  # truncated
    out = tmp_path / "records"
    config = DataConfig(dataset="folder", data_dir=str(folder), validation_fraction=0.2)
    with pytest.raises(DataError, match=r"broken\.jpg: cannot decode .*--skip-corrupt"):
        prepare(config, out, images_per_shard=4, processes=1, log=quiet)
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert all(name.startswith(("train-", "validation-")) for name in written)  # whole shards only, no manifest
    assert not list(out.glob(".*.tmp-*"))
    before = {name: (out / name).read_bytes() for name in written}

    messages = []
    skip = DataConfig(dataset="folder", data_dir=str(folder), validation_fraction=0.2, skip_corrupt=True)
    manifest = prepare(skip, out, images_per_shard=4, processes=2, log=messages.append)
    assert any(m.startswith(f"Keeping {len(before)} shard(s)") for m in messages) or not before
    assert all((out / name).read_bytes() == data for name, data in before.items())  # kept, not rewritten
    skipped = manifest["splits"]["train"]["skipped_files"] + manifest["splits"]["val"]["skipped_files"]
    assert [p.rsplit("/", 1)[-1] for p in skipped] == ["broken.jpg"]
    total = manifest["splits"]["train"]["examples"] + manifest["splits"]["val"]["examples"]
    assert total == 34 and not (out / records.PLAN).exists()
    with pytest.raises(UsageError, match="not empty"):  # a finished output is never overwritten
        prepare(skip, out, images_per_shard=4, log=quiet)


@pytest.fixture(scope="module")
def cifar_records(tmp_path_factory, image_data):
    out = tmp_path_factory.mktemp("cifar") / "records"
    config = DataConfig(dataset="folder", data_dir=str(image_data / "cifar10-mini"))
    prepare(config, out, images_per_shard=100, processes=1, log=quiet)
    return out


def digest(image_bytes):
    return hashlib.sha256(image_bytes).hexdigest()


def test_two_workers_read_disjoint_files_whose_union_is_the_split(cifar_records):
    config = DataConfig(dataset="tfrecord", data_dir=str(cifar_records))
    part = open_source(config).split("train", 32)
    everything = sorted(digest(item) for item, _ in part.items.as_numpy_iterator())
    assert len(everything) == 1000 and len(set(everything)) == 1000
    seen, files = [], []
    for worker in range(2):
        items, count = part.read_shard(2, worker)
        mine = [digest(item) for item, _ in items.as_numpy_iterator()]
        assert len(mine) == count == 500  # 10 files of 100: 5 each
        seen.append(set(mine))
    assert not seen[0] & seen[1] and sorted(seen[0] | seen[1]) == everything
    # Through the pipeline under an InputContext: each worker gets its files' examples, batched per replica.
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        batches = make_dataset(config, "train", image_size=32, batch_size=100, training=False, input_context=context)
        files.append(sum(int(labels.shape[0]) for _, labels in batches))
    assert files == [500, 500]


def run(*args):
    result = CliRunner().invoke(cli, ["train", "--dataset", "tfrecord", *args, "--depth", "8", "--image-size", "32"])
    return result.exit_code, result.output


@pytest.mark.parametrize("damage", ["not_a_record", "no_keys", "label_out_of_range", "manifest_disagrees", "gs"])
def test_bad_record_inputs_are_one_line_exit_2_naming_the_file(cifar_records, tmp_path, damage):
    bad = tmp_path / "records"
    shutil.copytree(cifar_records, bad)
    first = bad / "train-00000-of-00010"
    if damage == "not_a_record":
        first.write_bytes(b"this is a text file, not a TFRecord\n" * 20)
        (bad / "manifest.json").unlink()  # with it, the size check names the file first
        expected = "train-00000-of-00010 is not a readable TFRecord file"
    elif damage in ("no_keys", "label_out_of_range"):
        feature = {"image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[10]))}
        if damage == "label_out_of_range":
            feature["image/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))
        with tf.io.TFRecordWriter(str(first)) as writer:
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        (bad / "manifest.json").unlink()  # a foreign set: labels.txt gives the classes
        expected = "no image/encoded" if damage == "no_keys" else "label 10 minus label_offset 0 is outside the 10"
    elif damage == "manifest_disagrees":
        (bad / "train-00009-of-00010").unlink()
        expected = "manifest in .* disagrees with the train files: \\['train-00009-of-00010'\\] listed but missing"
    else:
        bad = "gs://resnet-keras-no-such-bucket/imagenet"
        expected = "Cannot read gs://resnet-keras-no-such-bucket/imagenet"
    code, output = run("--data-dir", str(bad), "--model-dir", str(tmp_path / "run"))
    assert code == 2 and output.startswith("Error: ") and output.strip().count("\n") == 0, output
    assert re.search(expected, output), output
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_record_damaged_mid_shard_is_named_when_training_reaches_it(cifar_records, tmp_path):
    bad = tmp_path / "records"
    shutil.copytree(cifar_records, bad)
    shard = bad / "train-00003-of-00010"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, so the manifest agrees; the record's checksum fails
    shard.write_bytes(bytes(data))
    code, output = run(
        "--data-dir",
        str(bad),
        "--width",
        "0.25",
        "--batch-size",
        "100",
        "--epochs",
        "1",
        "--model-dir",
        str(tmp_path / "run"),
    )
    assert code == 2 and output.strip().count("\n") == 0, output
    assert output.startswith(f"Error: {shard}: corrupted record at "), output


def test_one_based_labels_read_with_a_label_offset(cifar_records, tmp_path):
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    shutil.copy(cifar_records / "labels.txt", shifted)
    for path in sorted(cifar_records.glob("*-of-*")):
        with tf.io.TFRecordWriter(str(shifted / path.name)) as writer:
            for example in read_examples(path):
                example.features.feature["image/class/label"].int64_list.value[0] += 1
                writer.write(example.SerializeToString())
    with pytest.raises(DataError, match="1-based labels need --label-offset 1"):
        describe(DataConfig(dataset="tfrecord", data_dir=str(shifted)))
    config = DataConfig(dataset="tfrecord", data_dir=str(shifted), label_offset=1)
    assert describe(config).num_train == 1000  # counted: no manifest
    labels = np.concatenate([y for _, y in make_dataset(config, "val", image_size=32, batch_size=200, training=False)])
    assert sorted(np.bincount(labels)) == [20] * 10
    assert json.loads((cifar_records / "manifest.json").read_text())["label_offset"] == 0


def test_fused_decode_and_crop_matches_decoding_the_whole_image(image_data):
    from resnet_keras.data.preprocessing import decode_image, decode_random_crop, random_resized_crop

    photo = Image.open(image_data / "cifar10-mini" / "train" / "cat" / "0000.jpg").resize((400, 350))
    for fmt in ("JPEG", "PNG"):  # PNG takes the whole-decode branch
        out = io.BytesIO()
        photo.save(out, format=fmt, quality=90)
        data = tf.constant(out.getvalue())
        for key in range(6):
            key = tf.constant(key, tf.int64)
            fused = decode_random_crop(data, key, 64).numpy()
            whole = random_resized_crop(decode_image(data), key, 64).numpy()
            # The same window and flip; libjpeg's upsampling differs by a level or two at a crop's edge.
            assert fused.shape == (64, 64, 3) and np.abs(fused - whole).max() <= 3, (fmt, int(key))
    # random_resized_crop given encoded bytes takes the fused path: what the streamed pipelines use.
    assert np.array_equal(random_resized_crop(data, key, 64).numpy(), decode_random_crop(data, key, 64).numpy())


def test_tfds_splits_are_sharded_by_file_per_worker(tmp_path):
    import tensorflow_datasets as tfds
    import tensorflow_datasets.testing  # noqa: F401  registers dummy_mnist

    tfds.testing.DummyMnist(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=4)  # 4 files of 5 examples
    )
    config = DataConfig(dataset="dummy_mnist", data_dir=str(tmp_path), val_split="test")
    part = open_source(config).split("train", 28)
    everything = sorted(digest(item) for item, _ in part.items.as_numpy_iterator())
    assert len(everything) == 20
    for workers, expected in ((2, [10, 10]), (8, [3, 3, 3, 3, 2, 2, 2, 2])):  # 8 > 4 files: by example
        seen = []
        for worker in range(workers):
            items, count = part.read_shard(workers, worker)
            mine = [digest(item) for item, _ in items.as_numpy_iterator()]
            assert len(mine) == count
            seen.append(mine)
        assert [len(s) for s in seen] == expected
        assert sorted(d for s in seen for d in s) == everything  # disjoint, and together the split
    # prepare reads the same TFDS splits into our shards (grayscale PNGs become RGB JPEGs).
    manifest = prepare(config, tmp_path / "records", images_per_shard=8, processes=1, log=quiet)
    assert [manifest["splits"][s]["examples"] for s in ("train", "val")] == [20, 20]
    first = read_examples(tmp_path / "records" / "train-00000-of-00003")[0]
    assert tf.io.decode_jpeg(value(first, "encoded")).shape == (28, 28, 3)


def test_a_resumed_fused_stream_continues_with_the_batches_an_uninterrupted_one_reads(cifar_records):
    # 1000 records in batches of 100: skipping 13 lands at batch 3 of epoch 1 (the second epoch).
    config = DataConfig(dataset="tfrecord", data_dir=str(cifar_records), seed=3, deterministic=True, augment="imagenet")

    def stream(skip, take):
        ds = make_dataset(config, "train", image_size=40, batch_size=100, training=True, repeat=True, skip_batches=skip)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(take)]

    straight, resumed = stream(0, 15), stream(13, 2)
    for (x, y), (x_resumed, y_resumed) in zip(straight[13:], resumed, strict=True):
        assert np.array_equal(x, x_resumed) and np.array_equal(y, y_resumed)


def record_offsets(path):
    """Byte offsets of each record's header in a TFRecord file."""
    data, offsets, offset = path.read_bytes(), [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + int.from_bytes(data[offset : offset + 8], "little")
    return offsets


def masked_crc32c(data):
    """TFRecord's masked CRC32C, bit by bit (independent of the package's table-driven one)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_our_crc_is_the_one_tensorflow_writes(tmp_path):
    path = tmp_path / "one"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"resnet")
    data = path.read_bytes()
    assert int.from_bytes(data[8:12], "little") == masked_crc32c(data[:8]) == records.masked_crc32c(data[:8])
    assert int.from_bytes(data[-4:], "little") == masked_crc32c(b"resnet") == records.masked_crc32c(b"resnet")
    for header in [data[:8], bytes(8), b"\xff" * 8, *(np.random.default_rng(0).bytes(8) for _ in range(200))]:
        assert records.masked_length_crc(header) == masked_crc32c(header)


def claim_length(path, record, length):
    """Rewrites record `record`'s length field to `length`, with a valid CRC, keeping the file size."""
    data = bytearray(path.read_bytes())
    at = record_offsets(path)[record]
    header = length.to_bytes(8, "little")
    data[at : at + 12] = header + masked_crc32c(header).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "record,length,manifest",
    [(0, 2**40, True), (37, 2**40, True), (99, 2**40, False), (5, 2**62, False), (12, 50_000, True)],
)
def test_a_length_field_claiming_more_than_the_file_is_exit_2_before_tensorflow_reads_it(
    cifar_records, tmp_path, record, length, manifest
):
    # A real process: TensorFlow's reader allocating 2**40 bytes kills it natively (exit 139),
    # which no in-process runner could report.
    bad = tmp_path / "records"
    shutil.copytree(cifar_records, bad)
    shard = bad / "train-00002-of-00010"
    claim_length(shard, record, length)
    if not manifest:
        (bad / "manifest.json").unlink()
    argv = ["train", "--dataset", "tfrecord", "--data-dir", str(bad), "--depth", "8", "--image-size", "32"]
    argv += ["--width", "0.25", "--epochs", "1", "--batch-size", "100", "--model-dir", str(tmp_path / "run")]
    result = subprocess.run(
        [sys.executable, "-m", "resnet_keras.cli", *argv], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line.startswith("Error")]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert lines == [f"Error: {shard} is not a readable TFRecord file ({lines[0].split('(', 1)[1]}"], lines
    at = record_offsets(cifar_records / shard.name)[record]
    if at + 16 + length > shard.stat().st_size:
        assert f"record {record + 1} at byte {at} claims {length} bytes" in lines[0]
    else:  # within the file: the next "header" is data, whose checksum fails
        assert f"record {record + 2} at byte {at + 16 + length} fails its checksum" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run directory is written


@pytest.mark.parametrize("declared", [100_000, 99, 0])
def test_a_manifest_whose_counts_disagree_with_the_files_is_refused_naming_both(cifar_records, tmp_path, declared):
    bad = tmp_path / "records"
    shutil.copytree(cifar_records, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    shard = train["shards"][4]
    train["examples"] += declared - shard["examples"]
    shard["examples"] = declared  # byte sizes still agree: only the count lies
    (bad / "manifest.json").write_text(json.dumps(manifest))
    expected = f"{bad / shard['file']} holds 100 records; the manifest in {bad} declares {declared}"
    with pytest.raises(DataError, match=re.escape(expected)):
        describe(DataConfig(dataset="tfrecord", data_dir=str(bad)))
    code, output = run("--data-dir", str(bad), "--model-dir", str(tmp_path / "run"))
    assert code == 2 and output.strip().count("\n") == 0 and expected in output, output
    assert not (tmp_path / "run").exists()


def test_walking_the_framing_counts_records_and_refuses_special_files(cifar_records, tmp_path):
    shard = cifar_records / "train-00000-of-00010"
    assert records.walk_records(str(shard)) == len(read_examples(shard)) == 100
    assert records.walk_records(str(shard), limit=1) == 1
    truncated = tmp_path / "train-00000-of-00001"
    truncated.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"record 100 at byte \d+ claims \d+ bytes; the file has"):
        records.walk_records(str(truncated))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is not a regular file"):
        records.walk_records(str(fifo))


def children_of(pid):
    """Pids of the live processes (not zombies) whose parent is `pid`, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry))
    return found


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_prepare_leaves_no_worker_running(image_data, tmp_path):
    out = tmp_path / "records"
    argv = ["prepare", "--data-dir", str(image_data / "cifar10-mini"), "--output", str(out)]
    argv += ["--processes", "2", "--images-per-shard", "5"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "resnet_keras.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    workers = []
    try:
        deadline = time.monotonic() + 240
        # Killed while the workers write shards (a few are written: the workers are past their start-up).
        while not len(list(out.glob("train-*"))) >= 2:
            assert parent.poll() is None and time.monotonic() < deadline, "prepare ended before writing shards"
            time.sleep(0.1)
        workers = children_of(parent.pid)
        assert len(workers) >= 2, workers  # the two workers (and multiprocessing's resource tracker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if alive(pid)]
        assert not left, f"children alive 5 s after their parent's SIGKILL: {left}"
    finally:
        for pid in [parent.pid, *(pid for pid in workers if alive(pid))]:  # a failed run leaves nothing either
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
