"""Reference outputs of torchvision and timm ResNets, for the PyTorch-weights import tests.

Needs PyTorch, torchvision and timm (never installed in CI), e.g. in a separate venv:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm numpy
    PYTHONPATH=$PWD /tmp/torchenv/bin/python scripts/make_torch_fixtures.py

For each architecture it builds the model in its own framework, fills every parameter and BN
statistic from `resnet_keras.pretrained.state_dicts.seeded_state_dict` (numpy only, so the tests make the
same state dict without PyTorch: no weights file is committed), runs two seeded 64x64 images
through it in eval mode with the hub's own normalisation, and writes tests/fixtures/torch/<hub>_<arch>.npz:
the state dict's keys and shapes, a checksum of the weights and images, the logits and the
globally pooled output of each stage (layer1..layer4 = our conv2..conv5). A few kilobytes each.

It also writes the key shapes of timm variants our zoo lacks (ResNet-D, SE-ResNet), a pickled
whole model (not weights-only), and checks our weight-set registry against torchvision's enums.

For the torch-free `.pth` reader it writes `state_dict_mixed.pth` (torch.save's own archive of a
few layers: float32/float16/bfloat16/int64/uint16/bool tensors, a Parameter, a transposed view,
a slice sharing its storage at an offset, a 0-d `num_batches_tracked`, an empty tensor) with the
arrays PyTorch holds in `state_dict_mixed.npz`, `legacy_format.pth` (PyTorch's pre-1.6
format, which still needs PyTorch), and `<hub>_<arch>.pth-skeleton.zip` for a torchvision ResNet-18 and
a timm ResNet-50: torch.save's archive of the seeded state dict with every member but the storages
(data.pkl, byteorder, version, ...: a few KB) and which key each storage holds; the tests put the
seeded storages back and so read a real torch.save ResNet file without PyTorch or 45 MB in git.
Full-size torchvision/timm `.pth` files are 45-230 MB, too big to commit: `--pth-dir DIR` writes
seeded ResNet-18 (torchvision, timm), ResNet-50 and ResNet-152 state dicts there with torch.save
(scripts/pth_read_benchmark.py reads these; tests/test_torch_weights.py makes its own where PyTorch
is installed).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision

from resnet_keras.pretrained import registry as weight_sets
from resnet_keras.pretrained.state_dicts import seeded_state_dict

SEED = 2016
SIZE = 64
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "torch"
MODELS = [("torchvision", f"resnet{d}") for d in (18, 34, 50, 101, 152)] + [("timm", "resnet18"), ("timm", "resnet50")]
VARIANTS = ["resnet50d", "seresnet50"]
SKELETONS = [("torchvision", "resnet18"), ("timm", "resnet50")]


def seeded_images(seed: int) -> np.ndarray:
    """Two raw RGB 0-255 images [2, SIZE, SIZE, 3], float32 (the tests make the same ones)."""
    return np.random.default_rng(seed).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)


def checksum(state: dict[str, np.ndarray], images: np.ndarray) -> float:
    return float(sum(np.abs(v.astype(np.float64)).sum() for v in state.values()) + images.sum())


def build(hub: str, arch: str) -> torch.nn.Module:
    return getattr(torchvision.models, arch)() if hub == "torchvision" else timm.create_model(arch)


def reference(hub: str, arch: str) -> dict[str, np.ndarray]:
    model = build(hub, arch).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = seeded_state_dict(shapes, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    images = seeded_images(SEED)
    mean = np.array(weight_sets.IMAGENET_MEAN, np.float32) / 255.0
    std = np.array(weight_sets.IMAGENET_STD, np.float32) / 255.0
    assert np.allclose(mean, (0.485, 0.456, 0.406)) and np.allclose(std, (0.229, 0.224, 0.225))
    x = torch.from_numpy(((images / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2))
    stages = {}
    for index in range(1, 5):
        getattr(model, f"layer{index}").register_forward_hook(
            lambda _m, _i, out, name=f"conv{index + 1}": stages.__setitem__(name, out.mean(dim=(2, 3)).numpy())
        )
    with torch.no_grad():
        logits = model(x).numpy()
    return dict(
        keys=np.array(list(shapes)),
        shapes=np.array(json.dumps([list(s) for s in shapes.values()])),
        seed=np.array(SEED),
        checksum=np.array(checksum(state, images)),
        logits=logits,
        **stages,
    )


def check_registry() -> None:
    """Our registry's torchvision files, URLs and accuracies are torchvision's own."""
    for weight_set in weight_sets.REGISTRY.values():
        if weight_set.hub == "keras-hub":  # timm's weights, converted: the same published accuracy
            timm_name = f"resnet{weight_set.depth}.a1_in1k" if "_v2_" not in weight_set.tag else None
            if timm_name:
                timm_set = weight_sets.REGISTRY[f"timm:{timm_name}"]
                assert (weight_set.top1, weight_set.top5) == (timm_set.top1, timm_set.top5), weight_set.name
            continue
        if weight_set.hub == "timm":
            cfg = timm.models.get_pretrained_cfg(f"{weight_set.arch}.{weight_set.tag}")
            assert cfg is not None and cfg.hf_hub_id == f"timm/{weight_set.arch}.{weight_set.tag}", weight_set.name
            continue
        enum = getattr(torchvision.models, f"ResNet{weight_set.depth}_Weights")
        published = enum[weight_set.tag]
        metrics = published.meta["_metrics"]["ImageNet-1K"]
        assert published.url == weight_set.url, (published.url, weight_set.url)
        assert math.isclose(metrics["acc@1"], weight_set.top1) and math.isclose(metrics["acc@5"], weight_set.top5)
        assert published.transforms().resize_size == [weight_set.resize], weight_set.name
        assert (enum.DEFAULT == published) == weight_set.default, weight_set.name


class NotWeights(torch.nn.Module):
    """A tiny module pickled whole: loading it would import (and could run) this class's code."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)


