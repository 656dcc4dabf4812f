"""Throughput of our ResNets next to keras.applications.ResNet50 (the anchor), in one process.

For each model: training images/s (`train_on_batch`, SGD 0.1 momentum 0.9, fixed synthetic
batch) and inference images/s (`model(x, training=False)` in a `tf.function`). Warm-up steps
(the first traces and compiles) are excluded. Models of the same input size are timed in
rounds, one step each in turn (A, B, A, B, ...), so machine noise hits all of them alike.

stdout: one JSON object per (model, mode) with `images_per_sec` = batch / median step time and
the step-time spread (`step_ms_min/median/max`, `step_ms_iqr`), then a final `{"summary": ...}`
line whose `ratios` give ours / anchor images/s (> 1 means ours is faster): `train`/`infer`
from the medians, `*_paired` the median of per-round ratios (less sensitive to load drift).
`load_avg_before/after` above the core count means other processes competed for the CPU.

    .venv/bin/python scripts/benchmark_models.py                        # ~4-5 min on 2 cores
    .venv/bin/python scripts/benchmark_models.py --models resnet20 --xla
    .venv/bin/python scripts/benchmark_models.py --quick                # smoke test, < 30 s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from resnet_keras import ModelConfig, build_model, create_model  # noqa: E402

ANCHOR = "keras_resnet50"
# name -> (builder, image size, classes, outputs logits, default batch, default timed steps)
MODELS = {
    "resnet20": (lambda: create_model("resnet20"), 32, 10, True, 128, 20),
    "resnet50": (lambda: create_model("resnet50"), 224, 1000, True, 16, 5),
    "resnet50_v1.5": (lambda: create_model("resnet50_v1.5"), 224, 1000, True, 16, 5),
    ANCHOR: (lambda: keras.applications.ResNet50(weights=None), 224, 1000, False, 16, 5),
}


def stats(name, mode, times, batch, **extra):
    ms = np.array(times) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return dict(model=name, mode=mode, batch_size=batch, steps=len(ms),
                images_per_sec=round(batch / med * 1e3, 2), step_ms_median=round(med, 1),
                step_ms_min=round(ms.min(), 1), step_ms_max=round(ms.max(), 1),
                step_ms_iqr=round(q3 - q1, 1), step_ms=[round(t, 1) for t in ms], **extra)


def bench_group(names, args, emit):
    """Builds the models of one input size, then times them in alternating rounds."""
    runs = []
    for name in names:
        build, size, classes, logits, batch, steps = MODELS[name]
        batch, steps = args.batch_size or batch, args.steps or steps
        label = name
        if args.quick:
            build, batch, steps = (lambda: build_model(ModelConfig.preset("resnet20", width=0.25))), 8, 2
            label = "resnet20_w0.25"
        keras.utils.set_random_seed(0)
        model = build()
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
                      jit_compile=args.xla)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = rng.integers(0, classes, (batch,)).astype("int32")
        forward = tf.function(lambda t, m=model: m(t, training=False), jit_compile=args.xla)
        runs.append(dict(name=label, model=model, x=x, y=y, xt=tf.constant(x), forward=forward,
                         batch=batch, steps=steps, params=model.count_params(), size=size))
    steps = max(r["steps"] for r in runs)

    def train(r):
        r["loss"] = float(r["model"].train_on_batch(r["x"], r["y"]))

    def infer(r):
        r["forward"](r["xt"]).numpy()  # .numpy() waits for the result

    for mode, step in (("train", train), ("infer", infer)):
        times = {r["name"]: [] for r in runs}
        for i in range(args.warmup + steps):
            for r in runs:  # A, B, A, B, ...
                if i < args.warmup + r["steps"]:
                    start = time.perf_counter()
                    step(r)
                    if i >= args.warmup:
                        times[r["name"]].append(time.perf_counter() - start)
        for r in runs:
            extra = dict(image_size=r["size"], params=r["params"], xla=args.xla, warmup=args.warmup)
            if mode == "train":
                extra["final_loss"] = round(r["loss"], 4)
            emit(stats(r["name"], mode, times[r["name"]], r["batch"], **extra))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=f"resnet20,resnet50,{ANCHOR}",
                        help=f"comma-separated, among: {', '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, help="override every model's default batch")
    parser.add_argument("--steps", type=int, help="timed steps (default 20 for ResNet-20, 5 for ResNet-50s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model and mode (default 2)")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=False,
                        help="jit_compile train and inference steps (default off)")
    parser.add_argument("--json-out", help="also write the summary (with all results) to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: resnet20 at width 0.25, batch 8, 2 steps, 1 warm-up; no ResNet-50s")
    args = parser.parse_args(argv)
    names = ["resnet20"] if args.quick else [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; expected among {list(MODELS)}")
    if args.quick:
        args.warmup = 1

    results, began, load_before = [], time.perf_counter(), os.getloadavg()

    def emit(record):
        results.append(record)
        print(json.dumps(record), flush=True)

    for size in sorted({MODELS[n][1] for n in names}):
        bench_group([n for n in names if MODELS[n][1] == size], args, emit)

    # Ratio of medians, and the median of per-round ratios (steps timed back to back, so
    # robust to load that changes during the run): ours / anchor images/s, > 1 = ours faster.
    ratios = {}
    anchor = {r["mode"]: r for r in results if r["model"] == ANCHOR}
    for r in results:
        a = anchor.get(r["mode"])
        if a and r["model"] != ANCHOR and r["image_size"] == a["image_size"]:
            paired = [(r["batch_size"] / t) / (a["batch_size"] / u) for t, u in zip(r["step_ms"], a["step_ms"])]
            ratios.setdefault(f"{r['model']}/{ANCHOR}", {}).update({
                r["mode"]: round(r["images_per_sec"] / a["images_per_sec"], 3),
                f"{r['mode']}_paired": round(float(np.median(paired)), 3)})
    summary = dict(
        summary=True, ratios=ratios, xla=args.xla, quick=args.quick,
        wall_s=round(time.perf_counter() - began, 1),
        load_avg_before=[round(v, 2) for v in load_before],
        load_avg_after=[round(v, 2) for v in os.getloadavg()],
        cpus=os.cpu_count(), python=platform.python_version(),
        tensorflow=tf.__version__, keras=keras.__version__, results=results,
    )
    print(json.dumps(summary), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
