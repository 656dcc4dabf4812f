"""Importing PyTorch ResNet weights (torchvision, timm) into our models, exactly.

torchvision's `resnet18/34/50/101/152` and timm's plain `resnet*` models share one layout and
one set of state-dict keys (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, `fc`):
basic blocks as in the paper, bottlenecks with the stride on the 3x3 ("v1.5"), projection
shortcuts (option B), BN epsilon 1e-5, and a max pool whose -inf padding equals our zero
padding because it follows a ReLU. Our `variant="v1"` (basic) and `"v1.5"` (bottleneck)
networks are that architecture, so the import only transposes tensors:

- conv weight [out, in, kh, kw] -> Keras kernel [kh, kw, in, out]; linear weight [out, in] -> [in, out].
- BN weight, bias, running_mean, running_var -> gamma, beta, moving_mean, moving_variance
  (`num_batches_tracked` is a training counter and is dropped).
- preprocessing: torchvision/timm normalise (x / 255 - mean) / std; the same mean and std in
  pixel units (x 255) are our `normalize` layer's, so the model takes raw RGB 0-255.

Files: `.safetensors` (the hub format, read with the `safetensors` package's numpy API, no
PyTorch) and `.pth`/`.pt`/`.bin` (PyTorch's zip format, read with `torch.load(weights_only=True)`:
PyTorch is the optional extra `resnet-keras[torch]`). Before PyTorch is asked, the pickle's
imports are listed without running it and anything but tensors and dicts is refused, so a file
that would execute code on loading never reaches an unpickler. Variants our zoo does not have
(ResNet-C/D deep stems, average-pool shortcuts, squeeze-and-excitation) are named and refused.
"""

from __future__ import annotations

import dataclasses
import os
import pickletools
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from resnet_keras.config import specs
from resnet_keras.config.schema import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from resnet_keras.core.errors import UsageError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
BN_KEYS = ("weight", "bias", "running_mean", "running_var")  # in Keras' order: gamma, beta, mean, variance
# What a state dict's pickle may import (torch.save of a dict of tensors, PyTorch 1.6 and later).
_ALLOWED_GLOBALS = re.compile(
    r"collections OrderedDict|torch\._utils _rebuild_tensor_v2|torch\._utils _rebuild_parameter|"
    r"torch [A-Za-z0-9]*Storage|torch (float|half|bfloat16|float16|float32|float64|double|int64|long|uint8|bool)"
)
# Keys of architectures that are ResNets but not ours, and what they are.
_VARIANT_KEYS = (
    (re.compile(r"^conv1\.\d+\."), "a deep 3x3 stem (ResNet-C/D)"),
    (re.compile(r"\.downsample\.2\."), "average-pool shortcuts (ResNet-D)"),
    (re.compile(r"\.(se|se_module|attn)\."), "squeeze-and-excitation or attention blocks (SE-ResNet)"),
)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a `.safetensors` or PyTorch file as numpy arrays, by state-dict key.

    Raises UsageError (one line) for a missing, truncated or non-weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise UsageError(f"Received: {path}; expected a .safetensors file or a PyTorch {'/'.join(PICKLE_SUFFIXES)} file")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as error:  # noqa: BLE001 - SafetensorError, a truncated header, a foreign dtype
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{path} is not a readable safetensors file ({reason}); is it truncated?") from None


