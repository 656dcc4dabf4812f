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

Files, none of which needs PyTorch but the last:
- `.safetensors` (the hub format), read with the `safetensors` package's numpy API (BF16 tensors,
  which numpy lacks, by hand: uint16 << 16 viewed as float32).
- `.pth`/`.pt`/`.bin`/`.ckpt` written by `torch.save` since PyTorch 1.6 (zip archives: every
  torchvision and timm file), read by our own restricted unpickler: it resolves only the
  tensor-rebuild functions, storage types and dtypes a state dict uses (to functions of ours) and
  refuses any other global by name before anything from the file runs; storages are memory-mapped
  from the archive (torch.save stores them uncompressed) with offsets, shapes and strides checked
  against their storage; float16/bfloat16 become float32.
- legacy `.pth` files (PyTorch before 1.6: a bare pickle stream) go to
  `torch.load(weights_only=True)`, which needs the optional extra `resnet-keras[torch]`.

Variants our zoo does not have (ResNet-C/D deep stems, average-pool shortcuts,
squeeze-and-excitation) are named and refused.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import mmap
import os
import pickle
import re
import struct
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
    """A .safetensors file's tensors; BF16 ones (numpy has no bfloat16) widened to float32 by hand."""
    from safetensors.numpy import load_file

    header = _safetensors_header(path)
    if header is not None and any(v.get("dtype") == "BF16" for v in header[0].values() if isinstance(v, dict)):
        return _read_safetensors_bf16(path, *header)
    try:
        return dict(load_file(str(path)))
    except Exception as error:  # noqa: BLE001 - SafetensorError, a truncated header, a foreign dtype
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{path} is not a readable safetensors file ({reason}); is it truncated?") from None


def _safetensors_header(path: Path) -> tuple[dict, int] | None:
    """(the header's tensors, where the data starts), or None when the header is unreadable
    (then the safetensors package reports what is wrong)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > min(100 << 20, os.path.getsize(path) - 8):
            return None
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    return header, 8 + length


_SAFETENSORS_DTYPES = {"F64": "f8", "F32": "f4", "F16": "f2", "BF16": "u2", "I64": "i8", "I32": "i4", "I16": "i2"}
_SAFETENSORS_DTYPES.update({"I8": "i1", "U8": "u1", "U16": "u2", "U32": "u4", "U64": "u8", "BOOL": "?"})


def _read_safetensors_bf16(path: Path, header: dict, start: int) -> dict[str, np.ndarray]:
    size = os.path.getsize(path) - start
    result = {}
    for key, entry in header.items():
        try:
            code = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{path} is not a readable safetensors file ({key}: {str(entry)[:80]})") from None
        dtype = np.dtype("<" + code if code != "?" else code)
        if (
            min(shape, default=0) < 0
            or not 0 <= begin <= end <= size
            or end - begin != math.prod(shape) * dtype.itemsize
        ):
            raise UsageError(
                f"{path} is not a readable safetensors file ({key}: {shape} {entry['dtype']} in bytes "
                f"{begin}..{end} of {size}); is it truncated?"
            )
        if begin == end:
            array = np.zeros(shape, dtype)
        else:
            array = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
        if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        result[key] = np.asarray(array)
    return result


def check_weights_only(path: Path) -> None:
    """Refuses a PyTorch file whose pickle imports anything but tensors and dicts, without running it
    (the zip format is unpickled by our restricted unpickler, no storage read; the legacy format is
    left to torch.load(weights_only=True))."""
    if not zipfile.is_zipfile(path):
        if not _is_legacy(path):
            raise UsageError(f"{path} is not a PyTorch weights file (no zip archive inside; truncated?)")
        return  # the legacy format is left to torch.load(weights_only=True)
    _read_zip(path, check_only=True)


def _is_legacy(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x80\x02"  # PyTorch before 1.6 wrote a bare pickle stream


def _read_pickle(path: Path) -> dict[str, np.ndarray]:
    if zipfile.is_zipfile(path):
        return _state_of(_read_zip(path), path)
    if not _is_legacy(path):
        raise UsageError(f"{path} is not a PyTorch weights file (no zip archive inside; truncated?)")
    return _read_legacy(path)


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    """A pre-1.6 (bare pickle, not zip) file: only torch.load(weights_only=True) reads those."""
    try:
        import torch
    except ImportError:
        raise UsageError(
            f"reading {path.name} needs PyTorch (pip install 'resnet-keras[torch]'): it is in PyTorch's legacy "
            "format (before 1.6, not a zip archive); zip .pth files and .safetensors files need no PyTorch"
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - UnpicklingError for non-weights pickles, RuntimeError for damage
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{path} cannot be loaded as weights only: {reason}") from None
    if isinstance(state, dict):
        state = {
            k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).numpy()
            if isinstance(v, torch.Tensor)
            else v
            for k, v in state.items()
        }
    return _state_of(state, path)


def _state_of(state, path: Path) -> dict[str, np.ndarray]:
    """The state dict inside what a PyTorch file holds (training checkpoints wrap it), all arrays."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    result = {}
    for key, value in state.items():
        if isinstance(value, _Tensor):
            value = value.array
        if not isinstance(value, np.ndarray):
            raise UsageError(f"{path}: {key} is a {type(value).__name__}, not a tensor; expected a state dict")
        result[str(key)] = value
    return result


