"""tf.data input pipelines: from a source's split to batches of augmented, float32 raw pixels.

Every dataset yields ``(images, labels)``: float32 ``[batch, image_size, image_size, 3]`` with raw
pixel values in [0, 255], and int32 ``[batch]``. Normalisation lives in the model, so exported
models take raw pixels. Where the images come from is `resnet_keras.data.sources`; how they are cropped,
flipped and resized is `resnet_keras.data.preprocessing` (He et al. 2015, sec. 3.4 and 4.2).

Decoded images are cached in memory as uint8 when the split fits (``CACHE_LIMIT_BYTES``);
randomness is stateless and keyed by ``DataConfig.seed``, so with ``deterministic=True`` two
pipelines built from one config yield identical batches.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import tensorflow as tf

from resnet_keras.config.schema import AUGMENTATIONS, FLIPS, DataConfig  # noqa: F401  DataConfig is part of this API
from resnet_keras.core import tf_compat
from resnet_keras.core.errors import DataError, expect, is_int
from resnet_keras.data.preprocessing import (
    alternating_flips,
    centre_crop,
    cifar_pad_crop_flip,
    flip_coins,
    random_resized_crop,
    resize_to,
    view_family,
)
from resnet_keras.data.sources import Split, open_source

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 2 * 1024**3
# A repeated training stream seeds epoch e with seed * stride + e: distinct for any run shorter
# than the stride, and the same whether the epoch is reached directly or after a resume.
_EPOCH_SEED_STRIDE = 1_000_003


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the training loop need to know about a dataset.

    ``skipped_files`` counts files dropped by the cheap header check (``skip_corrupt=True``) in
    the train and val splits; files that only fail to decode are counted on the dataset that
    ``make_dataset`` returns (``dataset.skipped_files``).
    """

    num_classes: int
    class_names: tuple[str, ...]
    num_train: int
    num_val: int
    channels: int = 3
    skipped_files: int = 0


def describe(config: DataConfig) -> DatasetInfo:
    """Classes and split sizes, from metadata or a file listing (no image is decoded).

    A TFDS dataset that is not prepared yet is downloaded and prepared when the network allows.
    Raises DataError for an unknown dataset, a missing or malformed folder, or no network.
    """
    source = open_source(config)
    return DatasetInfo(
        num_classes=len(source.class_names),
        class_names=source.class_names,
        num_train=source.num_train,
        num_val=source.num_val,
        skipped_files=source.skipped,
    )


