#!/usr/bin/env python3
"""Run `resnet-keras tune` as a KerasTuner chief and N workers on this machine.

    python scripts/tune_distributed.py --workers 2 -- --dataset folder --data-dir DATA --max-trials 8

Everything after ``--`` goes to every `resnet-keras tune` process unchanged. The chief
(KERASTUNER_TUNER_ID=chief) serves the oracle on a free localhost port and writes the reports;
workers tuner0..tuner<N-1> ask it for trials and train them. Workers start once the chief
accepts connections, so they never race it for the results directory.

On several machines, run the same tune command on each with KERASTUNER_ORACLE_IP/PORT pointing
at the chief and a distinct KERASTUNER_TUNER_ID; this script is the one-machine case.

Output lines are prefixed with the process name. The script exits with the chief's code; if
any process fails, the timeout passes or the script is interrupted, it stops every process
it started (each in its own process group: TERM, then KILL) so none is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pump(name: str, stream) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()
    stream.close()


def start(name: str, tune_args: list[str], port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        KERASTUNER_TUNER_ID=name,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet_keras.cli", "tune", *tune_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
    print(f"started {name} pid {proc.pid}", flush=True)
    return proc


def stop_all(procs: dict[str, subprocess.Popen], grace: float = 5.0) -> None:
    """TERM each live process group, then KILL what is still there after `grace` seconds."""
    live = {name: p for name, p in procs.items() if p.poll() is None}
    for p in live.values():
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in live.values():
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for name, p in live.items():
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        print(f"stopped {name} pid {p.pid}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        own, tune_args = argv[:split], argv[split + 1 :]
    else:
        own, tune_args = argv, []
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], usage="%(prog)s [--workers N] [--port P] [--timeout S] -- TUNE_OPTIONS"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--port", type=int, default=0, help="oracle port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=0, help="stop everything after this many seconds (0: none)")
    args = parser.parse_args(own)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    port = args.port or free_port()
    deadline = time.monotonic() + args.timeout if args.timeout else float("inf")

    procs: dict[str, subprocess.Popen] = {}

    def interrupted(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        procs["chief"] = start("chief", tune_args, port)
        while not accepts(port):  # the chief validates the search, then serves the oracle
            if procs["chief"].poll() is not None:
                print(f"chief exited with code {procs['chief'].returncode} before serving the oracle", flush=True)
                return procs["chief"].returncode or 1
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.2)
        for i in range(args.workers):
            procs[f"tuner{i}"] = start(f"tuner{i}", tune_args, port)
        while True:
            for name, p in procs.items():
                if name != "chief" and p.poll() not in (None, 0):
                    print(f"{name} failed with code {p.returncode}; stopping the search", flush=True)
                    return 1
            chief = procs["chief"].poll()
            if chief is not None:
                if chief != 0 or all(p.poll() is not None for p in procs.values()):
                    return chief
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.2)
    except TimeoutError:
        print(f"timeout after {args.timeout:g} s; stopping the search", flush=True)
        return 124
    except KeyboardInterrupt:
        print("interrupted; stopping the search (rerun the same command to resume)", flush=True)
        return 130
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
