"""The depth table: which block, how many, how wide and at which stride, per stage.

He et al. 2015, Table 1 (ImageNet: conv2_x..conv5_x) and section 4.2 (CIFAR-10:
three stages of n blocks on 32/16/8 maps with 16/32/64 filters, 6n+2 layers).
Everything that differs between depths is data here; the builders in
`models.py` read it and contain no per-depth code.
"""

from __future__ import annotations

import dataclasses
import math

from resnet_keras.core.errors import ConfigError

FAMILIES = ("cifar", "imagenet")
VARIANTS = ("v1", "v1.5", "v2")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: `blocks` residual blocks of kind `block`.

    `filters` is the block's inner width (a bottleneck outputs `4 * filters`);
    `stride` applies to the stage's first block only.
    """

    block: str
    filters: int
    blocks: int
    stride: int


# Paper Table 1: block kind and blocks per stage for conv2_x..conv5_x.
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_FILTERS = (64, 128, 256, 512)
IMAGENET_STRIDES = (1, 2, 2, 2)
IMAGENET_STEM_FILTERS = 64

# Paper section 4.2: n blocks per stage, 6n+2 weighted layers.
CIFAR_FILTERS = (16, 32, 64)
CIFAR_STRIDES = (1, 2, 2)
CIFAR_STEM_FILTERS = 16
CIFAR_PRESET_DEPTHS = (20, 32, 44, 56, 110, 1202)


# The paper's deepest net is ResNet-1202 (and worse than ResNet-110); far deeper ones take minutes to build.
MAX_CIFAR_DEPTH = 3002


def cifar_blocks_per_stage(depth: int) -> int:
    """Returns n for a CIFAR depth 6n+2, or raises ConfigError."""
    if depth < 8 or (depth - 2) % 6 or depth > MAX_CIFAR_DEPTH:
        raise ConfigError(
            f"Received: depth={depth} for the CIFAR family; expected 6n+2 with n >= 1 up to {MAX_CIFAR_DEPTH} "
            f"(8, 14, 20, 26, 32, ...; presets {', '.join(map(str, CIFAR_PRESET_DEPTHS))})."
        )
    return (depth - 2) // 6


def default_family(depth: int) -> str:
    """Resolves the ambiguity of depth alone: Table 1 depths are ImageNet, other 6n+2 are CIFAR."""
    if depth in IMAGENET_DEPTHS:
        return "imagenet"
    if 8 <= depth <= MAX_CIFAR_DEPTH and (depth - 2) % 6 == 0:
        return "cifar"
    raise ConfigError(
        f"Received: depth={depth}; expected one of {', '.join(map(str, IMAGENET_DEPTHS))} "
        f"(ImageNet family) or 6n+2 with n >= 1 (CIFAR family: 8, 14, 20, 26, 32, ...)."
    )


def stage_specs(family: str, depth: int) -> tuple[StageSpec, ...]:
    """The stages of a network of `depth` layers in `family`, before any width multiplier."""
    if family == "cifar":
        n = cifar_blocks_per_stage(depth)
        return tuple(StageSpec("basic", filters, n, stride) for filters, stride in zip(CIFAR_FILTERS, CIFAR_STRIDES))
    if family == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ConfigError(
                f"Received: depth={depth} for the ImageNet family; expected one of "
                f"{', '.join(map(str, IMAGENET_DEPTHS))}."
            )
        block, counts = IMAGENET_DEPTHS[depth]
        return tuple(
            StageSpec(block, filters, count, stride)
            for filters, count, stride in zip(IMAGENET_FILTERS, counts, IMAGENET_STRIDES)
        )
    raise ConfigError(f"Received: family={family!r}; expected one of {', '.join(FAMILIES)}.")


def stem_filters(family: str) -> int:
    return CIFAR_STEM_FILTERS if family == "cifar" else IMAGENET_STEM_FILTERS


def scaled(filters: int, width: float) -> int:
    """Channels after a width multiplier (at least one)."""
    return max(1, int(math.floor(filters * width + 0.5)))


def _preset_table() -> dict[str, dict]:
    presets: dict[str, dict] = {}
    for depth, (block, _) in IMAGENET_DEPTHS.items():
        # v1.5 moves the stride inside a bottleneck; basic blocks have nothing to move.
        variants = VARIANTS if block == "bottleneck" else ("v1", "v2")
        for variant in variants:
            suffix = "" if variant == "v1" else f"_{variant}"
            presets[f"resnet{depth}{suffix}"] = dict(family="imagenet", depth=depth, variant=variant)
    for depth in CIFAR_PRESET_DEPTHS:
        for variant in ("v1", "v2"):
            suffix = "" if variant == "v1" else f"_{variant}"
            presets[f"resnet{depth}{suffix}"] = dict(family="cifar", depth=depth, variant=variant)
    return presets


def _modern_presets() -> dict[str, dict]:
    """timm's ResNet-D (`resnet50d`: deep stem, average-pooled projection shortcuts) and SE-ResNet
    (`seresnet50`: squeeze-and-excitation, ratio 1/16) at every ImageNet depth. timm strides the
    bottleneck's 3x3 (our v1.5); a basic block has only 3x3s, so its v1 is the same network."""
    presets: dict[str, dict] = {}
    for depth, (block, _) in IMAGENET_DEPTHS.items():
        base = dict(family="imagenet", depth=depth, variant="v1.5" if block == "bottleneck" else "v1")
        presets[f"resnet{depth}d"] = dict(base, stem="deep", avg_down=True)
        presets[f"seresnet{depth}"] = dict(base, se_ratio=1 / 16)
    return presets


# Named presets: `resnet50` is the paper's v1; `resnet50_v1.5` strides on the 3x3 as
# torchvision and NVIDIA train it; `_v2` is the pre-activation network of He et al. 2016.
PRESETS: dict[str, dict] = {**_preset_table(), **_modern_presets()}
