#!/usr/bin/env python
"""Start N `resnet-keras train --strategy multi-worker` processes on this machine.

Each process gets the TF_CONFIG a cluster scheduler (Kubeflow TFJob, Vertex AI) would set, with
every worker on a free localhost port; worker 0 is the chief and alone writes --model-dir.
Their output is streamed with a "[worker i]" prefix. When one worker fails, or on Ctrl-C, all
are killed and the launcher exits with that worker's code (130 for Ctrl-C). Rerunning the same
command resumes from the last epoch the chief saved.

    python scripts/launch_workers.py --workers 2 -- --dataset folder \\
        --data-dir ../shared/data/cifar10-mini --depth 20 --batch-size 128 --epochs 3 --model-dir runs/mw

The arguments after `--` go to `resnet-keras train` unchanged (no --strategy: it is multi-worker).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# TensorFlow's preemption notifier catches SIGTERM in multi-worker processes and keeps running,
# so a worker that ignores SIGTERM this long after it is asked to stop gets SIGKILL.
TERMINATE_GRACE_S = 5.0


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on localhost a moment ago (bound, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("localhost", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(addresses: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` in a cluster of "worker" tasks (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def _stream(prefix: str, pipe, lock: threading.Lock) -> None:
    for line in iter(pipe.readline, b""):
        with lock:
            sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
            sys.stdout.flush()
    pipe.close()


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every live worker, then SIGKILL those still alive after the grace period."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--workers N] [--worker-timeout S] -- <resnet-keras train options>",
    )
    parser.add_argument("--workers", type=int, default=2, help="Worker processes to start (default 2).")
    parser.add_argument(
        "--worker-timeout",
        type=float,
        help="Seconds a worker waits for its peers before failing (RESNET_KERAS_WORKER_TIMEOUT).",
    )
    args = parser.parse_args(ours)
    if args.workers < 1:
        parser.error(f"Received: --workers {args.workers}; expected an integer >= 1")
    if any(arg == "--strategy" or arg.startswith("--strategy=") for arg in train_args):
        parser.error("do not pass --strategy: the launcher always trains with --strategy multi-worker")
    if args.worker_timeout is not None and not args.worker_timeout > 0:
        parser.error(f"Received: --worker-timeout {args.worker_timeout}; expected a number of seconds > 0")

    addresses = [f"localhost:{port}" for port in free_ports(args.workers)]
    command = [sys.executable, "-m", "resnet_keras.cli", "train", "--strategy", "multi-worker", *train_args]
    lock = threading.Lock()
    processes, streams = [], []
    for index in range(args.workers):
        env = dict(os.environ, TF_CONFIG=tf_config(addresses, index), PYTHONUNBUFFERED="1")
        if args.worker_timeout is not None:
            env["RESNET_KERAS_WORKER_TIMEOUT"] = str(args.worker_timeout)
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(process)
        print(
            f"[launcher] worker {index} pid {process.pid} at {addresses[index]}{' (chief)' if index == 0 else ''}",
            flush=True,
        )
        stream = threading.Thread(target=_stream, args=(f"[worker {index}]", process.stdout, lock), daemon=True)
        stream.start()
        streams.append(stream)

    code = 0
    try:
        running = set(range(args.workers))
        while running:
            for index in sorted(running):
                returncode = processes[index].poll()
                if returncode is None:
                    continue
                running.discard(index)
                if returncode != 0:
                    # A negative code is a signal (-9: SIGKILL); report it as 128 + signal, as shells do.
                    code = returncode if returncode > 0 else 128 - returncode
                    print(f"[launcher] worker {index} exited with code {returncode}; stopping the others", flush=True)
                    _stop(processes)
                    running.clear()
                    break
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("[launcher] interrupted; stopping the workers", flush=True)
        _stop(processes)
        code = 130
    for stream in streams:
        stream.join(timeout=5)
    if code == 0:
        print(f"[launcher] all {args.workers} workers finished", flush=True)
    return code


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
