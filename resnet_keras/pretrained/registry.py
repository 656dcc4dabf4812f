"""Every named pretrained weight set, as plain data: no I/O (`download` finds the files).

One name works everywhere (`convert`, `train --init-from`, `export-features`,
`create_model(..., weights=...)`): `HUB:ARCH.TAG`, e.g. `torchvision:resnet50.IMAGENET1K_V2`
or `timm:resnet50.a1_in1k`. With the architecture known from elsewhere (`create_model("resnet50",
...)`, `--depth 50`) the tag alone does: `torchvision:IMAGENET1K_V2`, `torchvision:DEFAULT`.

keras.applications' weights are named without a hub: `resnet50`, `resnet101v2`, or `imagenet`.

Our own weights, installed with the package (`shipped`), are hub `resnet-keras`:
`resnet-keras:resnet20.cifar10`, or their tag alone, `cifar10` (`create_model("resnet20", weights="cifar10")`).

This module imports neither TensorFlow nor PyTorch: `resnet-keras info --weights` is instant.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

from resnet_keras.config.schema import IMAGENET_MEAN, IMAGENET_STD, EvalView
from resnet_keras.core.errors import UsageError

HUBS = ("torchvision", "timm", "keras-hub", "resnet-keras")
OURS = "resnet-keras"
IMAGENET_VAL = "ImageNet-1K val"
TORCHVISION_URL = "https://download.pytorch.org/models/"
HF_URL = "https://huggingface.co/"
# torchvision's recipes (its docs: references/classification) and timm's results table
# (results/results-imagenet.csv in pytorch-image-models) are where the accuracies below come from.
TORCHVISION_SOURCE = "torchvision.models.ResNet*_Weights (acc@1 on ImageNet-1K val)"
TIMM_SOURCE = "timm results-imagenet.csv (ImageNet-1K val)"


@dataclasses.dataclass(frozen=True)
class WeightSet:
    """One published set of ResNet weights and the facts that travel with it.

    `top1`/`top5` are the publisher's accuracy (%) on `evaluated_on` (ImageNet-1K val) at `eval_size` pixels
    after resizing the short side to `resize` (torchvision) or cropping `crop_pct` of the image
    (timm); `mean`/`std` (0-255 pixel units) go into the model's `normalize` layer, so the model
    takes raw RGB 0-255. `unsupported` says why our zoo cannot hold the architecture (None: it can).
    """

    hub: str
    arch: str
    tag: str
    file: str
    url: str
    top1: float
    top5: float
    eval_size: int
    resize: int | None = None
    crop_pct: float | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source: str = ""
    default: bool = False
    unsupported: str | None = None
    evaluated_on: str = IMAGENET_VAL

    @property
    def name(self) -> str:
        if self.hub == "keras-hub":  # keras-hub names presets, not architectures
            return f"{self.hub}:{self.tag}"
        return f"{self.hub}:{self.arch}.{self.tag}"

    @property
    def eval_view(self) -> EvalView:
        """The publisher's evaluation view: torchvision's Resize(resize) + CenterCrop(eval_size), or
        timm's crop_pct (both with torchvision's transforms on PIL images)."""
        if self.hub == OURS:  # trained with our own view, which the set's card records
            return EvalView()
        fraction = self.eval_size / self.resize if self.resize else self.crop_pct or 0.875
        return EvalView(fraction, self.interpolation, "torchvision")

    @property
    def depth(self) -> int | None:
        match = re.fullmatch(r"resnet(\d+)", self.arch)
        return int(match.group(1)) if match else None


def _torchvision(depth, tag, file, top1, top5, *, default=False):
    resize = 232 if tag == "IMAGENET1K_V2" else 256
    return WeightSet(
        "torchvision",
        f"resnet{depth}",
        tag,
        file,
        TORCHVISION_URL + file,
        top1,
        top5,
        224,
        resize=resize,
        source=TORCHVISION_SOURCE,
        default=default,
    )


def _timm(arch, tag, top1, top5, eval_size, crop_pct, *, default=False, unsupported=None):
    return WeightSet(
        "timm",
        arch,
        tag,
        "model.safetensors",
        f"{HF_URL}timm/{arch}.{tag}",
        top1,
        top5,
        eval_size,
        crop_pct=crop_pct,
        interpolation="bicubic",
        source=TIMM_SOURCE,
        default=default,
        unsupported=unsupported,
    )


def _keras_hub(depth, preset, timm_top1, timm_top5, *, unsupported=None, family="resnetv1"):
    handle = f"keras/{family}/keras/{preset}/3"
    return WeightSet(
        "keras-hub",
        f"resnet{depth}",
        preset,
        handle,
        f"kaggle://{handle}",
        timm_top1,
        timm_top5,
        224,
        crop_pct=0.95,
        interpolation="bicubic",
        source="keras-hub converts timm's weights (tools/checkpoint_conversion/convert_resnet_checkpoints.py)",
        unsupported=unsupported,
    )


def _ours(depth, tag, top1, top5, evaluated_on, source):
    file = f"resnet{depth}-{tag}.weights.h5"
    return WeightSet(
        OURS,
        f"resnet{depth}",
        tag,
        file,
        f"package:resnet_keras/pretrained/weights/{file}",
        top1,
        top5,
        32,
        source=source,
        default=True,
        evaluated_on=evaluated_on,
    )


_RESNET_D = "ResNet-D (deep 3x3 stem, average-pool shortcut) is not in our zoo yet"
_KERAS_HUB_V2 = (
    "keras-hub's ResNetV2 pads its first max pool with -inf where our v2 stem pads with zeros, so it is not exact"
)
CIFAR10_VAL = (
    "CIFAR-10: the 5,000 training images `--validation-fraction 0.1` holds out (as JPEGs, ../shared/data), "
    "never trained on; the epoch (96 of 182) was chosen on them, so the score is optimistic: the last "
    "epoch scored 86.62 %"
)
PAPER_RUN = (
    "resnet-keras train --preset resnet20 --recipe paper --dataset folder --data-dir cifar10 "
    "--validation-fraction 0.1 (docs/benchmarks.md)"
)
_SE = "SE-ResNet (squeeze-and-excitation blocks) is not in our zoo yet"
# torchvision 0.29's ResNet*_Weights enums (checked by scripts/make_torch_fixtures.py) and timm's
# results-imagenet.csv. timm's A1 weights are evaluated at 288 pixels too (a few tenths higher);
# the rows here are at their 224-pixel test size, comparable with torchvision's.
REGISTRY: dict[str, WeightSet] = {
    w.name: w
    for w in (
        _torchvision(18, "IMAGENET1K_V1", "resnet18-f37072fd.pth", 69.758, 89.078, default=True),
        _torchvision(34, "IMAGENET1K_V1", "resnet34-b627a593.pth", 73.314, 91.420, default=True),
        _torchvision(50, "IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.130, 92.862),
        _torchvision(50, "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 80.858, 95.434, default=True),
        _torchvision(101, "IMAGENET1K_V1", "resnet101-63fe2227.pth", 77.374, 93.546),
        _torchvision(101, "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 81.886, 95.780, default=True),
        _torchvision(152, "IMAGENET1K_V1", "resnet152-394f9c45.pth", 78.312, 94.046),
        _torchvision(152, "IMAGENET1K_V2", "resnet152-f82ba261.pth", 82.284, 96.002, default=True),
        _timm("resnet18", "a1_in1k", 71.504, 90.086, 224, 0.95, default=True),
        _timm("resnet34", "a1_in1k", 76.420, 92.896, 224, 0.95, default=True),
        _timm("resnet50", "a1_in1k", 80.382, 94.598, 224, 0.95, default=True),
        _timm("resnet50", "a1h_in1k", 80.654, 95.312, 224, 1.0),
        _timm("resnet101", "a1_in1k", 81.494, 95.164, 224, 0.95, default=True),
        _timm("resnet101", "a1h_in1k", 81.950, 95.760, 224, 0.95),
        _timm("resnet152", "a1_in1k", 81.998, 95.294, 224, 0.95, default=True),
        _timm("resnet152", "a1h_in1k", 82.818, 96.124, 224, 0.95),
        _timm("resnet50d", "ra2_in1k", 80.546, 95.160, 224, 0.875, unsupported=_RESNET_D),
        _timm("seresnet50", "ra2_in1k", 80.260, 95.068, 224, 0.875, unsupported=_SE),
        # keras-hub's ResNet presets are timm's resnet*.a1_in1k (v1) and resnetv2_*.a1h_in1k weights.
        _keras_hub(18, "resnet_18_imagenet", 71.504, 90.086),
        _keras_hub(50, "resnet_50_imagenet", 80.382, 94.598),
        _keras_hub(101, "resnet_101_imagenet", 81.494, 95.164),
        _keras_hub(152, "resnet_152_imagenet", 81.998, 95.294),
        _keras_hub(50, "resnet_v2_50_imagenet", 80.410, 95.082, unsupported=_KERAS_HUB_V2, family="resnetv2"),
        _keras_hub(101, "resnet_v2_101_imagenet", 82.042, 95.866, unsupported=_KERAS_HUB_V2, family="resnetv2"),
        # Ours, installed with the package: scripts/ship_weights.py measured these on the held-out images
        # `evaluated_on` names (tests/test_shipped.py scores them again); docs/benchmarks.md has the run.
        _ours(20, "cifar10", 87.38, 99.30, CIFAR10_VAL, PAPER_RUN),
    )
}
SHIPPED_TAGS = tuple(sorted({w.tag for w in REGISTRY.values() if w.hub == OURS}))


def is_shipped_tag(text: str) -> bool:
    """`cifar10`: the tag of a weight set installed with the package, named without its hub."""
    return isinstance(text, str) and text in SHIPPED_TAGS


def is_weight_name(text: str) -> bool:
    """True for `torchvision:...` / `timm:...` (names, never file paths)."""
    return isinstance(text, str) and text.split(":", 1)[0] in HUBS and ":" in text


def lookup(name: str, *, depth: int | None = None) -> WeightSet:
    """The WeightSet of `name` (see the module docstring); `depth` completes a tag-only name.

    A timm name that is not registered but names a plain ResNet (`timm:resnet50.fb_ssl_...`)
    is accepted with unknown accuracy: the file decides whether it fits.
    """
    if not is_weight_name(name):
        raise UsageError(f"Received: weights={name!r}; expected HUB:ARCH.TAG with HUB one of {', '.join(HUBS)}")
    hub, rest = name.split(":", 1)
    if hub == "keras-hub":
        found = REGISTRY.get(name)
        if found is None or (depth is not None and found.depth != depth):
            presets = ", ".join(w.tag for w in REGISTRY.values() if w.hub == hub and not w.unsupported)
            wanted = f" for resnet{depth}" if depth is not None else ""
            raise UsageError(f"Received: weights={name!r}; expected a keras-hub ResNet preset{wanted}: {presets}")
        return found
    named = "." in rest or re.fullmatch(r"[a-z]*resnet\d+[a-z]*", rest)
    arch, _, tag = rest.partition(".") if named else ("", "", rest)
    if not arch and depth is None and hub == OURS:  # our tags name one set each
        found = [w for w in REGISTRY.values() if w.hub == hub and w.tag == tag and w.default]
        if found:
            return found[0]
    if not arch:
        if depth is None:
            raise UsageError(
                f"Received: weights={name!r}, a tag without an architecture; name one "
                f"({hub}:resnet50.{rest}) or give the depth"
            )
        arch = f"resnet{depth}"
    elif depth is not None and arch != f"resnet{depth}":
        raise UsageError(f"Received: weights={name!r} for {arch}; expected weights for resnet{depth}")
    candidates = [w for w in REGISTRY.values() if w.hub == hub and w.arch == arch]
    if tag in ("", "DEFAULT"):
        defaults = [w for w in candidates if w.default]
        if defaults:
            return defaults[0]
    for weight_set in candidates:
        if weight_set.tag == tag:
            return weight_set
    if hub == "timm" and tag and re.fullmatch(r"resnet(18|34|50|101|152)", arch):
        return _timm(arch, tag, float("nan"), float("nan"), 224, None)
    known = ", ".join(w.name for w in REGISTRY.values() if w.hub == hub and not w.unsupported)
    raise UsageError(f"Received: weights={name!r}, which is not a known weight set; known: {known}")


class KerasApp(NamedTuple):
    """A keras.applications ResNet: our (depth, variant), its constructor, its published accuracy."""

    depth: int
    variant: str
    constructor: str
    top1: float
    top5: float


# keras.applications' own ImageNet weights, named without a hub prefix (`resnet50`, `resnet50v2`;
# `imagenet` picks the one of a run's depth and variant); accuracy from the table of
# keras.io/api/applications. v1 is the paper's layout (converted from Caffe), v2 Keras' own.
KERAS_APPLICATIONS = {
    "resnet50": KerasApp(50, "v1", "ResNet50", 74.9, 92.1),
    "resnet101": KerasApp(101, "v1", "ResNet101", 76.4, 92.8),
    "resnet152": KerasApp(152, "v1", "ResNet152", 76.6, 93.1),
    "resnet50v2": KerasApp(50, "v2", "ResNet50V2", 76.0, 93.0),
    "resnet101v2": KerasApp(101, "v2", "ResNet101V2", 77.2, 93.8),
    "resnet152v2": KerasApp(152, "v2", "ResNet152V2", 78.0, 94.2),
}


def is_keras_app_name(text: str) -> bool:
    """`imagenet` or a keras.applications name (`resnet50`, `ResNet50V2`, `resnet_101`)."""
    return isinstance(text, str) and (text == "imagenet" or text.lower().replace("_", "") in KERAS_APPLICATIONS)


def rows() -> list[dict]:
    """The registry, then keras.applications' sets, as rows for `resnet-keras info --weights`."""
    result = []
    for w in REGISTRY.values():
        if w.hub == OURS:
            view = f"the whole {w.eval_size}x{w.eval_size} image"
        elif w.resize:
            view = f"resize {w.resize}, crop {w.eval_size}"
        else:
            view = f"crop {w.crop_pct:g} at {w.eval_size}"
        ours = f"resnet{w.depth}" + ("_v1.5" if w.depth and w.depth >= 50 else "")
        note = w.unsupported or ("timm's a1_in1k weights, converted by keras-hub" if w.hub == "keras-hub" else "")
        if w.hub == OURS:
            note = f"installed with the package; accuracy on {w.evaluated_on}"
        result.append(
            {
                "name": w.name,
                "architecture": "-" if w.unsupported else ours,
                "top1": w.top1,
                "top5": w.top5,
                "eval": f"{view}, {w.interpolation}",
                "default": w.default,
                "supported": w.unsupported is None,
                "note": note,
                "file": w.file,
                "url": w.url,
                "source": w.source,
            }
        )
    for app, (_, _, _, top1, top5) in KERAS_APPLICATIONS.items():
        v2 = app.endswith("v2")
        result.append(
            {
                "name": app,
                "architecture": app[: -len("v2")] + "_v2 (keras layout)" if v2 else app,
                "top1": top1,
                "top5": top5,
                "eval": "224",
                "default": False,
                "supported": True,
                "note": "keras.applications, converted from Caffe" if not v2 else "keras.applications",
                "file": f"{app}_weights_tf_dim_ordering_tf_kernels.h5",
                "url": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
                "source": "keras.io/api/applications (ImageNet val)",
            }
        )
    return result
