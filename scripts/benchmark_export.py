"""Size, agreement and batch-1 latency of every export format, next to the Keras model (the anchor).

For each model: the SavedModel (``serving_default``, uint8 pixels) and TFLite ``none``
(float32), ``float16``, ``dynamic`` and ``int8`` files are exported with the project's own
export functions, which measure top-1 agreement with Keras and accuracy on the run's validation
split. Latency is one image per call, timed in rounds (Keras, SavedModel, each TFLite file,
one call each in turn) so machine noise hits all formats alike; warm-up calls are excluded.
TFLite runs on LiteRT's interpreter (``ai_edge_litert``) with ``--threads`` threads.

Models:
* ``resnet20``: the run directory given by ``--resnet20-run`` (e.g. a short cifar10-mini run:
  ``resnet-keras train --dataset folder --data-dir ../shared/data/cifar10-mini --depth 20
  --recipe short --epochs 15 --batch-size 64 --model-dir runs/resnet20-mini``).
* ``resnet50``: ImageNet ResNet-50 v1 at 224x224, 10 classes, random weights whose BN statistics
  are re-estimated on cifar10-mini train images (forward passes in training mode), so the
  activations are in a realistic range; accuracy is chance, agreement is meaningful. It reads
  cifar10-mini upsampled (resize shorter side to 256, centre crop 224: the evaluation view).

stdout: one JSON object per (model, format), then ``{"summary": ...}`` with the load average.

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

from resnet_keras import export as export_lib  # noqa: E402  (first: it turns on TensorFlow's oneDNN kernels)
from resnet_keras.config import ModelConfig  # noqa: E402
from resnet_keras.data import DataConfig, describe, make_dataset  # noqa: E402
from resnet_keras.models import build_model  # noqa: E402

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
    model.save(str(directory / "model.keras"))
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

    # Latency, batch 1, alternating rounds over the formats.
    image = next(iter(make_dataset(run.data_config, "val", image_size=size, batch_size=1, training=False)))[0].numpy()
    pixels = tf.constant(np.clip(np.round(image), 0, 255).astype(np.uint8))
    loaded = tf.saved_model.load(saved["path"])
    serving = loaded.signatures[export_lib.PIXELS_SIGNATURE]
    model = run.model
    keras_call = tf.function(lambda x: model(x, training=False))
    calls = {
        "keras": lambda: keras_call(tf.cast(pixels, tf.float32)).numpy(),
        "saved_model": lambda: serving(image=pixels)["probabilities"].numpy(),
    }
    for fmt, runner in runners.items():
        calls[fmt] = lambda r=runner: r(image)
    times = {fmt: [] for fmt in calls}
    for round_index in range(args.warmup + args.runs):
        for fmt, call in calls.items():
            t0 = time.perf_counter()
            call()
            if round_index >= args.warmup:
                times[fmt].append(time.perf_counter() - t0)
    anchor = float(np.median(times["keras"]))
    latency = {}
    for fmt, values in times.items():
        ms = np.array(values) * 1e3
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        latency[fmt] = dict(
            latency_ms_median=round(med, 3),
            latency_ms_iqr=round(q3 - q1, 3),
            runs=len(ms),
            speedup_vs_keras=round(anchor * 1e3 / med, 3),
        )
    records.insert(0, dict(model=name, format="keras", **latency["keras"]))
    for record in records[1:]:
        record.update(latency[record["format"]])
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet50", help="comma-separated: resnet20, resnet50")
    parser.add_argument("--resnet20-run", help="a trained ResNet-20 run directory (required for resnet20)")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per format (batch 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per format first")
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    parser.add_argument("--eval-samples", type=int, help="validation images for agreement (default all)")
    parser.add_argument("--calibration-samples", type=int, default=200, help="int8 calibration images")
    parser.add_argument("--out", help="keep the exports here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny ResNet-8 at width 0.25, few runs: smoke test")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        data = DataConfig(dataset="folder", data_dir=str(MINI))
        jobs = []
        if args.quick:
            args.runs, args.warmup, args.eval_samples, args.calibration_samples = 5, 1, 20, 20
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
                tflite_threads=args.threads,
            )
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
