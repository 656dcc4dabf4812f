#!/usr/bin/env python
"""Per-step overhead of the distributed training loop: two code trees side by side, in one run.

Trains ResNet-20 (CIFAR family, 32 px, synthetic data, batch 128, float32) through each tree's own
`train()` in two settings: MirroredStrategy over two logical CPUs in one process, and two
MultiWorkerMirroredStrategy workers on localhost. Each arm is a fresh process (or two); arms
alternate for `--rounds` rounds so that other load on the machine hits them alike. The figure is
training images/s of epoch 2 (epoch 1 holds the tracing), from the chief's history.csv.

    git archive <old commit> | tar -x -C /tmp/old
    python scripts/step_overhead.py --before /tmp/old --rounds 2

Arms: `before` (the other tree), `after` (this tree, one step per call as `train` runs on a CPU)
and `after-loop10` (this tree with `steps_per_loop=10`, what a GPU run does with 50). Prints one
JSON object per measurement and a summary with each arm's median and its ratio to `before`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = """
import sys
setting, run_dir, steps, loop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if setting == "mirrored":
    from resnet_keras.training.distribute import split_cpu
    split_cpu(2)
from resnet_keras.config.schema import DataConfig, ModelConfig, TrainConfig
from resnet_keras.training.train import train
extra = {} if loop == "default" else {"steps_per_loop": int(loop)}
train(ModelConfig(depth=20, image_size=32, num_classes=10), DataConfig(dataset="synthetic", synthetic_examples=2048),
      TrainConfig(epochs=2, steps_per_epoch=steps, batch_size=128, family="cifar",
                  strategy="mirrored" if setting == "mirrored" else "multi-worker"),
      run_dir, log=lambda line: None, **extra)
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def measure(tree: str, setting: str, steps: int, loop: str) -> float:
    """Training images/s of epoch 2 of one arm."""
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        command = [sys.executable, "-c", TRAIN, setting, run_dir, str(steps), loop]
        if setting == "mirrored":
            processes = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)]
        else:
            peers = [f"localhost:{port}" for port in free_ports(2)]
            processes = [
                subprocess.Popen(
                    command,
                    env=dict(
                        env,
                        TF_CONFIG=json.dumps({"cluster": {"worker": peers}, "task": {"type": "worker", "index": i}}),
                    ),
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(2)
            ]
        errors = [process.communicate(timeout=1800)[1] for process in processes]
        if any(process.returncode for process in processes):
            raise SystemExit(f"Error: {tree} {setting} failed: {errors[0].strip().splitlines()[-1:]}")
        with open(os.path.join(run_dir, "history.csv"), newline="") as handle:
            row = list(csv.DictReader(handle))[1]
    return steps * 128 / float(row["seconds"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the other code tree (a checkout of an older commit)")
    parser.add_argument("--after", default=REPO, help="this tree (default: the repository holding this script)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch (default 40)")
    parser.add_argument("--settings", default="mirrored,workers")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.before, "resnet_keras")):
        parser.error(f"--before {args.before!r} holds no resnet_keras package")
    arms = [("before", args.before, "default"), ("after", args.after, "default"), ("after-loop10", args.after, "10")]
    results: dict = {}
    for round_ in range(args.rounds):
        for setting in args.settings.split(","):
            for arm, tree, loop in arms if round_ % 2 == 0 else arms[::-1]:
                rate = measure(tree, setting, args.steps, loop)
                results.setdefault((setting, arm), []).append(rate)
                print(
                    json.dumps(dict(setting=setting, arm=arm, round=round_, images_per_second=round(rate, 1))),
                    flush=True,
                )
    summary = {}
    for (setting, arm), rates in results.items():
        base = statistics.median(results[(setting, "before")])
        summary[f"{setting}/{arm}"] = dict(
            median_images_per_second=round(statistics.median(rates), 1), ratio=round(statistics.median(rates) / base, 3)
        )
    print(json.dumps(dict(summary=summary, load=os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
