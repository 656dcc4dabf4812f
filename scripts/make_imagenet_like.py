"""Make an ImageNet-like JPEG folder from the shared CIFAR-10 archive, for input-pipeline measurements.

ImageNet's training JPEGs are about 400x350 pixels and 110 KB on average. Upscaling one 32x32
CIFAR image to that size gives a smooth picture that compresses to a fraction of those bytes and
decodes faster than a photograph would, so each image here is a mosaic of real CIFAR photos at
their own 32x32 resolution (edges and texture in every block): the sides are drawn from 300-500
px and the JPEG quality is 90. That gives about 70 KB per image: CIFAR's own JPEG re-encoding
has already smoothed it, so entropy decoding is somewhat cheaper than on ImageNet's 110 KB;
the inverse DCT, which costs per pixel, is the same. Labels cycle through 100 classes (they carry no meaning:
what is measured is reading, decoding and cropping).

    python scripts/make_imagenet_like.py --output /tmp/imagenet-like --images 10000

writes <output>/train/<class>/<n>.jpg (and --val images under <output>/validation/) and prints the
mean size in pixels and bytes. Generate into /tmp, never into the repository or the shared data.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train.tar.gz"
TILE = 32


def load_cifar(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """All 50,000 CIFAR-10 training images (uint8 [n, 32, 32, 3]) and their class indices."""
    from PIL import Image

    images, labels, classes = [], [], {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            name = member.name.split("/")[-2]
            classes.setdefault(name, len(classes))
            images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
            labels.append(classes[name])
    return np.stack(images), np.array(labels)


def make_one(args) -> tuple[int, int, int]:
    index, path, seed, images = args
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(300, 501, 2))
    rows, cols = -(-height // TILE), -(-width // TILE)
    picks = rng.integers(0, len(images), rows * cols)
    tiles = [images[i] if TILE == 32 else np.asarray(Image.fromarray(images[i]).resize((TILE, TILE))) for i in picks]
    grid = np.concatenate([np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    grid = grid[:height, :width]
    out = io.BytesIO()
    Image.fromarray(grid).save(out, format="JPEG", quality=90)
    Path(path).write_bytes(out.getvalue())
    return height, width, out.tell()


_IMAGES = None


def _init(archive):
    global _IMAGES
    _IMAGES, _ = load_cifar(Path(archive))


def _make(args):
    index, path, seed = args
    return make_one((index, path, seed, _IMAGES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--images", type=int, default=10_000, help="Training images (default 10,000).")
    parser.add_argument("--val", type=int, default=1_000, help="Validation images (default 1,000).")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.archive.is_file():
        sys.exit(f"Error: the CIFAR-10 archive is missing: expected {args.archive} (see ../shared/data/README.md)")

    jobs = []
    for split, count, offset in (("train", args.images, 0), ("validation", args.val, args.images)):
        for n in range(count):
            index = offset + n
            folder = args.output / split / f"class{index % args.classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((index, str(folder / f"{index:06d}.jpg"), args.seed))
    with ProcessPoolExecutor(args.processes, initializer=_init, initargs=(str(args.archive),)) as pool:
        sizes = np.array(list(pool.map(_make, jobs, chunksize=64)))
    print(
        f"wrote {len(jobs)} JPEGs under {args.output}: mean {sizes[:, 0].mean():.0f}x{sizes[:, 1].mean():.0f} px, "
        f"{sizes[:, 2].mean() / 1024:.0f} KB (ImageNet train: about 400x350, 110 KB)"
    )


if __name__ == "__main__":
    main()
