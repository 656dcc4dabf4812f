"""bfloat16 training speed next to PyTorch's, in one run: ours float32 and bfloat16, PyTorch autocast bf16.

Four contenders per model, each a long-lived worker process, timed in alternating rounds (the order
rotates every round) so load from other processes hits all of them alike:

* ``ours_fp32``: `resnet-keras train`'s step (`benchmark.TrainStepRunner`: forward, softmax
  cross-entropy + L2, SGD momentum 0.9, synthetic batches from `data.make_dataset`), float32;
* ``ours_bf16``: the same with ``--mixed-precision bfloat16`` (the `mixed_bfloat16` policy);
* ``torch_bf16``: PyTorch under ``torch.autocast("cpu", torch.bfloat16)``: forward, cross-entropy,
  backward, SGD momentum 0.9 (weight decay 1e-4), on a fixed random batch;
* ``torch_bf16_cl``: the same with the model and batch in ``torch.channels_last``.

Models: ``resnet50_v1.5`` (batch 16, 224 px; torchvision's resnet50 strides the 3x3 conv, v1.5) and
``resnet20`` (batch 128, 32 px; a PyTorch ResNet-20 with option A shortcuts, written below).
PyTorch runs in its own interpreter (``--torch-python``), never in this package's environment.

    python scripts/bf16_peers.py --torch-python /path/to/torch-venv/bin/python
    python scripts/bf16_peers.py --torch-python ... --models resnet20 --rounds 5 --steps 10

Prints one JSON line per measurement (contender, round, images/s of the median step, load average),
then one summary line per model with the medians over rounds and the ratios ours_bf16 / torch_bf16_cl
and ours_bf16 / ours_fp32 (each the median of the per-round ratios). Exits 2 with one line when the
PyTorch interpreter is missing or cannot import torch and torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"resnet50_v1.5": dict(batch=16, size=224, classes=1000), "resnet20": dict(batch=128, size=32, classes=10)}
CONTENDERS = ("ours_fp32", "ours_bf16", "torch_bf16", "torch_bf16_cl")
# ImageNet mean and std in 0..255 pixels: both sides normalise raw pixels inside the model.
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


# ----------------------------------------------------------------------------- workers


def _serve(step, batch: int) -> None:
    """The worker loop: after "ready", each stdin line "N" runs N timed steps and answers their seconds."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        steps = int(line)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        print(json.dumps({"times": times, "batch": batch}), flush=True)


def ours_worker(model: str, precision: str, warmup: int) -> None:
    """Our training step, exactly as `resnet-keras benchmark --mode train` times it."""
    import resnet_keras  # noqa: F401  sets TF_ENABLE_ONEDNN_OPTS before TensorFlow loads
    from resnet_keras.bench.benchmark import BenchmarkConfig, TrainStepRunner, data_config_for
    from resnet_keras.config.schema import ModelConfig

    spec = MODELS[model]
    model_config = ModelConfig.preset(model)
    bench = BenchmarkConfig(batch_size=spec["batch"], precision=precision)
    _, synthetic = data_config_for(bench, model_config.num_classes, spec["batch"])
    runner = TrainStepRunner(model_config, bench, spec["batch"], synthetic)
    for _ in range(warmup):
        runner.train()
    _serve(runner.train, spec["batch"])