def check_weights_only(path: Path) -> None:
    """Refuses a PyTorch file whose pickle imports anything but tensors and dicts, without running it."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            legacy = handle.read(2) == b"\x80\x02"  # PyTorch before 1.6 wrote a bare pickle stream
        if not legacy:
            raise UsageError(f"{path} is not a PyTorch weights file (no zip archive inside; truncated?)")
        return  # the legacy format is left to torch.load(weights_only=True)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise UsageError(f"{path} is a zip file without data.pkl; expected a PyTorch weights file")
            data = archive.read(names[0])
            for op, arg, _ in pickletools.genops(data):
                if op.name in ("GLOBAL", "INST") and not _ALLOWED_GLOBALS.fullmatch(str(arg)):
                    raise UsageError(
                        f"{path} is not a weights-only PyTorch file: its pickle imports {str(arg).replace(' ', '.')} "
                        "(a whole pickled model or other object, which would run code on loading); "
                        "save model.state_dict() instead"
                    )
    except UsageError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
        raise UsageError(f"{path} is not a readable PyTorch file ({error}); is it truncated?") from None


def _read_pickle(path: Path) -> dict[str, np.ndarray]:
    check_weights_only(path)
    try:
        import torch
    except ImportError:
        raise UsageError(
            f"reading {path.name} needs PyTorch (pip install 'resnet-keras[torch]'); .safetensors files need no PyTorch"
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - UnpicklingError for non-weights pickles, RuntimeError for damage
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{path} cannot be loaded as weights only: {reason}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    result = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"{path}: {key} is a {type(value).__name__}, not a tensor; expected a state dict")
        value = value.detach().cpu()
        result[key] = (value.float() if value.is_floating_point() else value).numpy()
    return result


# ----------------------------------------------------------------------------- architecture


def _strip(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a DataParallel `module.` prefix and BN's `num_batches_tracked` counters."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}


def architecture(state: dict[str, np.ndarray], where: str) -> tuple[int, bool, int]:
    """(depth, has the fc head, its classes) of a torchvision/timm ResNet state dict, or UsageError."""
    for pattern, what in _VARIANT_KEYS:
        key = next((k for k in state if pattern.search(k)), None)
        if key:
            raise UsageError(
                f"{where} holds a ResNet with {what} (key {key}), which our zoo does not have yet; "
                "supported: plain torchvision/timm ResNet-18/34/50/101/152"
            )
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        raise UsageError(f"{where} holds no conv1.weight / layer1.0.conv1.weight; expected a torchvision/timm ResNet")
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = next((d for d, (k, c) in specs.IMAGENET_DEPTHS.items() if (k, c) == (kind, tuple(counts))), None)
    if depth is None:
        known = ", ".join(f"{d}: {'/'.join(map(str, c))} {k}" for d, (k, c) in specs.IMAGENET_DEPTHS.items())
        raise UsageError(
            f"{where} holds a ResNet with {'/'.join(map(str, counts))} {kind} blocks per stage, which is "
            f"no ResNet depth ({known})"
        )
    has_top = "fc.weight" in state
    return depth, has_top, int(state["fc.weight"].shape[0]) if has_top else 1000


def model_config(
    depth: int,
    *,
    num_classes: int = 1000,
    include_top: bool = True,
    image_size: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> ModelConfig:
    """Our ModelConfig of torchvision's ResNet-`depth` (v1.5 bottlenecks, v1 basic blocks)."""
    block = specs.IMAGENET_DEPTHS[depth][0]
    return ModelConfig(
        depth=depth,
        family="imagenet",
        variant="v1.5" if block == "bottleneck" else "v1",
        shortcut="B",
        stem="imagenet",  # also below 128 pixels: the weights were trained with it
        image_size=image_size,
        num_classes=num_classes,
        include_top=include_top,
        input_mean=tuple(mean),
        input_std=tuple(std),
    )


def layer_map(config: ModelConfig) -> dict[str, str]:
    """torchvision module name -> our layer name, for every weighted module of `config`'s network."""
    mapping = {"conv1": "conv1_conv", "bn1": "conv1_bn"}
    channels = specs.scaled(specs.stem_filters(config.family), config.width)
    for s, stage in enumerate(config.stages, start=1):
        out = stage.filters * (4 if stage.block == "bottleneck" else 1)
        convs = 3 if stage.block == "bottleneck" else 2
        for b in range(stage.blocks):
            ours = f"conv{s + 1}_block{b + 1}"
            for k in range(1, convs + 1):
                mapping[f"layer{s}.{b}.conv{k}"] = f"{ours}_{k}_conv"
                mapping[f"layer{s}.{b}.bn{k}"] = f"{ours}_{k}_bn"
            if b == 0 and (stage.stride != 1 or channels != out):
                mapping[f"layer{s}.{b}.downsample.0"] = f"{ours}_0_conv"
                mapping[f"layer{s}.{b}.downsample.1"] = f"{ours}_0_bn"
            channels = out
    if config.include_top:
        mapping["fc"] = "predictions"
    return mapping


def expected_keys(config: ModelConfig) -> list[str]:
    """The state-dict keys (without `num_batches_tracked`) of torchvision's model for `config`."""
    keys = []
    for module, ours in layer_map(config).items():
        if ours.endswith("_bn"):
            keys += [f"{module}.{name}" for name in BN_KEYS]
        elif ours == "predictions":
            keys += ["fc.weight", "fc.bias"]
        else:
            keys.append(f"{module}.weight")
    return keys


