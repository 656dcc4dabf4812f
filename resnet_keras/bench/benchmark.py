"""Throughput, input-pipeline speed and memory of our training step, next to Keras anchors.

What is timed (warm-up steps, which trace and compile, are left out):

* ``train``: the training step of `resnet_keras.training.train` itself (`train.make_train_step`: forward,
  softmax cross-entropy over the global batch plus the L2 terms, SGD momentum 0.9, under the
  same `tf.distribute` strategy, reading batches from `data.make_dataset`), and the host-side
  read of its three result scalars that `train()` does after every step.
* ``infer``: ``model(x, training=False)`` in a `tf.function` on a fixed batch.
* ``pipeline``: `data.make_dataset(...)` iterated alone, as training reads it.
* ``train_real_data``: with a real dataset, the training step on real batches and on synthetic
  batches in alternating blocks; the ratio of their median step times says how much the input
  pipeline holds training back (1.0 = not at all).

Anchors (``compare=True``) run in the same process, one step each in turn (ours, anchor, ours,
...), so machine noise hits both alike: ``keras.applications.ResNet50`` (ResNet101/152 and the
V2 networks for those depths) for the ImageNet family, and a plain hand-written Keras CIFAR
ResNet of the same depth (the `keras-team/keras` CIFAR-10 ResNet v1 example: conv with bias,
BN, ReLU, 1x1 projection shortcuts) for the CIFAR family; both train with
``compile(jit_compile=xla)`` + ``train_on_batch``, the way a Keras user trains them.

Memory (``memory=True``): the peak resident set size (``VmHWM``) of a child process that
builds the model and runs a few training steps, for ours, the anchor and a child that only
starts TensorFlow, each in its own process so they cannot pollute each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_keras.config.schema import PRECISIONS, ModelConfig
from resnet_keras.core.errors import UsageError, expect, is_int
from resnet_keras.core.precision import AUTO, resolve

MODES = ("train", "infer")

# NVIDIA DeepLearningExamples, TensorFlow/Classification/ConvNets/resnet50v1.5/README.md,
# "Training performance results" (TF 20.06-tf1 NGC container, images/s averaged over an epoch).
GPU_REFERENCE = {
    "source": "NVIDIA DeepLearningExamples TensorFlow ResNet-50 v1.5 README, training performance results",
    "url": "https://github.com/NVIDIA/DeepLearningExamples/tree/master/TensorFlow/Classification/ConvNets/resnet50v1.5",
    "model": "resnet50_v1.5",
    "figures": [
        {"gpu": "1x A100 40GB", "precision": "TF32 + XLA", "batch_size": 256, "images_per_sec": 909},
        {"gpu": "1x A100 40GB", "precision": "mixed precision (AMP) + XLA", "batch_size": 256, "images_per_sec": 2375},
        {"gpu": "1x V100 16GB", "precision": "FP32 + XLA", "batch_size": 128, "images_per_sec": 412},
        {"gpu": "1x V100 16GB", "precision": "mixed precision (AMP) + XLA", "batch_size": 256, "images_per_sec": 1270},
    ],
}


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """How to benchmark one model.

    batch_size: global batch; None means 128 for inputs up to 64 pixels (the CIFAR recipe) and
        16 above (ResNet-50 at 224 fits a CPU's memory and time).
    data: "synthetic", a folder path (`<root>/<class>/<image>` or `<root>/train/<class>/...`)
        or a TFDS name (prepared under data_dir).
    steps, warmup: timed and untimed steps per measurement.
    pipeline_batches: batches read when timing the input pipeline alone.
    """

    batch_size: int | None = None
    precision: str = "none"
    xla: bool = False
    data: str = "synthetic"
    data_dir: str | None = None
    steps: int = 10
    warmup: int = 2
    modes: tuple[str, ...] = MODES
    compare: bool = False
    memory: bool = False
    pipeline_batches: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        expect(
            self.batch_size is None or (is_int(self.batch_size) and self.batch_size >= 1),
            "batch_size",
            self.batch_size,
            "None or an integer >= 1",
        )
        if self.precision == AUTO:
            object.__setattr__(self, "precision", resolve(AUTO).name)
        expect(self.precision in PRECISIONS, "precision", self.precision, "one of " + ", ".join((AUTO, *PRECISIONS)))
        expect(isinstance(self.xla, bool), "xla", self.xla, "True or False")
        expect(
            isinstance(self.data, str) and bool(self.data),
            "data",
            self.data,
            "'synthetic', a folder path or a TFDS name",
        )
        expect(is_int(self.steps) and self.steps >= 1, "steps", self.steps, "an integer >= 1")
        expect(is_int(self.warmup) and self.warmup >= 0, "warmup", self.warmup, "an integer >= 0")
        object.__setattr__(self, "modes", tuple(self.modes))
        expect(
            bool(self.modes) and set(self.modes) <= set(MODES),
            "modes",
            self.modes,
            "a non-empty subset of " + ", ".join(MODES),
        )
        expect(
            is_int(self.pipeline_batches) and self.pipeline_batches >= 1,
            "pipeline_batches",
            self.pipeline_batches,
            "an integer >= 1",
        )

    def resolved_batch(self, model_config: ModelConfig) -> int:
        return self.batch_size or (128 if model_config.image_size <= 64 else 16)


def step_stats(times_s: list[float], batch: int) -> dict[str, Any]:
    """Images/s from the median step time, and the spread: p10/p90, IQR, min/max (ms)."""
    import numpy as np

    ms = np.asarray(times_s, dtype=float) * 1e3
    p10, q1, med, q3, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return dict(
        batch_size=batch,
        steps=len(ms),
        images_per_sec=round(batch / med * 1e3, 2),
        step_ms_median=round(med, 3),
        step_ms_p10=round(p10, 3),
        step_ms_p90=round(p90, 3),
        step_ms_iqr=round(q3 - q1, 3),
        step_ms_min=round(ms.min(), 3),
        step_ms_max=round(ms.max(), 3),
        step_ms=[round(t, 3) for t in ms],
    )


# ----------------------------------------------------------------------------- data


def data_config_for(bench: BenchmarkConfig, num_classes: int, batch: int):
    """(DataConfig of the benchmark's data, synthetic DataConfig with the same classes).

    An existing directory is read as an image folder; any other name but "synthetic" is TFDS.
    """
    from resnet_keras.data.pipeline import DataConfig

    def synthetic(classes):
        # Enough images for a few distinct batches; the synthetic pipeline caches them as batches.
        return DataConfig(
            dataset="synthetic",
            synthetic_examples=max(4 * batch, 8),
            synthetic_classes=max(classes, 2),
            seed=bench.seed,
        )

    if bench.data == "synthetic":
        return None, synthetic(num_classes)
    if os.path.isdir(bench.data):
        real = DataConfig(dataset="folder", data_dir=str(bench.data), seed=bench.seed)
    elif os.sep in bench.data or bench.data.startswith("."):
        raise UsageError(
            f"Received: data={bench.data!r}, which is not a folder; expected 'synthetic', "
            "an image folder or a TFDS name."
        )
    else:
        real = DataConfig(dataset=bench.data, data_dir=bench.data_dir, seed=bench.seed)
    from resnet_keras.data.pipeline import describe

    return real, synthetic(describe(real).num_classes)


# ----------------------------------------------------------------------------- anchors


def plain_keras_cifar_resnet(
    depth: int, *, filters: int = 16, num_classes: int = 10, image_size: int = 32, weight_decay: float = 1e-4
):
    """A hand-written Keras CIFAR ResNet (the keras-team CIFAR-10 `resnet_v1` example): 6n+2 layers,
    conv (with bias, L2) -> BN -> ReLU units, 1x1 projection shortcuts (conv only) where shapes change.

    The anchor a Keras user would write; raw pixels [b, s, s, 3] -> logits [b, num_classes].
    """
    import keras
    from keras import layers

    def unit(x, channels, kernel=3, stride=1, relu=True, bn=True):
        x = layers.Conv2D(
            channels,
            kernel,
            strides=stride,
            padding="same",
            kernel_initializer="he_normal",
            kernel_regularizer=keras.regularizers.L2(weight_decay),
        )(x)
        x = layers.BatchNormalization()(x) if bn else x
        return layers.Activation("relu")(x) if relu else x

    n = (depth - 2) // 6
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = unit(x, filters)
    for stage in range(3):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            y = unit(x, filters, stride=stride)
            y = unit(y, filters, relu=False)
            if stride != 1 or x.shape[-1] != filters:
                x = unit(x, filters, kernel=1, stride=stride, relu=False, bn=False)
            x = layers.Activation("relu")(layers.add([x, y]))
        filters *= 2
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"keras_plain_resnet{depth}")


def anchor_for(model_config: ModelConfig) -> tuple[str, Callable[[], Any]]:
    """(label, builder) of the Keras model that `--compare` times next to ours."""
    import keras

    size, classes = model_config.image_size, model_config.num_classes
    if model_config.family == "cifar":
        filters = model_config.stages[0].filters
        return (
            f"keras_plain_resnet{model_config.depth}",
            lambda: plain_keras_cifar_resnet(model_config.depth, filters=filters, num_classes=classes, image_size=size),
        )
    suffix = "V2" if model_config.variant == "v2" else ""
    depth = model_config.depth if model_config.depth in (50, 101, 152) else 50
    name = f"ResNet{depth}{suffix}"
    builder = getattr(keras.applications, name)
    return (
        f"keras_applications_{name.lower()}",
        lambda: builder(weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None),
    )


# ----------------------------------------------------------------------------- runners


class TrainStepRunner:
    """Our model, optimizer and the training step of `train.py`, built as `train()` builds them."""

    def __init__(self, model_config: ModelConfig, bench: BenchmarkConfig, batch: int, data_config):
        import keras
        import tensorflow as tf

        from resnet_keras.config.recipes import make_schedule
        from resnet_keras.config.schema import TrainConfig
        from resnet_keras.data import pipeline as data_lib
        from resnet_keras.training.distribute import check_global_batch, make_strategy
        from resnet_keras.training.loss_scale import with_loss_scaling
        from resnet_keras.training.trainer import make_train_step
        from resnet_keras.zoo.models import build_model, dtype_policy

        # The defaults of `resnet-keras train` (paper recipe: weight decay 1e-4, SGD momentum 0.9).
        train_config = TrainConfig(
            batch_size=batch,
            mixed_precision=bench.precision,
            xla=bench.xla,
            seed=bench.seed,
            family=model_config.family,
        )
        model_config = dataclasses.replace(model_config, weight_decay=float(train_config.weight_decay))
        self.name, self.batch, self.model_config = model_config.name, batch, model_config
        self.strategy = make_strategy(train_config.strategy)
        check_global_batch(batch, self.strategy)
        keras.utils.set_random_seed(bench.seed)
        # As in train(): the dtype policy holds while the model and optimizer are built.
        with dtype_policy(PRECISIONS[bench.precision]), self.strategy.scope():
            self.model = build_model(model_config)
            optimizer = keras.optimizers.SGD(
                learning_rate=make_schedule(train_config, 1000),
                momentum=train_config.momentum,
                nesterov=train_config.nesterov,
            )
            optimizer = with_loss_scaling(optimizer, bench.precision)
            optimizer.build(self.model.trainable_variables)
        self.step_fn = make_train_step(
            self.model,
            optimizer,
            self.strategy,
            num_classes=model_config.num_classes,
            global_batch=batch,
            label_smoothing=train_config.label_smoothing,
            loss_scaling=bench.precision == "float16",
            xla=bench.xla,
        )

        def iterator(config):
            ds = self.strategy.distribute_datasets_from_function(
                lambda ctx: data_lib.make_dataset(
                    config,
                    "train",
                    image_size=model_config.image_size,
                    batch_size=batch,
                    training=True,
                    input_context=ctx,
                    repeat=True,
                )
            )
            return iter(ds)

        self.make_iterator = iterator
        self.iterator = iterator(data_config)
        model = self.model
        self.forward = tf.function(lambda x: model(x, training=False), jit_compile=bench.xla, autograph=False)
        self.x = tf.random.stateless_uniform(
            [batch, model_config.image_size, model_config.image_size, 3], [bench.seed, 1], 0, 255
        )
        self.loss = float("nan")

    def train(self, iterator=None):
        # One step per call with a host read after it, as `train` runs on a CPU (steps_per_loop 1).
        values = list(self.step_fn(iterator or self.iterator)[:3])
        self.loss = values[0] / max(values[2], 1.0)

    def infer(self):
        self.forward(self.x).numpy()  # .numpy() waits for the result


class _KerasAnchor:
    """A Keras model trained the standard Keras way: compile(jit_compile=xla) + train_on_batch."""

    def __init__(self, label: str, build: Callable, model_config: ModelConfig, bench: BenchmarkConfig, batch: int):
        import keras
        import tensorflow as tf

        from resnet_keras.zoo.models import dtype_policy

        self.name, self.batch = label, batch
        keras.utils.set_random_seed(bench.seed)
        with dtype_policy(PRECISIONS[bench.precision]):
            self.model = build()
            # Under mixed_float16, compile wraps SGD in a LossScaleOptimizer by itself.
            self.model.compile(
                optimizer=keras.optimizers.SGD(0.1 * batch / 128, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=bench.xla,
            )
        size = model_config.image_size
        self.x = tf.random.stateless_uniform([batch, size, size, 3], [bench.seed, 1], 0, 255)
        self.y = tf.random.stateless_uniform([batch], [bench.seed, 2], 0, model_config.num_classes, tf.int32)
        model = self.model
        self.forward = tf.function(lambda x: model(x, training=False), jit_compile=bench.xla, autograph=False)
        self.loss = float("nan")

    def train(self):
        self.loss = float(self.model.train_on_batch(self.x, self.y))

    def infer(self):
        self.forward(self.x).numpy()


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def alternate(runners, mode: str, steps: int, warmup: int) -> dict[str, list[float]]:
    """Times `mode` of each runner in rounds (A, B, A, B, ...); warm-up rounds are not kept."""
    times = {runner.name: [] for runner in runners}
    for index in range(warmup + steps):
        for runner in runners:
            seconds = _timed(getattr(runner, mode))
            if index >= warmup:
                times[runner.name].append(seconds)
    return times


def _paired_ratio(ours: list[float], anchor: list[float]) -> float:
    """Median of per-round speed ratios ours/anchor (> 1: ours faster); robust to load drift."""
    import numpy as np

    return round(float(np.median([a / o for o, a in zip(ours, anchor)])), 3)


def _time_pipeline(dataset, batches: int, warmup: int) -> list[float]:
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    return [_timed(lambda: next(iterator)) for _ in range(batches)]


# ----------------------------------------------------------------------------- the input pipeline alone

PIPELINE_BATCH = 128  # torchvision's recipe: 128 images per GPU, the batch one GPU's pipeline makes


def pipeline_only(
    model_config: ModelConfig,
    bench: BenchmarkConfig,
    *,
    recipe: str,
    train_image_size: int | None = None,
    emit: Callable[[dict], None] = lambda r: None,
) -> dict[str, Any]:
    """Images per CPU-second of a recipe's training input alone: `data.training_stream` (decode,
    random-resized crop at the recipe's training size, flip, then its TrivialAugment or RandAugment,
    random erasing, mixup and CutMix), read as one replica's pipeline with its private thread pool.

    The split is streamed and decoded for every image (no in-memory cache), as an ImageNet-size
    split is. CPU time is the process's (every thread's user + system time, `time.process_time`)
    over `bench.pipeline_batches` batches after `bench.warmup` (at least 1); on a GPU host that is
    what the cores must supply per image, whatever the wall clock. `bench.batch_size` defaults to
    128. UsageError for synthetic data. Returns (and emits) one record.
    """
    import tensorflow as tf

    from resnet_keras.config.schema import TrainConfig
    from resnet_keras.data import pipeline as data_lib
    from resnet_keras.training import distribute

    if bench.data == "synthetic":
        raise UsageError(
            "Received: data='synthetic'; the pipeline-only benchmark reads real images: "
            "give --data an image folder or a TFDS name"
        )
    batch = bench.batch_size or PIPELINE_BATCH
    real, _ = data_config_for(bench, model_config.num_classes, batch)
    real = dataclasses.replace(real, cache=False)  # streamed and decoded per image, as ImageNet is
    model_config = dataclasses.replace(model_config, num_classes=data_lib.describe(real).num_classes)
    train_config = TrainConfig(
        recipe=recipe, batch_size=batch, train_image_size=train_image_size, seed=bench.seed, family=model_config.family
    ).for_model(model_config)
    threads = distribute.input_threads()
    load_before = os.getloadavg()
    iterator = iter(data_lib.training_stream(model_config, real, train_config, private_threads=threads))
    for _ in range(max(bench.warmup, 1)):  # builds the pipeline and fills its prefetch buffers
        next(iterator)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(bench.pipeline_batches):
        next(iterator)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    images = bench.pipeline_batches * batch
    row = dict(
        mode="pipeline_only",
        recipe=recipe,
        data=bench.data,
        family=model_config.family,
        image_size=model_config.image_size,
        train_image_size=train_config.train_size(model_config),
        augmentations=dict(
            auto_augment=train_config.auto_augment,
            random_erasing=train_config.random_erasing,
            mixup=train_config.mixup,
            cutmix=train_config.cutmix,
            flip=train_config.flip,
        ),
        batch_size=batch,
        batches=bench.pipeline_batches,
        images=images,
        cpu_seconds=round(cpu, 3),
        wall_seconds=round(wall, 3),
        images_per_cpu_second=round(images / cpu, 1),
        images_per_sec=round(images / wall, 1),
        private_threads=threads,
        cpus=os.cpu_count(),
        load_avg_before=[round(v, 2) for v in load_before],
        load_avg_after=[round(v, 2) for v in os.getloadavg()],
        tensorflow=tf.__version__,
    )
    emit(row)
    return row


# ----------------------------------------------------------------------------- memory


def _memory_child(spec_json: str) -> None:
    """Runs in a fresh process: builds one model, trains a few steps, prints its peak RSS as JSON."""
    spec = json.loads(spec_json)
    if spec["kind"] != "baseline":
        model_config = ModelConfig.from_dict(spec["model"])
        bench = BenchmarkConfig(**spec["bench"])
        batch = bench.resolved_batch(model_config)
        if spec["kind"] == "ours":
            _, synthetic = data_config_for(
                dataclasses.replace(bench, data="synthetic"), model_config.num_classes, batch
            )
            runner = TrainStepRunner(model_config, bench, batch, synthetic)
        else:
            runner = _KerasAnchor(*anchor_for(model_config), model_config, bench, batch)
        for _ in range(3):
            runner.train()
    else:
        import tensorflow as tf

        tf.constant(1.0).numpy()  # starts the runtime and its thread pools
    print(json.dumps({"peak_rss_mb": round(_peak_rss_kb() / 1024, 1)}), flush=True)


def _peak_rss_kb() -> float:
    """This process's peak resident set size in kB.

    Linux's ``ru_maxrss`` survives ``execve``: a child forked from a larger parent (the benchmark,
    holding a ResNet-50) reports the parent's peak. ``VmHWM`` belongs to the process's own
    address space, so it starts afresh at ``exec``.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS


