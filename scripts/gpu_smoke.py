#!/usr/bin/env python
"""The first thing to run on a machine with GPUs: every GPU path of `resnet-keras train`, in minutes.

Trains on synthetic data through the project's own `train()` (its strategy, step, loss scaling,
checkpoints and validation), one case per process: one GPU and all GPUs (MirroredStrategy),
float16 (dynamic loss scaling) and bfloat16, XLA on and off. Each case prints one line with its
images/s, its first and last loss and PASS or FAIL, then a summary line; the exit code is the
number of failed cases (0: every case passed). XLA on several GPUs is refused by design
(`distribute.check_xla`): that case passes when the refusal is the one-line UsageError.

    python scripts/gpu_smoke.py                      # ResNet-50 at 224 px, 300 steps a case
    python scripts/gpu_smoke.py --steps 100 --batch-size 128 --json smoke.jsonl

Without a GPU it runs its CPU-only form, the same cases on this machine: "one" is the CPU and
"all" is MirroredStrategy over two logical CPU devices, which is how the tests simulate GPUs
(pass --depth 8 --image-size 32 there, or it takes a long time). A case passes when it ran, every
loss was finite and, over 50 steps or more, the last tenth's mean loss is below the first
tenth's (synthetic data is a fixed set of random images: the network can fit it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = ("float16", "bfloat16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per case (default 300)")
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth (default 50; CPU form: 8)")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch (default 64 on GPUs, 8 on CPUs)")
    parser.add_argument(
        "--only", default=None, help="comma-separated case names to run (e.g. one-float16-xla,all-bfloat16-noxla)"
    )
    parser.add_argument("--json", default=None, help="also append one JSON object per case to this file")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # a child process runs one case
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1 (received {args.steps})")
    return args


def case_names() -> list[str]:
    return [f"{d}-{p}-{x}" for d, p, x in itertools.product(("one", "all"), PRECISIONS, ("noxla", "xla"))]


def run_case(name: str, args) -> dict:
    """Runs in the child: one case through `resnet_keras.training.train.train`; returns its record."""
    devices, precision, xla = name.split("-")
    gpus = _gpu_count()
    if devices == "all" and not gpus:
        from resnet_keras.training.distribute import split_cpu

        split_cpu(2)  # before TensorFlow initialises its devices
    from resnet_keras.config.schema import DataConfig, ModelConfig, TrainConfig
    from resnet_keras.core.errors import UsageError
    from resnet_keras.training.train import train
    from resnet_keras.training.trainer import Hook

    replicas = max(gpus, 1) if devices == "all" and gpus else (2 if devices == "all" else 1)
    per_device = args.batch_size or (64 if gpus else 8)
    losses: list[float] = []

    class Losses(Hook):
        def on_train_batch_end(self, epoch, step, values):
            losses.append(float(values[0] / max(values[2], 1.0)))

    record = dict(case=name, gpus=gpus, replicas=replicas, precision=precision, xla=xla == "xla")
    model = ModelConfig(depth=args.depth, image_size=args.image_size, num_classes=10)
    data = DataConfig(dataset="synthetic", synthetic_examples=max(256, 4 * per_device * replicas))
    config = TrainConfig(
        epochs=1,
        steps_per_epoch=args.steps,
        batch_size=per_device * replicas,
        mixed_precision=precision,
        xla=xla == "xla",
        strategy="mirrored" if devices == "all" else "one-device",
        family=model.family,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            metrics = train(model, data, config, run_dir, hooks=[Losses()], log=lambda line: None, steps_per_loop=1)
        except UsageError as error:
            refused = devices == "all" and xla == "xla"
            return dict(record, status="PASS" if refused else "FAIL", note=f"refused: {error}")
    record.update(images_per_second=metrics["images_per_second"], replicas=metrics["replicas"])
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    finite = all(loss == loss and abs(loss) != float("inf") for loss in losses)
    learned = len(losses) < 50 or last < first
    record.update(loss_first=round(first, 4), loss_last=round(last, 4), steps=len(losses))
    record["status"] = "PASS" if finite and learned and metrics["replicas"] == replicas else "FAIL"
    if not finite:
        record["note"] = "a loss was not finite"
    elif not learned:
        record["note"] = "the loss did not fall"
    return record


def _gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def line(record: dict) -> str:
    fields = [f"{record['case']:<20}", f"replicas={record['replicas']}"]
    if "images_per_second" in record:
        fields += [
            f"images/s={record['images_per_second']}",
            f"loss {record['loss_first']} -> {record['loss_last']} ({record['steps']} steps)",
        ]
    fields.append(record["status"])
    if record.get("note"):
        fields.append(f"({record['note']})")
    return "  ".join(fields)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args)), flush=True)
        return 0
    names = case_names()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"Error: unknown case(s) {', '.join(unknown)}; expected some of {', '.join(names)}", file=sys.stderr)
            return 2
        names = [name for name in names if name in wanted]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    failed = 0
    for name in names:
        started = time.time()
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]), "--case", name],
            capture_output=True,
            text=True,
            env=env,
        )
        results = [json.loads(row[7:]) for row in child.stdout.splitlines() if row.startswith("RESULT ")]
        if child.returncode or not results:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1][:300]
            record = dict(case=name, replicas="?", status="FAIL", note=f"exit {child.returncode}: {tail}")
        else:
            record = results[0]
        record["seconds"] = round(time.time() - started, 1)
        failed += record["status"] != "PASS"
        print(line(record), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
    print(f"gpu smoke: {len(names) - failed} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