# ----------------------------------------------------------------------------- torch.save archives, without PyTorch
#
# A torch.save file (PyTorch 1.6 and later) is a zip archive `<prefix>/data.pkl` + `<prefix>/data/<key>`
# (one raw storage per key, little-endian, stored uncompressed and 64-byte aligned) + `byteorder`,
# `version`. data.pkl rebuilds each tensor by calling torch._utils._rebuild_tensor_v2(storage, offset,
# size, stride, ...) on a storage named by a persistent id ('storage', torch.FloatStorage, key, 'cpu',
# numel); dtypes without a legacy storage class use _rebuild_tensor_v3(..., dtype) on a
# torch.storage.UntypedStorage (numel in bytes). Our unpickler resolves exactly those globals to our own
# functions and refuses any other before it is imported, so nothing from the file runs.

# Storage class -> numpy dtype (bfloat16 is read as uint16 and widened to float32 below).
_STORAGE_TYPES = {
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "DoubleStorage": "f8",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}
# torch.<dtype> (the argument of _rebuild_tensor_v3) -> numpy dtype.
_TORCH_DTYPES = {
    **dict.fromkeys(("float32", "float"), "f4"),
    **dict.fromkeys(("float16", "half"), "f2"),
    "bfloat16": "bf16",
    **dict.fromkeys(("float64", "double"), "f8"),
    **dict.fromkeys(("int64", "long"), "i8"),
    **dict.fromkeys(("int32", "int"), "i4"),
    **dict.fromkeys(("int16", "short"), "i2"),
    "int8": "i1",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "bool": "b1",
}
_MAX_PICKLE_BYTES = 64 << 20  # data.pkl of a ResNet-152 is ~60 KB; this is only an upper bound
_MAX_BROADCAST = 1 << 24  # elements a tensor may have beyond its storage's (stride-0, expanded tensors)
_MAX_STORAGE_BYTES = 1 << 36  # 64 GiB: no ResNet storage comes near
_MAX_INFLATED_BYTES, _MAX_INFLATION = 1 << 30, 20  # compressed members (torch.save writes none): at most this


class _Sealed:
    """The unpickler's own objects: a pickle's BUILD opcode may not set their attributes."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"a BUILD of a {type(self).__name__.strip('_').lower()}")


class _Dtype(_Sealed):
    """A storage class or torch dtype named by the pickle: only its numpy dtype code."""

    __slots__ = ("code", "untyped")

    def __init__(self, code: str, untyped: bool = False):
        self.code, self.untyped = code, untyped


class _Storage(_Sealed):
    """One `<prefix>/data/<key>` member, read (or memory-mapped) at most once, when a tensor needs it."""

    __slots__ = ("info", "code", "numel", "needed", "array")

    def __init__(self, info: zipfile.ZipInfo, code: str, numel: int):
        self.info, self.code, self.numel, self.needed, self.array = info, code, numel, 0, None


class _Tensor(_Sealed):
    """A tensor as the pickle describes it; made into an array once every storage's extent is known."""

    __slots__ = ("storage", "offset", "shape", "strides", "code", "array")

    def __init__(self, storage, offset, shape, strides, code):
        self.storage, self.offset, self.shape, self.strides, self.code = storage, offset, shape, strides, code
        self.array = None