def mixed_state_dict() -> dict[str, torch.Tensor]:
    """Tensors of every dtype and layout a state dict's pickle can hold, seeded (see the docstring)."""
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn(4, 3, 3, 3, generator=generator)
    table = torch.randn(6, 5, generator=generator)
    return {
        "conv1.weight": torch.nn.Parameter(weight),  # _rebuild_parameter around _rebuild_tensor_v2
        "bn1.weight": torch.rand(4, generator=generator) + 0.5,
        "bn1.running_mean": torch.randn(4, generator=generator).half(),  # HalfStorage
        "bn1.running_var": (torch.rand(4, generator=generator) + 0.5).bfloat16(),  # BFloat16Storage
        "bn1.num_batches_tracked": torch.tensor(7, dtype=torch.int64),  # a 0-d LongStorage
        "fc.weight": table.t(),  # a transposed view: strides (1, 5)
        "fc.bias": table[2],  # row 2 of the same storage: offset 10, shares the FloatStorage
        "fc.rows": table[1:4, ::2],  # offset 5, strides (5, 2)
        "double": torch.randn(3, generator=generator, dtype=torch.float64),
        "int32": torch.tensor([-2, 0, 2**31 - 1], dtype=torch.int32),
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),  # _rebuild_tensor_v3
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


def write_pth_fixtures(output: Path) -> None:
    state = mixed_state_dict()
    torch.save(state, output / "state_dict_mixed.pth")
    half = (torch.float16, torch.bfloat16)  # the reader widens these to float32, keeps every other dtype
    arrays = {k: (v.detach().float() if v.dtype in half else v.detach()).numpy() for k, v in state.items()}
    np.savez(output / "state_dict_mixed.npz", **arrays)
    legacy = {"conv1.weight": state["conv1.weight"].detach().clone(), "bn1.running_var": state["bn1.running_var"]}
    torch.save(legacy, output / "legacy_format.pth", _use_new_zipfile_serialization=False)
    names = ["state_dict_mixed.pth", "state_dict_mixed.npz", "legacy_format.pth"]
    for hub, arch in SKELETONS:
        names.append(write_skeleton(hub, arch, output))
    for name in names:
        print(f"wrote {output / name} ({(output / name).stat().st_size / 1024:.1f} KiB)")


def write_skeleton(hub: str, arch: str, output: Path) -> str:
    """torch.save's archive of a seeded real state dict without its storages (the tests write those
    from seeded_state_dict), and which state-dict key each storage `data/<k>` holds."""
    import tempfile
    import zipfile

    model = build(hub, arch)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    seeded = seeded_state_dict(shapes, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in seeded.items()}, strict=True)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{hub}_{arch}.pth"
        torch.save(model.state_dict(), path)
        name = f"{hub}_{arch}.pth-skeleton.zip"
        with zipfile.ZipFile(path) as archive, zipfile.ZipFile(output / name, "w", zipfile.ZIP_DEFLATED) as skeleton:
            storages = {}
            for info in archive.infolist():
                folder, _, key = info.filename.rpartition("/")
                if folder.endswith("/data"):
                    data = archive.read(info)
                    owner = next(k for k, v in seeded.items() if v.tobytes() == data and k not in storages.values())
                    storages[key] = owner
                else:
                    skeleton.writestr(info.filename, archive.read(info))
            assert sorted(storages.values()) == sorted(seeded), "a storage shared by two tensors"
            skeleton.writestr("storages.json", json.dumps(storages))
    return name


def write_full_pth(directory: Path) -> None:
    """Seeded full-size state dicts as torch.save writes them (not committed: 45-230 MB each)."""
    directory.mkdir(parents=True, exist_ok=True)
    for hub, arch in [
        ("torchvision", "resnet18"),
        ("timm", "resnet18"),
        ("torchvision", "resnet50"),
        ("torchvision", "resnet152"),
    ]:
        model = build(hub, arch)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        state = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, SEED).items()}
        model.load_state_dict(state, strict=True)
        path = directory / f"{hub}_{arch}.pth"
        torch.save(model.state_dict(), path)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")