def torch_resnet20(num_classes: int = 10):
    """He et al. 2015 sec. 4.2 ResNet-20 (option A shortcuts), as the paper run's PyTorch control
    trains it (scripts/torch_cifar_control.py, beside this script)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_cifar_control import resnet_cifar

    return resnet_cifar(20, num_classes)


def torch_worker(model: str, channels_last: bool, warmup: int) -> None:
    """PyTorch's training step under autocast bf16 (the recipe of PyTorch's CPU AMP docs)."""
    import torch
    import torchvision

    spec = MODELS[model]
    torch.manual_seed(0)
    net = torchvision.models.resnet50() if model == "resnet50_v1.5" else torch_resnet20(spec["classes"])
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    images = torch.rand(spec["batch"], 3, spec["size"], spec["size"]) * 255
    labels = torch.randint(0, spec["classes"], (spec["batch"],))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(net((images - mean) / std), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the step, as our step's host read does

    for _ in range(warmup):
        step()
    _serve(step, spec["batch"])


# ----------------------------------------------------------------------------- driver


def check_torch_python(path: str | None) -> str:
    """The PyTorch interpreter's path, or exit 2 with one line saying why it cannot be used."""
    found = path and (shutil.which(path) or (path if os.access(path, os.X_OK) else None))
    if not found:
        print(
            f"bf16_peers: PyTorch interpreter not found: --torch-python {path!r} "
            "(give a Python with torch and torchvision)",
            file=sys.stderr,
        )
        sys.exit(2)
    probe = subprocess.run(
        [found, "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"bf16_peers: {found} cannot import torch and torchvision: {tail}", file=sys.stderr)
        sys.exit(2)
    return found


class Worker:
    """One contender's process; `run(steps)` returns the seconds of each step."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._read()  # "ready": built and warmed up

    def _read(self) -> dict:
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} exited with code {self.process.wait()}")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, steps: int) -> list[float]:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return self._read()["times"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def worker_argv(contender: str, model: str, warmup: int, torch_python: str) -> list[str]:
    script = str(Path(__file__).resolve())
    common = ["--model", model, "--warmup", str(warmup)]
    if contender.startswith("ours"):
        precision = "bfloat16" if contender == "ours_bf16" else "none"
        return [sys.executable, script, "--worker", "ours", "--precision", precision, *common]
    layout = ["--channels-last"] if contender.endswith("_cl") else []
    return [torch_python, script, "--worker", "torch", *layout, *common]


def measure(model: str, args, torch_python: str) -> dict:
    spec = MODELS[model]
    workers = {c: Worker(c, worker_argv(c, model, args.warmup, torch_python)) for c in args.contenders}
    rates: dict[str, list[float]] = {c: [] for c in workers}
    try:
        for round_index in range(args.rounds):
            order = list(workers)
            shift = round_index % len(order)
            for contender in order[shift:] + order[:shift]:
                times = workers[contender].run(args.steps)
                rate = spec["batch"] / statistics.median(times)
                rates[contender].append(rate)
                row = dict(
                    model=model,
                    contender=contender,
                    round=round_index,
                    batch_size=spec["batch"],
                    image_size=spec["size"],
                    images_per_sec=round(rate, 2),
                    step_ms=[round(t * 1e3, 1) for t in times],
                    load_avg=[round(v, 2) for v in os.getloadavg()],
                )
                print(json.dumps(row), flush=True)
    finally:
        for worker in workers.values():
            worker.close()

    def ratio(a, b):
        if a not in rates or b not in rates:
            return None
        return round(statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True)), 3)

    return dict(
        summary=True,
        model=model,
        batch_size=spec["batch"],
        image_size=spec["size"],
        rounds=args.rounds,
        steps_per_round=args.steps,
        images_per_sec={c: round(statistics.median(r), 2) for c, r in rates.items()},
        images_per_sec_range={c: [round(min(r), 2), round(max(r), 2)] for c, r in rates.items()},
        ours_bf16_over_torch_bf16_cl=ratio("ours_bf16", "torch_bf16_cl"),
        ours_bf16_over_torch_bf16=ratio("ours_bf16", "torch_bf16"),
        ours_bf16_over_ours_fp32=ratio("ours_bf16", "ours_fp32"),
        load_avg=[round(v, 2) for v in os.getloadavg()],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON"), help="a Python with torch")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per model")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps when a worker starts")
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "ours":
        ours_worker(args.model, args.precision, args.warmup)
        return 0
    if args.worker == "torch":
        torch_worker(args.model, args.channels_last, args.warmup)
        return 0

    models = [m for m in args.models.split(",") if m]
    args.contenders = [c for c in args.contenders.split(",") if c]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(args.contenders) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown model or contender: {', '.join(unknown)}")
    needs_torch = any(c.startswith("torch") for c in args.contenders)
    torch_python = check_torch_python(args.torch_python) if needs_torch else ""
    for model in models:
        print(json.dumps(measure(model, args, torch_python)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
