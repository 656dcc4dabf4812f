"""Size, agreement, accuracy, batch-1 latency and batch-64 throughput of every export format, next to
the Keras model (the anchor).

For each model: the SavedModel (``serving_default``, uint8 pixels), TFLite ``none`` (float32),
``float16``, ``dynamic`` and ``int8`` files and ONNX float32 and int8 files are exported with the
project's own export functions, which measure top-1 agreement with Keras and accuracy on the run's
validation split (the SavedModel's accuracy is measured here on the same images). Latency is one
image per call and throughput one batch of ``--batch`` images per call, each timed in rounds (every
format called once in turn) so machine noise hits all formats alike; warm-up calls are excluded.
TFLite runs on LiteRT's interpreter (``ai_edge_litert``), ONNX on ONNX Runtime's CPU provider, both
with ``--threads`` threads; TensorFlow uses its defaults (all cores). ``keras_xla`` is the Keras
model in a ``tf.function(jit_compile=True)``: how much of TensorFlow's gap is per-op overhead.
``saved_model_bare`` is the float32 pixels -> probabilities SavedModel that the ONNX file is converted
from: it separates the cost of the serving extras (uint8 input, top-k, labels) from that of the
runtime. Run the script again with ``TF_ENABLE_ONEDNN_OPTS=0`` to see what the oneDNN kernels bring.

Models:
* ``resnet20``: the run directory given by ``--resnet20-run`` (e.g. a short cifar10-mini run:
  ``resnet-keras train --dataset folder --data-dir ../shared/data/cifar10-mini --depth 20
  --recipe short --epochs 15 --batch-size 64 --model-dir runs/resnet20-mini``).
* ``resnet50``: ImageNet ResNet-50 v1 at 224x224, 10 classes, random weights whose BN statistics
  are re-estimated on cifar10-mini train images (forward passes in training mode), so the
  activations are in a realistic range; accuracy is chance, agreement is meaningful. It reads
  cifar10-mini upsampled (resize shorter side to 256, centre crop 224: the evaluation view).

stdout: one JSON object per (model, format), then ``{"summary": ...}`` with the load average.
Ratios (``speedup_vs_keras``, ``throughput_vs_keras``) are against Keras in the same run.

    .venv/bin/python scripts/benchmark_export.py --resnet20-run runs/resnet20-mini
    .venv/bin/python scripts/benchmark_export.py --models resnet50 --runs 10
    .venv/bin/python scripts/benchmark_export.py --quick       # tiny net, smoke test, < 1 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from resnet_keras.config.schema import ModelConfig  # noqa: E402
from resnet_keras.data.pipeline import DataConfig, describe, make_dataset  # noqa: E402
from resnet_keras.serving import export as export_lib  # noqa: E402  (first: it turns on TensorFlow's oneDNN kernels)
from resnet_keras.serving import onnx as onnx_export  # noqa: E402
from resnet_keras.zoo.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "cifar10-mini"


def log(message):
    print(message, file=sys.stderr, flush=True)


def make_run(directory: Path, config: ModelConfig, data: DataConfig, bn_batches: int) -> Path:
    """A run directory (config.json, labels.txt, model.keras) holding random weights whose BN
    moving statistics are re-estimated on `bn_batches` batches of the run's train images."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(config)
    ds = make_dataset(data, "train", image_size=config.image_size, batch_size=16, training=False)
    for images, _ in ds.take(bn_batches):
        model(images, training=True)  # BatchNormalization updates its moving mean/variance here
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model": config.to_dict(), "data": data.to_dict()}))
    (directory / "labels.txt").write_text("".join(f"{n}\n" for n in describe(data).class_names))
    from resnet_keras.zoo.portable import save_model

    save_model(model, directory / "model.keras")
    return directory


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench(name: str, run_dir: Path, out: Path, args) -> list[dict]:
    run = export_lib.load_run(run_dir)
    size = run.model_config.image_size
    records = []
    saved = export_lib.export_saved_model(run_dir, out / "saved_models", log=log)
    records.append(
        dict(
            model=name,
            format="saved_model",
            size_bytes=dir_size(Path(saved["path"])),
            max_probability_difference=saved["max_probability_difference"],
            checked_on=saved["checked_on"],
        )
    )
    runners = {}
    for quantize in export_lib.QUANTIZATIONS:
        path = out / f"{name}_{quantize}.tflite"
        t0 = time.perf_counter()
        report = export_lib.export_tflite(
            run_dir,
            path,
            quantize=quantize,
            eval_samples=args.eval_samples,
            calibration_samples=args.calibration_samples,
            max_accuracy_drop=100,
            log=log,
        )
        records.append(
            dict(
                model=name,
                format=f"tflite_{'float32' if quantize == 'none' else quantize}",
                export_seconds=round(time.perf_counter() - t0, 1),
                **{
                    k: report.get(k)
                    for k in (
                        "size_bytes",
                        "eval_images",
                        "keras_accuracy",
                        "accuracy",
                        "top1_agreement",
                        "max_probability_difference",
                        "input_dtype",
                    )
                },
            )
        )
        runners[records[-1]["format"]] = export_lib.TFLiteRunner(model_path=str(path), num_threads=args.threads)

    for quantize in onnx_export.QUANTIZATIONS:
        path = out / f"{name}_{quantize}.onnx"
        t0 = time.perf_counter()
        report = onnx_export.export_onnx(
            run_dir,
            path,
            quantize=quantize,
            eval_samples=args.eval_samples,
            calibration_samples=args.calibration_samples,
            max_accuracy_drop=100,
            log=log,
        )
        fmt = f"onnx_{'float32' if quantize == 'none' else quantize}"
        records.append(
            dict(
                model=name,
                format=fmt,
                export_seconds=round(time.perf_counter() - t0, 1),
                **{
                    k: report.get(k)
                    for k in (
                        "size_bytes",
                        "eval_images",
                        "keras_accuracy",
                        "accuracy",
                        "top1_agreement",
                        "max_probability_difference",
                    )
                },
            )
        )
        runners[fmt] = onnx_export.OnnxRunner(path, num_threads=args.threads)

    loaded = tf.saved_model.load(saved["path"])
    serving = loaded.signatures[export_lib.PIXELS_SIGNATURE]
    model = run.model
    keras_call = tf.function(lambda x: model(x, training=False))
    keras_xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
    # The graph tf2onnx converts (float32 pixels -> probabilities, nothing else): against saved_model it
    # prices the serving extras (uint8 cast, top-k, label lookup); against onnx_float32 the runtime.
    onnx_export.float32_saved_model(run, out / "bare_float32_saved_model")
    bare = tf.saved_model.load(str(out / "bare_float32_saved_model")).signatures["serving_default"]

    # Accuracy of Keras and the SavedModel on the images the TFLite/ONNX reports used.
    sample = export_lib.held_out_sample(run, args.eval_samples, log)
    if sample is not None:
        images, labels = sample
        keras_top1 = np.concatenate(
            [keras_call(images[i : i + 64]).numpy().argmax(-1) for i in range(0, len(images), 64)]
        )
        uint8 = np.clip(np.round(images), 0, 255).astype(np.uint8)
        saved_top1 = np.concatenate(
            [serving(image=uint8[i : i + 64])["probabilities"].numpy().argmax(-1) for i in range(0, len(images), 64)]
        )
        records[0].update(
            eval_images=len(labels),
            keras_accuracy=float((keras_top1 == labels).mean()),
            accuracy=float((saved_top1 == labels).mean()),
            top1_agreement=float((saved_top1 == keras_top1).mean()),
        )

    # Batch-1 latency and batch-N throughput, alternating rounds over the formats.
    val = make_dataset(run.data_config, "val", image_size=size, batch_size=args.batch, training=False)
    batch = next(iter(val))[0].numpy()
    if len(batch) < args.batch:  # a small validation split: repeat images up to a full batch
        batch = np.resize(batch, (args.batch,) + batch.shape[1:])
    image = batch[:1]
    batch_uint8 = tf.constant(np.clip(np.round(batch), 0, 255).astype(np.uint8))
    pixels = batch_uint8[:1]
    batch_float = tf.constant(batch)
    image_float = tf.constant(image)

    def tflite_batch(path, n):
        """A LiteRT interpreter whose input is resized to n images (the file's own input is [1, ...])."""
        runner = export_lib.TFLiteRunner(model_path=str(path), num_threads=args.threads)
        interpreter = runner.interpreter
        interpreter.resize_tensor_input(runner.input["index"], [n, size, size, 3])
        interpreter.allocate_tensors()
        dtype, (scale, zero) = runner.input["dtype"], runner.input["quantization"]
        x = batch if dtype == np.float32 else np.clip(np.round(batch / scale + zero), 0, 255).astype(dtype)

        def call():
            interpreter.set_tensor(runner.input["index"], x.astype(dtype))
            interpreter.invoke()
            return interpreter.get_tensor(runner.output["index"])

        return call

    single = {
        "keras": lambda: keras_call(image_float).numpy(),
        "keras_xla": lambda: keras_xla(image_float).numpy(),
        "saved_model": lambda: serving(image=pixels)["probabilities"].numpy(),
        "saved_model_bare": lambda: bare(image=image_float)["probabilities"].numpy(),
    }
    batched = {
        "keras": lambda: keras_call(batch_float).numpy(),
        "keras_xla": lambda: keras_xla(batch_float).numpy(),
        "saved_model": lambda: serving(image=batch_uint8)["probabilities"].numpy(),
        "saved_model_bare": lambda: bare(image=batch_float)["probabilities"].numpy(),
    }
    for fmt, runner in runners.items():
        single[fmt] = lambda r=runner: r(image)
        if fmt.startswith("tflite"):
            batched[fmt] = tflite_batch(
                out / f"{name}_{fmt.split('_')[1].replace('float32', 'none')}.tflite", args.batch
            )
        else:
            batched[fmt] = lambda r=runner: r(batch, batch_size=args.batch)

    def timed(calls, runs):
        times = {fmt: [] for fmt in calls}
        for round_index in range(args.warmup + runs):
            for fmt, call in calls.items():
                t0 = time.perf_counter()
                call()
                if round_index >= args.warmup:
                    times[fmt].append(time.perf_counter() - t0)
        return {fmt: np.array(values) for fmt, values in times.items()}

    latency, throughput = timed(single, args.runs), timed(batched, args.batch_runs)
    anchor_ms = float(np.median(latency["keras"])) * 1e3
    anchor_ips = args.batch / float(np.median(throughput["keras"]))
    measured = {}
    for fmt in single:
        ms = latency[fmt] * 1e3
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        ips = args.batch / float(np.median(throughput[fmt]))
        measured[fmt] = dict(
            latency_ms_median=round(med, 3),
            latency_ms_iqr=round(q3 - q1, 3),
            runs=len(ms),
            speedup_vs_keras=round(anchor_ms / med, 3),
            batch=args.batch,
            images_per_second=round(ips, 1),
            batch_runs=len(throughput[fmt]),
            throughput_vs_keras=round(ips / anchor_ips, 3),
        )
    keras_record = dict(model=name, format="keras", size_bytes=(run_dir / run.weights_file).stat().st_size)
    if "keras_accuracy" in records[0]:
        keras_record.update(eval_images=records[0]["eval_images"], accuracy=records[0]["keras_accuracy"])
    records[:0] = [
        dict(keras_record, **measured["keras"]),
        dict(model=name, format="keras_xla", **measured["keras_xla"]),
    ]
    records.insert(3, dict(model=name, format="saved_model_bare"))
    for record in records[2:]:
        record.update(measured[record["format"]])
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet50", help="comma-separated: resnet20, resnet50")
    parser.add_argument("--resnet20-run", help="a trained ResNet-20 run directory (required for resnet20)")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per format (batch 1)")
    parser.add_argument("--batch", type=int, default=64, help="images per call for the throughput rounds")
    parser.add_argument("--batch-runs", type=int, default=5, help="timed batch calls per format")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per format first")
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    parser.add_argument("--eval-samples", type=int, help="validation images for agreement (default all)")
    parser.add_argument("--calibration-samples", type=int, default=200, help="int8 calibration images")
    parser.add_argument("--out", help="keep the exports here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny ResNet-8 at width 0.25, few runs: smoke test")
    args = parser.parse_args()
    if not (MINI / "train").is_dir():
        sys.exit(f"Error: the measurement images are missing: expected {MINI} (see ../shared/data/README.md)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        data = DataConfig(dataset="folder", data_dir=str(MINI))
        jobs = []
        if args.quick:
            args.runs, args.warmup, args.eval_samples, args.calibration_samples = 5, 1, 20, 20
            args.batch, args.batch_runs = 8, 2
            config = ModelConfig(depth=8, width=0.25, image_size=32, num_classes=10)
            jobs.append(("resnet8_w0.25", make_run(out / "run-quick", config, data, bn_batches=4)))
        else:
            for name in args.models.split(","):
                if name == "resnet20":
                    if not args.resnet20_run:
                        parser.error("resnet20 needs --resnet20-run DIR (a trained run)")
                    jobs.append((name, Path(args.resnet20_run)))
                elif name == "resnet50":
                    config = ModelConfig.preset("resnet50", num_classes=10)
                    jobs.append((name, make_run(out / "run-resnet50", config, data, bn_batches=4)))
                else:
                    parser.error(f"unknown model {name!r}; expected resnet20 or resnet50")
        records = []
        for name, run_dir in jobs:
            for record in bench(name, run_dir, out / name, args):
                print(json.dumps(record), flush=True)
                records.append(record)
    print(
        json.dumps(
            dict(
                summary=True,
                load_avg_before=[round(v, 2) for v in load_before],
                load_avg_after=[round(v, 2) for v in os.getloadavg()],
                cpus=os.cpu_count(),
                machine=platform.machine(),
                tensorflow=tf.__version__,
                runs=args.runs,
                batch=args.batch,
                batch_runs=args.batch_runs,
                tflite_and_onnx_threads=args.threads,
                tf_onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            )
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