def convert_state_dict(state: dict[str, np.ndarray], config: ModelConfig, where: str) -> dict[str, list[np.ndarray]]:
    """Our layer name -> Keras weights, from a torchvision/timm state dict for `config`.

    Every key must be used and every layer filled, else UsageError naming the first key that
    does not fit: the result covers every weight or nothing.
    """
    state = _strip(state)
    if not config.include_top:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    wanted = expected_keys(config)
    missing = [k for k in wanted if k not in state]
    extra = sorted(set(state) - set(wanted))
    if missing or extra:
        parts = [f"{_first(missing)} missing" if missing else "", f"{_first(extra)} unexpected" if extra else ""]
        raise UsageError(f"{where} does not fit {config.name}: " + "; ".join(p for p in parts if p))
    result = {}
    for module, ours in layer_map(config).items():
        if ours.endswith("_bn"):
            result[ours] = [state[f"{module}.{name}"] for name in BN_KEYS]
        elif ours == "predictions":
            result[ours] = [state["fc.weight"].T, state["fc.bias"]]
        else:
            kernel = state[f"{module}.weight"]
            if kernel.ndim != 4:
                raise UsageError(f"{where}: {module}.weight has shape {list(kernel.shape)}; expected a 4-D conv kernel")
            result[ours] = [kernel.transpose(2, 3, 1, 0)]
    return {name: [np.ascontiguousarray(v, dtype=np.float32) for v in values] for name, values in result.items()}


def _first(keys: list[str]) -> str:
    return keys[0] + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")


# ----------------------------------------------------------------------------- sources


_CACHE: dict[tuple, dict[str, np.ndarray]] = {}


def _state(path: str) -> dict[str, np.ndarray]:
    """read_state_dict, remembered for the process (a source is resolved, then read)."""
    if not os.path.isfile(path):
        raise UsageError(f"weights file {path} does not exist")
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = read_state_dict(path)
    return _CACHE[key]


def describe(path: str, label: str, *, depth: int | None = None, weight_set=None) -> ModelConfig:
    """Our ModelConfig that holds the state dict at `path` (read once and remembered), with the
    weight set's normalisation when it is a named one; `depth`, when given, must be the file's."""
    state = _strip(_state(path))
    found, has_top, classes = architecture(state, label)
    if depth is not None and depth != found:
        raise UsageError(f"{label} holds ResNet-{found} weights; expected ResNet-{depth}")
    stats = dict(mean=weight_set.mean, std=weight_set.std) if weight_set else {}
    return model_config(found, num_classes=classes, include_top=has_top, **stats)


def load_weights(path: str, config: ModelConfig, label: str, *, include_top: bool) -> dict[str, list[np.ndarray]]:
    """Our layer weights for `config` from the state dict at `path` (without the head unless
    `include_top` and the file has one)."""
    top = include_top and config.include_top
    return convert_state_dict(_state(path), dataclasses.replace(config, include_top=top), label)


# ----------------------------------------------------------------------------- test support


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """A ResNet state dict with reproducible random values, made without PyTorch.

    Each key's values come from its own generator seeded by (seed, crc32(key)), so the same
    numbers come out in any process, in any key order: `scripts/make_torch_fixtures.py` loads
    them into torchvision/timm models to compute reference outputs, the tests into ours.
    Convolutions get He-normal kernels; BN gets gammas in [0.5, 1.5], betas N(0, 0.2), running
    means N(0, 0.5) and variances in [0.5, 2] (so BN is far from the identity and every
    statistic is exercised); the classifier N(0, 0.01) weights and N(0, 0.1) biases.
    """
    result = {}
    for key, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        if key.endswith("num_batches_tracked"):
            result[key] = np.array(0, dtype=np.int64)
            continue
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        module, _, param = key.rpartition(".")
        is_bn = f"{module}.running_mean" in shapes
        if is_bn:
            low_high = {"weight": (0.5, 1.5), "running_var": (0.5, 2.0)}
            if param in low_high:
                values = rng.uniform(*low_high[param], shape)
            else:
                values = rng.normal(0.0, 0.2 if param == "bias" else 0.5, shape)
        elif len(shape) == 4:
            values = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        else:
            values = rng.normal(0.0, 0.01 if param == "weight" else 0.1, shape)
        result[key] = values.astype(np.float32)
    return result