def measure_peak_memory(kind: str, model_config: ModelConfig, bench: BenchmarkConfig) -> float:
    """Peak RSS in MB of a child process: kind "ours", "anchor" or "baseline" (TensorFlow alone)."""
    spec = json.dumps(
        dict(kind=kind, model=model_config.to_dict(), bench={**dataclasses.asdict(bench), "modes": list(bench.modes)})
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        ),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    code = (
        "import sys; from resnet_keras.core.processes import die_with_parent; die_with_parent(int(sys.argv[2])); "
        "from resnet_keras.bench.benchmark import _memory_child; _memory_child(sys.argv[1])"
    )
    argv = [sys.executable, "-c", code, spec, str(os.getpid())]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory measurement of {kind} failed: {tail}")
    return json.loads(lines[-1])["peak_rss_mb"]


# ----------------------------------------------------------------------------- profile


def profile_train_steps(runner: TrainStepRunner, logdir: str | os.PathLike, steps: int = 3, top: int = 15) -> dict:
    """Traces `steps` training steps with the TensorFlow profiler into `logdir` (open it with
    TensorBoard's profile plugin or xprof); returns the step time and the `top` op types by time."""
    import tensorflow as tf

    runner.train()  # traced and compiled before the profile starts
    tf.profiler.experimental.start(str(logdir))
    try:
        for _ in range(steps):
            runner.train()
    finally:
        tf.profiler.experimental.stop()
    files = sorted(Path(logdir).glob("plugins/profile/*/*.xplane.pb"), key=os.path.getmtime)
    if not files:
        raise RuntimeError(f"the TensorFlow profiler wrote no trace under {logdir}")
    step_ms, ops = op_time_by_type(files[-1], steps=steps)
    return dict(trace=str(files[-1]), step_ms=step_ms, top_ops=ops[:top])