VIEW_IMAGES = REPO / "tests" / "fixtures" / "views"
# (name, rows, cols) of CIFAR-10 mosaics: real photos at sizes that make the resize shrink a landscape and
# a portrait image to odd margins (the crop offsets' rounding), plus one 32x32 image that is enlarged.
VIEW_MOSAICS = (("landscape", 8, 11), ("portrait", 13, 7), ("single", 1, 1))


def write_view_fixtures(output: Path = VIEW_IMAGES) -> None:
    """Real images and what torchvision's `weights.transforms()` and timm's eval transform make of them.

    The images are mosaics of cifar10-mini training photos (JPEG, written once here). For
    torchvision's ResNet50 IMAGENET1K_V1 and V2 transforms and timm's resnet50.a1_in1k eval transform
    it stores every other row and column of the crops as uint8 [n, 112, 112, 3]: the transforms
    normalise a PIL uint8 crop, so (x * std + mean) * 255 gives its pixels back exactly (checked
    here), and the test compares our view against them in pixel units. About 300 KB.
    """
    import timm
    import torchvision
    from PIL import Image

    output.mkdir(parents=True, exist_ok=True)
    source = sorted((REPO / "tests" / "fixtures" / "cifar10-mini" / "train").glob("*/*.jpg"))
    paths, start = [], 0
    for name, rows, cols in VIEW_MOSAICS:
        tiles = [np.asarray(Image.open(f).convert("RGB")) for f in source[start : start + rows * cols]]
        start += rows * cols
        mosaic = np.concatenate([np.concatenate(tiles[r * cols : (r + 1) * cols], 1) for r in range(rows)], 0)
        path = output / f"{name}.jpg"
        Image.fromarray(mosaic).save(path, quality=95)
        paths.append(path)
    weights = torchvision.models.ResNet50_Weights
    model = timm.create_model("resnet50.a1_in1k", pretrained=False)
    config = timm.data.resolve_data_config({}, model=model)
    transforms = {
        "torchvision:resnet50.IMAGENET1K_V1": weights.IMAGENET1K_V1.transforms(),
        "torchvision:resnet50.IMAGENET1K_V2": weights.IMAGENET1K_V2.transforms(),
        "timm:resnet50.a1_in1k": timm.data.create_transform(**config),
    }
    arrays = {"files": np.array([p.name for p in paths])}
    for name, transform in transforms.items():
        mean, std = np.array(config["mean"]), np.array(config["std"])  # ImageNet's, for all three
        crops = []
        for path in paths:
            tensor = transform(Image.open(path).convert("RGB")).numpy().transpose(1, 2, 0)
            pixels = (tensor * std + mean) * 255
            assert np.abs(pixels - np.round(pixels)).max() < 1e-3, (name, np.abs(pixels - np.round(pixels)).max())
            crops.append(np.round(pixels).astype(np.uint8))
        arrays[name] = np.stack(crops)[:, ::2, ::2]  # every other row and column: a quarter of the bytes
        print(f"{name}: {transform}".replace("\n", " "))
    np.savez_compressed(output / "torch_views.npz", **arrays)
    print(f"wrote {output / 'torch_views.npz'} and {len(paths)} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--pth-dir", type=Path, help="also write full-size seeded .pth files here (not committed)")
    parser.add_argument("--pth-only", action="store_true", help="write only the .pth fixtures (and --pth-dir)")
    parser.add_argument("--views-only", action="store_true", help="write only tests/fixtures/views (eval views)")
    args = parser.parse_args()
    if args.views_only:
        write_view_fixtures()
        return
    if args.pth_only:
        args.output.mkdir(parents=True, exist_ok=True)
        write_pth_fixtures(args.output)
        if args.pth_dir:
            write_full_pth(args.pth_dir)
        return
    args.output.mkdir(parents=True, exist_ok=True)
    check_registry()
    torch.manual_seed(0)
    for hub, arch in MODELS:
        path = args.output / f"{hub}_{arch}.npz"
        np.savez_compressed(path, **reference(hub, arch))
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    variants = {arch: {k: list(v.shape) for k, v in timm.create_model(arch).state_dict().items()} for arch in VARIANTS}
    (args.output / "timm_variants.json").write_text(json.dumps(variants, separators=(",", ":")))
    torch.save(NotWeights(), args.output / "not_weights_only.pth")
    print(f"wrote {args.output / 'timm_variants.json'} and {args.output / 'not_weights_only.pth'}")
    write_pth_fixtures(args.output)
    if args.pth_dir:
        write_full_pth(args.pth_dir)


if __name__ == "__main__":
    main()
