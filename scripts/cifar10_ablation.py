"""Which training components earn their time within a budget: one CIFAR-10 run per arm, same budget.

Each arm is `scripts/cifar10_benchmark.py` with its defaults (the budget record's settings) and one
change: a component the record leaves off switched on, or one it uses switched off. Every arm fits
its epochs to the same training-time budget by its own calibration, so a component that slows the
step pays for itself in fewer epochs. Runs go one after another (never in parallel: they would
share the cores) and print one JSON line each, then a Markdown table against the first arm.

    python scripts/cifar10_ablation.py                          # every arm at the full 1,409 s budget
    python scripts/cifar10_ablation.py --budget-seconds 352 --arms baseline ema se
    python scripts/cifar10_ablation.py --list                   # the arms and their flags
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Relative to the defaults of cifar10_benchmark.py; "baseline" must come first.
ARMS: dict[str, list[str]] = {
    "baseline": [],
    # Settings the record uses, each switched back:
    "no EMA": ["--ema-decay", "0"],
    "batch 128": ["--batch-size", "128"],
    "float32": ["--mixed-precision", "none"],
    "no label smoothing": ["--label-smoothing", "0"],
    "crops of 32 (no FixRes)": ["--train-image-size", "32"],
    "random flips (not alternating)": ["--flip", "random"],
    # A schedule, an architecture option or a component the record leaves out, each switched on:
    "linear decay (short_linear)": ["--recipe", "short_linear"],
    "SE 1/4": ["--se-ratio", "0.25"],
    "drop path 0.05": ["--drop-path", "0.05"],
    "TrivialAugment": ["--auto-augment", "ta_wide"],
    "mixup 0.2 + CutMix 1.0": ["--mixup", "0.2", "--cutmix", "1.0"],
    "random erasing 0.25": ["--random-erasing", "0.25"],
    "AdamW": ["--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.05"],
    "ResNet-D shortcuts (B, avg-down)": ["--shortcut", "B", "--avg-down"],
    "ResNet-32": ["--preset", "resnet32"],
}


def arm_key(name: str) -> str:
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name.lower())).strip("-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=None, help="default: cifar10_benchmark.py's")
    parser.add_argument("--arms", nargs="+", default=None, help="arm names or keys (default: all); see --list")
    parser.add_argument("--out-dir", default=None, help="where each arm's JSON summary and log go")
    parser.add_argument("--list", action="store_true")
    args, extra = parser.parse_known_args(argv)  # anything else goes to every arm (e.g. --seed 1)

    by_key = {arm_key(name): name for name in ARMS}
    if args.list:
        for name, flags in ARMS.items():
            print(f"{arm_key(name):28s} {' '.join(flags) or '(the defaults)'}")
        return 0
    chosen = list(ARMS)
    if args.arms:
        unknown = [a for a in args.arms if a not in ARMS and a not in by_key]
        if unknown:
            sys.exit(f"Error: unknown arm(s) {', '.join(unknown)}; expected some of {', '.join(by_key)}")
        chosen = [by_key.get(a, a) for a in args.arms]
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="cifar10-ablation-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = ["--budget-seconds", str(args.budget_seconds)] if args.budget_seconds else []
    results = {}
    for name in chosen:
        key = arm_key(name)
        summary_path = out_dir / f"{key}.json"
        if not summary_path.exists():  # a rerun keeps finished arms
            command = [sys.executable, str(HERE / "cifar10_benchmark.py"), *ARMS[name], *budget, *extra]
            command += ["--json-out", str(summary_path)]
            with open(out_dir / f"{key}.log", "w") as log:
                code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
            if code:
                sys.exit(f"Error: arm {name!r} failed with exit code {code}; see {out_dir / (key + '.log')}")
        summary = json.loads(summary_path.read_text())
        results[name] = summary
        print(json.dumps(dict(kind="arm", arm=name, **{k: summary[k] for k in REPORTED})), flush=True)
    print(table(results))
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


REPORTED = ("epochs", "train_seconds", "val_accuracy_within_budget", "final_val_accuracy_tta", "images_per_second")


def table(results: dict[str, dict]) -> str:
    names = list(results)
    base = results[names[0]]["val_accuracy_within_budget"] or 0.0
    lines = [
        "| arm | epochs in budget | training s | images/s | val top-1 | vs baseline | with TTA (shifts) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = results[name]
        accuracy = r["val_accuracy_within_budget"]
        shown = "-" if accuracy is None else f"{100 * accuracy:.2f} %"
        delta = "" if accuracy is None or name == names[0] else f"{100 * (accuracy - base):+.2f}"
        tta = r.get("final_val_accuracy_tta") if r.get("final_within_budget") else None
        lines.append(
            f"| {name} | {r['epochs']} | {r['train_seconds']:.0f} | {r['images_per_second']:.0f} | {shown} | {delta} | "
            + ("-" if tta is None else f"{100 * tta:.2f} %")
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
