"""Does pretraining transfer? ResNet-20 pretrained on 8 CIFAR-10 classes, fine-tuned on the 2 it never saw.

Pretrain on airplane, automobile, bird, deer, frog, horse, ship, truck; then
train cat vs dog twice with the same recipe, steps and seed: once from the pretrained weights
(`init_from`, new 2-class head) and once from scratch; evaluate both on held-out cat/dog images
that neither run saw. Everything goes through the project's one training loop (`train.train`)
and `train.evaluate`.

Images come from `../shared/data/cifar10-train.tar.gz`, unpacked into a temporary folder, and are
split by file index so the sets are disjoint: pretraining uses the first `--pretrain-per-class`
images of each of the 8 classes; cat/dog training the first `--finetune-per-class`; the test set
the last `--test-per-class`. Subsets are folders of symlinks (`<root>/train/<class>/*.jpg`).

    nice -n 19 python scripts/transfer_benchmark.py --output transfer.json

Prints one JSON line per run and a summary; `--output` writes all of it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-train.tar.gz"
PRETRAIN_CLASSES = ("airplane", "automobile", "bird", "deer", "frog", "horse", "ship", "truck")
TARGET_CLASSES = ("cat", "dog")


def _link_subset(source: pathlib.Path, root: pathlib.Path, split: str, classes, files: slice) -> int:
    count = 0
    for name in classes:
        images = sorted((source / name).glob("*.jpg"))[files]
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            (folder / image.name).symlink_to(image)
        count += len(images)
    return count


def _unpack(archive: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    found = [p for p in into.rglob("train") if p.is_dir() and (p / "cat").is_dir()]
    if not found:
        raise SystemExit(f"{archive} has no train/<class> folders")
    return found[0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=pathlib.Path, default=ARCHIVE, help="CIFAR-10 JPEG archive.")
    parser.add_argument(
        "--data-root", type=pathlib.Path, help="An unpacked CIFAR-10 <root>/<class>/*.jpg folder instead of --archive."
    )
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--pretrain-per-class", type=int, default=500)
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--finetune-per-class", type=int, default=250)
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="Peak learning rate of the cat/dog runs.")
    parser.add_argument("--seeds", type=int, default=1, help="Fine-tune/scratch pairs with seeds 0..N-1.")
    parser.add_argument("--freeze", default="none")
    parser.add_argument("--bn-policy", default="train")
    parser.add_argument("--head-epochs", type=int, default=0)
    parser.add_argument("--backbone-lr-multiplier", type=float, default=1.0)
    parser.add_argument("--workdir", type=pathlib.Path, help="Keep runs here (default: a temporary folder).")
    parser.add_argument("--output", type=pathlib.Path, help="Write the results as JSON.")
    args = parser.parse_args(argv)

    from resnet_keras.config.schema import ModelConfig
    from resnet_keras.data.pipeline import DataConfig
    from resnet_keras.pretrained import finetune, resolve
    from resnet_keras.training.train import TrainConfig, evaluate, train

    if args.data_root is None and not args.archive.is_file():
        sys.exit(f"Error: the CIFAR-10 archive is missing: expected {args.archive} (see ../shared/data/README.md)")
    started = time.perf_counter()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="transfer-"))
    work = args.workdir or tmp
    try:
        source = args.data_root or _unpack(args.archive, tmp / "cifar10")
        pre_root, target_root = tmp / "pretrain8", tmp / "catdog"
        n_pre = _link_subset(source, pre_root, "train", PRETRAIN_CLASSES, slice(0, args.pretrain_per_class))
        n_ft = _link_subset(source, target_root, "train", TARGET_CLASSES, slice(0, args.finetune_per_class))
        n_test = _link_subset(source, target_root, "test", TARGET_CLASSES, slice(-args.test_per_class, None))
        results = dict(
            setup=dict(
                vars(args),
                pretrain_images=n_pre,
                finetune_images=n_ft,
                test_images=n_test,
                load_average=os.getloadavg()[0],
            ),
            runs=[],
        )
        results["setup"] = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in results["setup"].items()}
        log = lambda message: print(message, flush=True)  # noqa: E731

        model = ModelConfig(depth=args.depth, width=args.width, image_size=32, num_classes=len(PRETRAIN_CLASSES))
        pre_dir = work / "pretrain"
        t0 = time.perf_counter()
        pre = train(
            model,
            DataConfig(dataset="folder", data_dir=str(pre_root)),
            TrainConfig(
                recipe="short",
                epochs=args.pretrain_epochs,
                batch_size=args.batch_size,
                learning_rate=0.1 * args.batch_size / 128,
            ),
            pre_dir,
            overwrite=True,
            log=log,
        )
        results["pretrain"] = dict(val_accuracy=pre["final_val_accuracy"], seconds=round(time.perf_counter() - t0, 1))
        print(json.dumps({"run": "pretrain", **results["pretrain"]}), flush=True)

        target = DataConfig(dataset="folder", data_dir=str(target_root))
        for seed in range(args.seeds):
            for kind in ("scratch", "finetune"):
                common = dict(
                    recipe="short",
                    epochs=args.finetune_epochs,
                    batch_size=args.batch_size,
                    learning_rate=args.lr,
                    seed=seed,
                )
                if kind == "finetune":
                    init = resolve.normalize(str(pre_dir))
                    config = finetune.model_config_for(init, num_classes=len(TARGET_CLASSES))
                    train_config = TrainConfig(
                        **common,
                        init_from=init,
                        freeze=args.freeze,
                        bn_policy=args.bn_policy,
                        head_epochs=args.head_epochs,
                        backbone_lr_multiplier=args.backbone_lr_multiplier,
                    )
                else:
                    config = ModelConfig(
                        depth=args.depth, width=args.width, image_size=32, num_classes=len(TARGET_CLASSES)
                    )
                    train_config = TrainConfig(**common)
                run_dir = work / f"{kind}-seed{seed}"
                t0 = time.perf_counter()
                metrics = train(config, target, train_config, run_dir, overwrite=True, log=log)
                test = evaluate(run_dir, split="test", write=False)
                row = dict(
                    run=kind,
                    seed=seed,
                    test_accuracy=round(test["accuracy"], 4),
                    test_examples=test["examples"],
                    val_accuracy=metrics["final_val_accuracy"],
                    steps=metrics["epochs"] * metrics["steps_per_epoch"],
                    seconds=round(time.perf_counter() - t0, 1),
                )
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        mean = lambda kind: sum(r["test_accuracy"] for r in results["runs"] if r["run"] == kind) / args.seeds  # noqa: E731
        results["summary"] = dict(
            finetune_test_accuracy=round(mean("finetune"), 4),
            scratch_test_accuracy=round(mean("scratch"), 4),
            finetune_beats_scratch=all(
                f["test_accuracy"] > s["test_accuracy"]
                for f, s in zip(
                    [r for r in results["runs"] if r["run"] == "finetune"],
                    [r for r in results["runs"] if r["run"] == "scratch"],
                )
            ),
            wall_seconds=round(time.perf_counter() - started, 1),
            load_average_end=os.getloadavg()[0],
        )
        print(json.dumps({"summary": results["summary"]}), flush=True)
        if args.output:
            args.output.write_text(json.dumps(results, indent=2) + "\n")
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