def op_time_by_type(xplane_path: str | os.PathLike, steps: int = 1) -> tuple[float, list[dict]]:
    """(ms per `train_step` call, host op time by op type, most first) from a profiler XSpace.

    TensorFlow's executor records each kernel on the host plane as "<op name>:<op type>"
    (runtime events are "Class::Method" and are skipped). An XLA-compiled step shows up as a
    few cluster ops (`_XlaRun`). Op times of parallel threads add up, so `share` is a fraction
    of the summed op time, not of the step. Rows: {"op", "ms_per_step", "share", "count"}.
    """
    from resnet_keras.core import tf_compat

    space = tf_compat.xplane_proto().XSpace()
    space.ParseFromString(Path(xplane_path).read_bytes())
    totals: dict[str, list[float]] = {}
    step_ps = 0
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name == "train_step":
                    step_ps += event.duration_ps
                if ":" not in name or "::" in name or " " in name:
                    continue
                op_type = name.rsplit(":", 1)[1]
                if not op_type[:1].isalpha() and not op_type.startswith("_"):
                    continue
                entry = totals.setdefault(op_type, [0.0, 0])
                entry[0] += event.duration_ps / 1e9  # ms
                entry[1] += 1
    total = sum(ms for ms, _ in totals.values()) or 1.0
    rows = [
        dict(op=op, ms_per_step=round(ms / steps, 2), share=round(ms / total, 3), count=count // steps)
        for op, (ms, count) in totals.items()
    ]
    return round(step_ps / 1e9 / steps, 2), sorted(rows, key=lambda row: -row["ms_per_step"])


# ----------------------------------------------------------------------------- the benchmark


def run(
    model_config: ModelConfig,
    bench: BenchmarkConfig,
    *,
    emit: Callable[[dict], None] = lambda r: None,
    profile_dir: str | None = None,
) -> dict[str, Any]:
    """Runs the benchmark; calls `emit` with each measurement and returns the summary.

    Records have `model`, `mode` ("train", "infer", "pipeline", "train_synthetic_data",
    "train_real_data") and `step_stats` fields. The summary's `ratios` are ours / anchor images/s
    (> 1: ours faster), `data_ratio` real / synthetic step time (1.0: the pipeline costs nothing).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from resnet_keras.core.tf_compat import onednn_enabled

    began, load_before = time.perf_counter(), os.getloadavg()
    batch = bench.resolved_batch(model_config)
    real_data, synthetic_data = data_config_for(bench, model_config.num_classes, batch)
    if real_data is not None:  # the classifier's outputs come from the dataset, as in `train`
        model_config = dataclasses.replace(model_config, num_classes=synthetic_data.synthetic_classes)
    common = dict(image_size=model_config.image_size, precision=bench.precision, xla=bench.xla, warmup=bench.warmup)
    results: list[dict] = []

    def record(name, mode, times, **extra):
        row = dict(model=name, mode=mode, **step_stats(times, batch), **common, **extra)
        results.append(row)
        emit(row)
        return row

    ours = TrainStepRunner(model_config, bench, batch, synthetic_data)
    runners = [ours]
    if bench.compare:
        runners.append(_KerasAnchor(*anchor_for(model_config), model_config, bench, batch))
    params = {runner.name: int(runner.model.count_params()) for runner in runners}
    for mode in bench.modes:
        times = alternate(runners, mode, bench.steps, bench.warmup)
        for runner in runners:
            extra = dict(params=params[runner.name])
            if mode == "train":
                extra["final_loss"] = round(runner.loss, 4)
            record(runner.name, mode, times[runner.name], **extra)

    data_summary = None
    if real_data is not None:
        from resnet_keras.data import pipeline as data_lib

        start = time.perf_counter()
        dataset = data_lib.make_dataset(
            real_data, "train", image_size=model_config.image_size, batch_size=batch, training=True, repeat=True
        )
        build_s = time.perf_counter() - start  # folders: decoding every image into the in-memory cache
        pipeline = record(
            f"folder:{Path(bench.data).name}" if real_data.dataset == "folder" else real_data.dataset,
            "pipeline",
            _time_pipeline(dataset, bench.pipeline_batches, bench.warmup),
            build_seconds=round(build_s, 2),
        )
        del dataset
        # Blocks of consecutive steps, real then synthetic: a pipeline slower than the step shows
        # once its prefetch buffer is drained, which alternating single steps would hide.
        real_iterator, block = ours.make_iterator(real_data), max(1, bench.steps // 2)
        for _ in range(bench.warmup):
            ours.train(real_iterator)
        times = {"real": [], "synthetic": []}
        for _ in range(2):
            times["real"] += [_timed(lambda: ours.train(real_iterator)) for _ in range(block)]
            times["synthetic"] += [_timed(ours.train) for _ in range(block)]
        real = record(ours.name, "train_real_data", times["real"], data=bench.data)
        synthetic = record(ours.name, "train_synthetic_data", times["synthetic"], data="synthetic")
        data_summary = dict(
            pipeline_images_per_sec=pipeline["images_per_sec"],
            pipeline_over_train_speed=round(pipeline["images_per_sec"] / real["images_per_sec"], 2),
            real_over_synthetic_step_time=round(real["step_ms_median"] / synthetic["step_ms_median"], 3),
            real_over_synthetic_mean_step_time=round(float(np.mean(times["real"]) / np.mean(times["synthetic"])), 3),
        )

    ratios = {}
    if bench.compare:
        anchor = runners[1].name
        for mode in bench.modes:
            mine = next(r for r in results if r["model"] == ours.name and r["mode"] == mode)
            theirs = next(r for r in results if r["model"] == anchor and r["mode"] == mode)
            ratios[mode] = round(mine["images_per_sec"] / theirs["images_per_sec"], 3)
            ratios[f"{mode}_paired"] = _paired_ratio(
                [t / 1e3 for t in mine["step_ms"]], [t / 1e3 for t in theirs["step_ms"]]
            )
        ratios = {f"{ours.name}/{anchor}": ratios}

    memory = None
    if bench.memory:
        memory = {
            "ours": measure_peak_memory("ours", model_config, bench),
            "tensorflow_alone": measure_peak_memory("baseline", model_config, bench),
        }
        if bench.compare:
            memory["anchor"] = measure_peak_memory("anchor", model_config, bench)
            memory["ours_over_anchor"] = round(memory["ours"] / memory["anchor"], 3)
        memory = {"peak_rss_mb": memory, "batch_size": batch}

    profile = None
    if profile_dir:
        profile = profile_train_steps(ours, profile_dir)

    gpu = None
    if model_config.family == "imagenet" and model_config.depth == 50 and "train" in bench.modes:
        measured = next(r for r in results if r["model"] == ours.name and r["mode"] == "train")
        gpu = dict(
            GPU_REFERENCE,
            measured_here=dict(
                images_per_sec=measured["images_per_sec"],
                batch_size=batch,
                device="CPU" if not tf.config.list_logical_devices("GPU") else "GPU",
            ),
        )
    return dict(
        summary=True,
        model=ours.name,
        model_config=model_config.to_dict(),
        benchmark={**dataclasses.asdict(bench), "modes": list(bench.modes), "batch_size": batch},
        ratios=ratios,
        data=data_summary,
        memory=memory,
        profile=profile,
        gpu_reference=gpu,
        wall_s=round(time.perf_counter() - began, 1),
        load_avg_before=[round(v, 2) for v in load_before],
        load_avg_after=[round(v, 2) for v in os.getloadavg()],
        cpus=os.cpu_count(),
        devices=[d.name for d in tf.config.list_logical_devices()],
        python=platform.python_version(),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        threads=dict(
            intra_op=tf.config.threading.get_intra_op_parallelism_threads(),
            inter_op=tf.config.threading.get_inter_op_parallelism_threads(),
        ),
        onednn=onednn_enabled(),
        results=results,
    )


def format_report(summary: dict) -> str:
    """The human-readable report of `run()`'s summary: a table, the ratios and reference figures."""
    lines = [
        f"{'model':<30} {'mode':<21} {'batch':>5} {'images/s':>9} {'median ms':>10} {'p10 ms':>9} "
        f"{'p90 ms':>9} {'IQR ms':>8}"
    ]
    for r in summary["results"]:
        lines.append(
            f"{r['model']:<30} {r['mode']:<21} {r['batch_size']:>5} {r['images_per_sec']:>9.2f} "
            f"{r['step_ms_median']:>10.1f} {r['step_ms_p10']:>9.1f} {r['step_ms_p90']:>9.1f} "
            f"{r['step_ms_iqr']:>8.1f}"
        )
    for pair, values in summary["ratios"].items():
        parts = ", ".join(f"{mode} {value:.3f}x" for mode, value in values.items())
        lines.append(f"ratio {pair} (images/s, > 1 = ours faster): {parts}")
    if summary["data"]:
        d = summary["data"]
        lines.append(
            f"input pipeline alone: {d['pipeline_images_per_sec']:.0f} images/s "
            f"({d['pipeline_over_train_speed']:.1f}x the training speed); step time real/synthetic data: "
            f"{d['real_over_synthetic_step_time']:.3f} (median), {d['real_over_synthetic_mean_step_time']:.3f} (mean)"
        )
    if summary["memory"]:
        m = summary["memory"]["peak_rss_mb"]
        text = ", ".join(
            f"{key} {value:.0f} MB" if key != "ours_over_anchor" else f"ours/anchor {value:.2f}"
            for key, value in m.items()
        )
        lines.append(f"peak resident memory of a training process (batch {summary['memory']['batch_size']}): {text}")
    if summary["profile"]:
        p = summary["profile"]
        lines.append(
            f"where a {p['step_ms']:.1f} ms training step's time goes (host op time by type, ms per step, "
            f"share of all op time; trace: {p['trace']}):"
        )
        lines += [
            f"  {row['op']:<34} {row['ms_per_step']:>9.1f}  {100 * row['share']:5.1f} %  x{row['count']}"
            for row in p["top_ops"]
        ]
    if summary["gpu_reference"]:
        g = summary["gpu_reference"]
        here = g["measured_here"]
        lines.append(
            f"measured here: {here['images_per_sec']:.2f} images/s training on {here['device']} at batch "
            f"{here['batch_size']}; published for {g['model']} ({g['source']}):"
        )
        lines += [
            f"  {f['gpu']}, {f['precision']}, batch {f['batch_size']}: {f['images_per_sec']} images/s "
            f"({f['images_per_sec'] / here['images_per_sec']:.0f}x this run)"
            for f in g["figures"]
        ]
    onednn = {True: "on", False: "off", None: "unknown"}[summary["onednn"]]
    lines.append(
        f"load average before/after: {summary['load_avg_before']} / {summary['load_avg_after']} on "
        f"{summary['cpus']} CPUs; oneDNN kernels {onednn}; {summary['wall_s']} s"
    )
    return "\n".join(lines)