def make_dataset(
    config: DataConfig,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    skip_batches: int = 0,
    class_names: tuple[str, ...] | None = None,
    crop_size: int | None = None,
    flip: str = "random",
    eval_view=None,
) -> tf.data.Dataset:
    """Batches ``(float32 [b, image_size, image_size, 3] in [0, 255], int32 [b])``.

    ``split`` is "train", "val" or a named split ("test", a TFDS split expression, a folder
    subdirectory). ``training`` shuffles and augments; otherwise the view is deterministic. With
    ``input_context`` the examples are sharded by input pipeline and each batch has
    ``input_context.get_per_replica_batch_size(batch_size)`` examples. ``drop_remainder``
    defaults to ``training``. The result carries ``skipped_files`` (int): corrupt files dropped.
    ``eval_view`` (`config.schema.EvalView`, the model config's) shapes the "imagenet" evaluation view.

    With ``repeat`` and ``training``, epoch ``e`` of the stream is shuffled and augmented from
    ``(seed, e)`` alone, and ``skip_batches`` starts the stream where a reader that already took
    that many batches would be: a resumed run sees the data an uninterrupted one would have seen
    (exactly so with ``deterministic``), without reading the earlier epochs again.

    ``class_names`` (a trained model's, in its label order) labels an image folder by class name
    instead of by its own listing: evaluating on a folder that holds only some classes or only a
    ``test/`` split (see `sources.open_source`).

    ``crop_size`` (``training`` only; default ``image_size``) is the side of the training images
    when they are smaller than the test size (FixRes): the view is still the one of ``image_size``.
    The "imagenet" view's random-resized crops and the "none" view's resize are ``crop_size``; the
    "cifar" view keeps the images at ``image_size`` and trains on the central ``crop_size`` square
    of each padded random crop, at the objects' own scale (`preprocessing.cifar_pad_crop_flip`).

    ``flip`` (training): "random", a coin per image and epoch, or "alternating", each image mirrored
    in every other epoch (`preprocessing.alternating_flips`; the "cifar" view of a repeated stream).
    """
    expect(is_int(image_size) and image_size >= 8, "image_size", image_size, "an integer >= 8")
    expect(
        crop_size is None or (is_int(crop_size) and 1 <= crop_size <= image_size),
        "crop_size",
        crop_size,
        f"None or an integer from 1 to image_size={image_size}",
    )
    expect(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    expect(is_int(skip_batches) and skip_batches >= 0, "skip_batches", skip_batches, "an integer >= 0")
    family = view_family(config, image_size)
    expect(flip in FLIPS, "flip", flip, "one of " + ", ".join(FLIPS))
    if training and flip == "alternating" and (family != "cifar" or not repeat):
        raise DataError(
            f"Received: flip='alternating' with the {family!r} view{'' if repeat else ' and no repeat'}; "
            "alternating flips need the 'cifar' view (pad-crop-flip) of a repeated training stream, "
            "which knows each epoch; use flip='random'"
        )
    drop_remainder = training if drop_remainder is None else drop_remainder
    crop = None
    if training and crop_size is not None and crop_size != image_size:
        if family == "cifar":
            crop = crop_size  # decoded and cached at the test size; the crops are cut smaller
        else:
            image_size = crop_size  # the view was chosen by the test size; every crop is the training size
    part = open_source(config, class_names).split(split, image_size)  # synthetic images are made this size
    count = part.count
    ds = part.items.enumerate()
    if input_context is not None:
        try:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        except ValueError as err:
            raise DataError(f"Received: batch_size={batch_size}; {err}") from err
        if part.read_shard is not None:  # whole files per pipeline: each worker reads 1/N of the bytes
            items, count = part.read_shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            ds = items.enumerate()
        else:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            count = len(range(count)[input_context.input_pipeline_id :: input_context.num_input_pipelines])

    options = tf.data.Options()
    # Evaluation keeps the order regardless, so predictions line up with files and labels.
    options.deterministic = config.deterministic or not training
    # We shard ourselves under an InputContext; otherwise every source is a list of records
    # (paths, encoded images, indices), so element-wise (DATA) sharding is always valid.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if input_context is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )

    skipped = part.skipped
    use_cache = (
        config.cache
        and config.dataset not in ("synthetic", "tfrecord")  # sharded records are streamed: any size
        and _cache_bytes(part, count, family, image_size) <= CACHE_LIMIT_BYTES
    )
    # Streamed ImageNet-style training decodes only each random crop (preprocessing.decode_random_crop).
    fused = (
        training
        and family == "imagenet"
        and not use_cache
        and (part.jpeg or bool(part.files and not config.skip_corrupt))
    )
    ds = ds.map(_encoded(part) if fused else _decoder(part, family, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    if part.files and (use_cache or config.skip_corrupt):
        ds = ds.ignore_errors(log_warning=not use_cache)
    if use_cache:
        ds = ds.cache()
        if part.files:  # fill the cache now, so undecodable files are named before training
            bad = _fill_cache_and_check(ds.with_options(options), part, input_context, config)
            # ignore_errors hid the size; Keras needs it for progress bars and epoch ends.
            count -= bad
            ds = ds.apply(tf.data.experimental.assert_cardinality(count))
            skipped += bad

    buffer = min(config.shuffle_buffer, max(count, 1))
    if config.dataset == "synthetic":  # generated once, cached as batches: ~free per step
        ds = ds.batch(batch_size, drop_remainder=drop_remainder).cache()
        ds = (ds.repeat() if repeat else ds).map(_to_float)
    elif training and repeat:
        per_epoch = max(count // batch_size if drop_remainder else -(-count // batch_size), 1)
        first_epoch, offset = divmod(skip_batches, per_epoch)

        # Every index the stream carries is below the split's count (a shard's when read by shard).
        coins = flip_coins(max(part.count, count), config.seed) if flip == "alternating" else None

        @tf.autograph.experimental.do_not_convert  # plain Python branching on configs, no tensors
        def epoch(index):  # one pass, shuffled and augmented from (seed, index) alone
            # Inside this function's graph, a global seed of 0 (keras.utils.set_random_seed(0)) would
            # meet the tensor seed in TensorFlow's `seeds == (0, 0)` check and fail; and the stream
            # should not depend on it anyway. This clears the graph-level seed of this graph only.
            tf_compat.clear_graph_seed()
            seed = tf.constant(config.seed, tf.int64) * _EPOCH_SEED_STRIDE + index
            return _augment_and_batch(
                ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=False),
                family,
                training,
                image_size,
                batch_size,
                drop_remainder,
                seed,
                reshuffle=False,
                crop=crop,
                view=eval_view,
                flips=None if coins is None else (coins, index),
                # The resumed epoch skips its first batches before they are decoded and cropped.
                skip_batches=tf.where(index == first_epoch, tf.constant(offset, tf.int64), 0),
            )

        ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
    else:
        if training:
            ds = ds.shuffle(buffer, seed=config.seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = _augment_and_batch(
            ds, family, training, image_size, batch_size, drop_remainder, config.seed, crop=crop, view=eval_view
        )
    ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
    ds.skipped_files = skipped
    return ds


def training_stream(
    model_config,
    data_config: DataConfig,
    train_config,
    *,
    input_context: tf.distribute.InputContext | None = None,
    first_step: int = 0,
    private_threads: int | None = None,
) -> tf.data.Dataset:
    """One worker's training stream, as `train` reads it: (float32 images, labels or class weights).

    The worker's L local replicas (of R in all) each read their own shard of the examples: replica
    r of R reads shard r, batched at the per-replica batch, augmented with the batch augmentations
    (`augment.apply`) keyed by its own batch number. The shards' batches are dealt in turn (replica
    0's, replica 1's, ...), which is the order in which tf.distribute hands a worker's batches to
    its replicas (`distribute.input_options`), so what a replica reads depends on R, r and the
    seed alone: R replicas in one process read what R one-replica workers do. It is one pipeline
    (one autotuner, one private thread pool of `private_threads`, one prefetch buffer), and the
    shuffle buffer `data_config.shuffle_buffer` is the whole run's: each shard shuffles within
    1/R of it, so a host holds at most one buffer whatever its GPU count.

    `first_step` (a resumed run) skips the steps done: one batch per replica per step. Without
    `input_context` it is the stream of a single replica.
    """
    from resnet_keras.data import augment

    context = input_context or tf.distribute.InputContext()
    replicas = context.num_replicas_in_sync
    local = replicas // context.num_input_pipelines
    shard_config = dataclasses.replace(data_config, shuffle_buffer=-(-data_config.shuffle_buffer // replicas))

    def replica_stream(replica):
        shard = tf.distribute.InputContext(
            num_input_pipelines=replicas, input_pipeline_id=replica, num_replicas_in_sync=replicas
        )
        ds = make_dataset(
            shard_config,
            "train",
            image_size=model_config.image_size,
            crop_size=train_config.train_size(model_config),
            flip=train_config.flip,
            batch_size=train_config.batch_size,
            training=True,
            input_context=shard,
            repeat=True,
            skip_batches=first_step,
        )
        if not augment.active(train_config):
            return ds
        return augment.apply(
            ds,
            train_config,
            num_classes=model_config.num_classes,
            fill=model_config.input_mean,
            seed=data_config.seed,
            first_batch=first_step,
            pipeline=(replica, replicas),
        )

    streams = [replica_stream(context.input_pipeline_id * local + index) for index in range(local)]
    ds = streams[0]
    if local > 1:
        ds = tf.data.Dataset.choose_from_datasets(streams, tf.data.Dataset.range(local).repeat())
    options = tf.data.Options()
    if private_threads:
        options.threading.private_threadpool_size = private_threads
    # Throughput, not latency: each element's ops run on one thread and the pipeline's parallelism
    # comes from its parallel maps (TF Model Garden's ImageNet input does the same); a pool of
    # threads per op mostly spins on ops this small.
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- augmentation


def _augment_and_batch(
    ds,
    family,
    training,
    size,
    batch_size,
    drop_remainder,
    seed,
    reshuffle=True,
    skip_batches=0,
    crop=None,
    flips=None,
    view=None,
):
    """(index, uint8 image, label) elements -> float32 batches, augmented when training.

    `crop`: the side of the "cifar" view's training crops, when smaller than `size`. `flips`:
    (coin per image, epoch) of the "cifar" view's alternating flips; None flips at random.
    `skip_batches` (an int or int64 tensor) drops the first batches before their images are
    augmented (and, for encoded images, decoded), with the seeds they would have used.
    """
    # Dataset.random gives each element (or batch) its own stateless seed: reproducible under
    # parallel map, and (with `reshuffle`) a fresh stream on every iteration of the same dataset.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=reshuffle)
    if family == "imagenet":
        if training:
            ds = (
                tf.data.Dataset.zip((ds, seeds))
                .skip(skip_batches * batch_size)
                .map(
                    lambda element, key: (random_resized_crop(element[1], key, size), element[2]),
                    num_parallel_calls=tf.data.AUTOTUNE,
                )
            )
        else:
            ds = ds.skip(skip_batches * batch_size).map(
                lambda _, image, label: (centre_crop(image, size, view), label), num_parallel_calls=tf.data.AUTOTUNE
            )
        return ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if family == "cifar" and training:
        # One vectorised gather per batch: 94k images/s on 2 cores vs 26k for a per-image map,
        # which leaves the cores to the model.
        return (
            tf.data.Dataset.zip((ds, seeds))
            .skip(skip_batches)
            .map(
                lambda batch, key: cifar_pad_crop_flip(
                    batch[1], key, batch[2], crop, None if flips is None else alternating_flips(batch[0], *flips)
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        )
    return ds.skip(skip_batches).map(_to_float)


def _to_float(_, images, labels):
    """(indices, uint8 images, labels) -> (float32 images, labels)."""
    return tf.cast(images, tf.float32), labels


# ----------------------------------------------------------------------------- decode and cache


def _decoder(part: Split, family: str, size: int):
    """(index, (item, label)) -> (index, uint8 [H, W, 3], label); "cifar"/"none" resize here,
    before the cache, so the cache holds image_size x image_size images."""

    def decode(index, item_label):
        item, label = item_label
        image = part.decode(item)
        return index, image if family == "imagenet" else resize_to(image, size), label

    return decode


def _encoded(part: Split):
    """(index, (item, label)) -> (index, encoded image bytes, label), for the fused decode-and-crop."""

    def read(index, item_label):
        item, label = item_label
        return index, item if part.jpeg else tf.io.read_file(item), label

    return read


def _cache_bytes(part: Split, count: int, family: str, size: int) -> float:
    """Estimated memory of the decoded split: count * H * W * 3 uint8 bytes."""
    if family != "imagenet":
        return count * size * size * 3
    if None not in part.shape:
        return count * part.shape[0] * part.shape[1] * 3
    sample = part.items.take(16).map(lambda item, _: tf.size(part.decode(item))).ignore_errors()
    sizes = [int(n) for n in sample]
    return count * (float(np.mean(sizes)) if sizes else 0.0)


def _fill_cache_and_check(ds, part: Split, input_context, config: DataConfig) -> int:
    """Decodes the whole split into the cache; names files that failed. Returns how many."""
    start = time.perf_counter()
    indices = ds.map(lambda index, image, label: index).batch(8192).as_numpy_iterator()
    seen = np.concatenate([np.zeros([0], np.int64), *indices])
    expected = np.arange(part.count)
    if input_context is not None:
        expected = expected[input_context.input_pipeline_id :: input_context.num_input_pipelines]
    bad = [part.files[i] for i in np.setdiff1d(expected, seen)]
    log.info("Decoded %d images in %.1f s into the in-memory cache", len(seen), time.perf_counter() - start)
    if bad and not config.skip_corrupt:
        raise DataError(
            f"Cannot decode {len(bad)} image file(s): {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}; remove them or skip them (--skip-corrupt)"
        )
    if bad:
        log.warning("Skipped %d image file(s) that cannot be decoded: %s", len(bad), ", ".join(bad))
    return len(bad)
