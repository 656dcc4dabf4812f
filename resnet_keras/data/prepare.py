"""`resnet-keras prepare`: a data source (an image folder or a TFDS dataset) written as sharded TFRecords
(the format of `records`), in worker processes, resumable: shards a killed run finished are kept."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from resnet_keras.core.errors import UsageError
from resnet_keras.core.files import write_atomic
from resnet_keras.data.records import (
    DEFAULT_IMAGES_PER_SHARD,
    KEYS,
    LABELS,
    MANIFEST,
    PLAN,
    SPLIT_FILES,
    ShardJob,
    shard_name,
    walk_records,
    write_shard,
)
from resnet_keras.data.sources import open_source


def _start_worker(parent_pid: int) -> None:
    """A worker's first act: die with the parent (a killed `prepare` leaves no worker behind), then
    import TensorFlow with stderr pointed at /dev/null: its C++ start-up lines, printed once per
    worker process, would bury the command's own output."""
    import sys

    from resnet_keras.core.processes import die_with_parent

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