def _itemsize(code: str) -> int:
    return 2 if code == "bf16" else np.dtype(code).itemsize


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles data.pkl of a torch.save archive with the tensor-rebuild globals only."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, _Storage] = {}
        self.tensors: list[_Tensor] = []

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_v2
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return self._rebuild_v3
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in _STORAGE_TYPES:
            return _Dtype(_STORAGE_TYPES[name])
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return _Dtype("u1", untyped=True)
        if module == "torch" and name in _TORCH_DTYPES:
            return _Dtype(_TORCH_DTYPES[name])
        raise UsageError(
            f"{self.path} is not a weights-only PyTorch file: its pickle imports {module}.{name} "
            "(a whole pickled model or other object, which would run code on loading); "
            "save model.state_dict() instead"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Dtype)):
            raise self._bad(f"a persistent id {str(pid)[:80]} that is not a tensor storage")
        _, kind, key, _location, numel = pid
        if not isinstance(key, str) or not _is_count(numel):
            raise self._bad(f"a storage id {str(pid)[:80]}")
        if key in self.storages:
            return self.storages[key]
        member = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(member)
        except KeyError:
            raise self._bad(f"a tensor in {member}, which the archive does not hold (truncated?)") from None
        nbytes = numel * _itemsize(kind.code)
        if nbytes > _MAX_STORAGE_BYTES:
            raise self._bad(f"a storage {member} of {nbytes} bytes, which is absurd")
        if info.file_size != nbytes:
            raise self._bad(
                f"{member} of {info.file_size} bytes where its storage declares {nbytes} "
                "(a zip bomb or a damaged archive?)"
            )
        storage = _Storage(info, kind.code, numel)
        self.storages[key] = storage
        return storage

    def _rebuild_v2(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        return self._tensor(storage, offset, size, stride, None)

    def _rebuild_v3(self, storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
        if not isinstance(dtype, _Dtype) or dtype.untyped:
            raise self._bad(f"a tensor of dtype {str(dtype)[:40]}")
        return self._tensor(storage, offset, size, stride, dtype.code)

    def _rebuild_parameter(self, data, requires_grad=False, hooks=None):
        if not isinstance(data, _Tensor):
            raise self._bad(f"a parameter of a {type(data).__name__}, not a tensor")
        return data

    def _tensor(self, storage, offset, size, stride, code) -> _Tensor:
        if not isinstance(storage, _Storage):
            raise self._bad(f"a tensor on a {type(storage).__name__}, not a storage")
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
            raise self._bad(f"a tensor of size {str(size)[:60]} and stride {str(stride)[:60]}")
        if not (_is_count(offset) and all(map(_is_count, size)) and all(map(_is_count, stride))):
            raise self._bad(f"a tensor of size {size}, stride {stride}, offset {offset}")
        code = code or storage.code
        if storage.code == "u1" and code != "u1":  # an untyped (byte) storage seen through the tensor's dtype
            itemsize = _itemsize(code)
            if storage.numel % itemsize:
                raise self._bad(f"a {storage.numel}-byte storage read as {itemsize}-byte elements")
            storage.numel, storage.code = storage.numel // itemsize, code
        if code != storage.code:
            raise self._bad("tensors of two dtypes on one storage")
        elements = math.prod(size)  # Python ints: no overflow, but a product past the storage is absurd
        if elements > max(storage.numel, _MAX_BROADCAST):
            raise self._bad(
                f"a tensor of shape {list(size)} ({elements} elements) on a storage of {storage.numel}, which is absurd"
            )
        extent = 0 if elements == 0 else 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if offset + extent > storage.numel or (elements == 0 and offset > storage.numel):
            raise self._bad(
                f"a tensor at offset {offset} with shape {list(size)} and stride {list(stride)} that reaches "
                f"element {offset + extent} of a storage of {storage.numel}"
            )
        storage.needed = max(storage.needed, offset + extent)
        tensor = _Tensor(storage, offset, size, stride, code)
        self.tensors.append(tensor)
        return tensor

    def _bad(self, what: str) -> UsageError:
        return UsageError(f"{self.path} is not a readable PyTorch weights file: its pickle describes {what}")


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _read_zip(path: Path, check_only: bool = False):
    """What a torch.save archive holds, with every tensor a numpy array, read without PyTorch."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise UsageError(f"{path} is a zip file without data.pkl; expected a PyTorch weights file")
            pickled = archive.getinfo(names[0])
            if pickled.file_size > _MAX_PICKLE_BYTES:
                raise UsageError(f"{path}: its data.pkl declares {pickled.file_size} bytes; not a weights file")
            prefix = names[0][: -len("data.pkl")]
            byteorder = "<"
            if f"{prefix}byteorder" in archive.namelist():
                order = archive.read(f"{prefix}byteorder")
                if order not in (b"little", b"big"):
                    raise UsageError(f"{path}: its byteorder record is {order[:20]!r}; expected little or big")
                byteorder = "<" if order == b"little" else ">"
            unpickler = _WeightsUnpickler(archive.read(pickled), archive, prefix, path)
            try:
                state = unpickler.load()
            except UsageError:
                raise
            except Exception as error:  # noqa: BLE001 - UnpicklingError, a bad opcode argument, a TypeError in a call
                raise UsageError(f"{path} is not a readable PyTorch weights file ({_reason(error)})") from None
            if check_only:
                return None
            inflated = sum(
                s.needed * _itemsize(s.code)
                for s in unpickler.storages.values()
                if s.info.compress_type != zipfile.ZIP_STORED
            )
            if inflated > max(_MAX_INFLATED_BYTES, _MAX_INFLATION * os.path.getsize(path)):
                raise UsageError(
                    f"{path}: its compressed tensors would inflate to {inflated} bytes, "
                    f"{inflated // max(os.path.getsize(path), 1)} times the file (a zip bomb?)"
                )
            mapped = None  # the whole file, mapped once (read-only) for every uncompressed storage
            for storage in unpickler.storages.values():
                if storage.needed and storage.info.compress_type == zipfile.ZIP_STORED and mapped is None:
                    with open(path, "rb") as handle:
                        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                if storage.needed:
                    storage.array = _storage_array(archive, mapped, path, storage, byteorder)
            for tensor in unpickler.tensors:
                tensor.array = _tensor_array(tensor)
            return state
    except UsageError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, zlib.error) as error:
        raise UsageError(f"{path} is not a readable PyTorch file ({_reason(error)}); is it truncated?") from None
    except (RuntimeError, NotImplementedError) as error:  # an encrypted member, an unknown compression method
        raise UsageError(f"{path} is not a readable PyTorch file ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _storage_array(archive: zipfile.ZipFile, mapped, path: Path, storage: _Storage, byteorder: str) -> np.ndarray:
    """The first `needed` elements of a storage: memory-mapped if stored uncompressed, else read once."""
    code = "u2" if storage.code == "bf16" else storage.code
    dtype = np.dtype(bool) if code == "b1" else np.dtype(byteorder + code).newbyteorder(byteorder)
    count = storage.needed
    nbytes = count * dtype.itemsize
    info = storage.info
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:  # not encrypted
        start = _data_offset(archive, path, info)
        if start + info.file_size > len(mapped):
            raise UsageError(f"{path}: {info.filename} runs past the end of the file; is it truncated?")
        return np.frombuffer(mapped, dtype, count=count, offset=start)
    with archive.open(info) as handle:  # compressed (not torch.save's doing): read exactly what tensors need
        data = handle.read(nbytes)
    if len(data) != nbytes:
        raise UsageError(f"{path}: {info.filename} holds {len(data)} bytes, fewer than its tensors need; truncated?")
    return np.frombuffer(data, dtype)


def _data_offset(archive: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start in the file: after its local header (whose extra field may pad)."""
    archive.fp.seek(info.header_offset)
    header = archive.fp.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise UsageError(f"{path}: {info.filename} has no local header; is it truncated?")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _tensor_array(tensor: _Tensor) -> np.ndarray:
    """The tensor as a read-only view of its storage (float16/bfloat16: widened to a float32 copy)."""
    if tensor.storage.array is None:  # no element of the storage is used: an empty tensor
        dtype = np.float32 if tensor.code in ("f2", "bf16") else np.dtype(bool if tensor.code == "b1" else tensor.code)
        return np.zeros(tensor.shape, dtype)
    storage = tensor.storage.array
    itemsize = storage.itemsize
    extent = 1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides))
    if tensor.offset + extent > len(storage) and math.prod(tensor.shape):  # checked when unpickled; kept here
        raise UsageError(f"a tensor reaches past its storage ({tensor.offset} + {extent} > {len(storage)})")
    if math.prod(tensor.shape) == 0:
        array = np.zeros(tensor.shape, storage.dtype)
    else:
        array = np.lib.stride_tricks.as_strided(
            storage[tensor.offset :],
            shape=tensor.shape,
            strides=tuple(s * itemsize for s in tensor.strides),
            writeable=False,
        )
    if tensor.code == "bf16":  # bfloat16 is the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    if tensor.code == "f2":
        return array.astype(np.float32)
    return array


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
