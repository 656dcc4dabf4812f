"""Resident memory of a `resnet-keras train` process over its run, sampled from /proc (Linux).

    python scripts/train_memory.py -- --dataset tfrecord --data-dir /tmp/imagenet-like-20k-records \
        --depth 8 --width 0.25 --image-size 128 --batch-size 64 --epochs 1 --model-dir /tmp/mem-run --overwrite

runs the command after `--`, samples the process's resident set size every --every seconds and
prints one JSON line: the samples in MB, and the peak in each quarter of the run after the
first (start-up, graph tracing and the shuffle buffer filling). Flat quarters mean memory does
not grow with the images read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    command = [sys.executable, "-m", "resnet_keras.cli", "train", *train_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples = []
    while process.poll() is None:
        value = rss_mb(process.pid)
        if value is not None:
            samples.append(round(value, 1))
        time.sleep(args.every)
    output = process.stdout.read()
    quarter = max(len(samples) // 4, 1)
    peaks = [max(samples[i : i + quarter]) for i in range(0, len(samples), quarter)][:4]
    print(output.strip().splitlines()[-1] if output.strip() else "")
    print(
        json.dumps(
            dict(
                returncode=process.returncode,
                seconds=round(len(samples) * args.every, 1),
                peak_mb=max(samples, default=None),
                quarter_peaks_mb=peaks,
                samples_mb=samples,
                load=os.getloadavg(),
            )
        )
    )


if __name__ == "__main__":
    main()
