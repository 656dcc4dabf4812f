"""Input pipeline alone: random-resized crop + flip to 224x224, images/s per CPU core.

Three training streams over the same ImageNet-like JPEGs (scripts/make_imagenet_like.py),
measured in the same run, alternating, each on a private tf.data thread pool of --threads
threads with intra-op parallelism 1. The rate per core is images per CPU-second of this
process (what one core delivers, however many other processes share the machine); images/s of
wall time per thread is printed beside it:

* folder, whole decode: the streamed folder path before fused decoding (read, decode the whole
  JPEG, random-resized crop of the decoded image), built from the library's own functions;
* folder, fused: `data.make_dataset` on the folder without the in-memory cache: reads the file
  and decodes only the crop (`preprocessing.decode_random_crop`);
* tfrecord, fused: `data.make_dataset` on the shards `resnet-keras prepare` wrote;
* tfrecord, fused, no antialias (not the library's view, a what-if): the same crop resized with
  plain bilinear interpolation, as Model Garden's ImageNet input does, instead of the
  antialiased resize that the library's view shares with torchvision.

    python scripts/input_benchmark.py --data /tmp/imagenet-like --records /tmp/imagenet-like-records

Other processes share this machine's cores: the load average is printed beside the numbers,
and the comparison is within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

SIZE = 224


def whole_decode_stream(config, batch_size: int):
    import tensorflow as tf

    from resnet_keras.data.preprocessing import random_resized_crop
    from resnet_keras.data.sources import open_source

    part = open_source(config).split("train", SIZE)
    ds = part.items.shuffle(10_000, seed=0).repeat()
    ds = ds.map(lambda item, label: (part.decode(item), label), num_parallel_calls=tf.data.AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=0)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda element, key: (random_resized_crop(element[0], key, SIZE), element[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def no_antialias_stream(config, batch_size: int):
    import tensorflow as tf

    from resnet_keras.data.sources import open_source

    part = open_source(config).split("train", SIZE)

    def view(data, key):
        begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(data),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=tf.stack([key, 0]),
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
        image = tf.image.resize(tf.io.decode_and_crop_jpeg(data, window, channels=3), [SIZE, SIZE])
        return tf.image.stateless_random_flip_left_right(image, seed=tf.stack([key, 1]))

    ds = part.items.shuffle(10_000, seed=0).repeat()
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=0))).map(
        lambda element, key: (view(element[0], key), element[1]), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def library_stream(config, batch_size: int):
    from resnet_keras.data.pipeline import make_dataset

    return make_dataset(config, "train", image_size=SIZE, batch_size=batch_size, training=True, repeat=True)


def rate(ds, threads: int, seconds: float) -> tuple[float, float]:
    """(images per second of wall time, images per CPU-second of this process)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    iterator = iter(ds.with_options(options))
    for _ in range(3):  # fill the prefetch and parallel-map buffers
        next(iterator)
    images, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        images += int(next(iterator)[1].shape[0])
    return images / (time.perf_counter() - started), images / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="The ImageNet-like folder (train/<class>/*.jpg).")
    parser.add_argument("--records", required=True, help="Its TFRecords (written here with prepare if missing).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from resnet_keras.config.schema import DataConfig
    from resnet_keras.data.prepare import prepare
    from resnet_keras.data.records import MANIFEST

    folder = DataConfig(dataset="folder", data_dir=args.data, cache=False, augment="imagenet")
    if not os.path.exists(os.path.join(args.records, MANIFEST)):
        prepare(DataConfig(dataset="folder", data_dir=args.data), args.records)
    records = DataConfig(dataset="tfrecord", data_dir=args.records, augment="imagenet")
    streams = {
        "folder, whole decode": lambda: whole_decode_stream(folder, args.batch_size),
        "folder, fused": lambda: library_stream(folder, args.batch_size),
        "tfrecord, fused": lambda: library_stream(records, args.batch_size),
        "tfrecord, fused, no antialias": lambda: no_antialias_stream(records, args.batch_size),
    }
    results = {name: [] for name in streams}
    for round_ in range(args.rounds):
        for name, make in streams.items():
            wall, cpu = rate(make(), args.threads, args.seconds)
            results[name].append(cpu)
            print(
                f"round {round_ + 1} {name}: {cpu:.0f} images per CPU-second, {wall / args.threads:.0f} images/s "
                f"per thread of wall time (load {os.getloadavg()[0]:.2f})"
            )
    # CPU time is what a core delivers whatever else shares the machine: the per-core figure.
    base = statistics.median(results["folder, whole decode"])
    summary = {
        name: dict(per_core=round(statistics.median(v), 1), vs_whole_decode=round(statistics.median(v) / base, 2))
        for name, v in results.items()
    }
    print(json.dumps(dict(threads=args.threads, seconds=args.seconds, load=os.getloadavg(), medians=summary)))


if __name__ == "__main__":
    main()
