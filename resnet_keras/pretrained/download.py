"""Where pretrained weight files come from: the publishers' own caches, else a download into them.

Files are found offline in the caches the publishing libraries use, so a file fetched once by
torchvision, timm, keras-hub or Keras is reused as it is:
- torchvision: `torch.hub`'s checkpoint folder, `$TORCH_HOME/hub/checkpoints` (default
  `$XDG_CACHE_HOME/torch` or `~/.cache/torch`), file names as torchvision publishes them.
- timm: the Hugging Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
  `~/.cache/huggingface/hub`), `models--timm--ARCH.TAG/snapshots/REV/model.safetensors`.
- keras-hub: kagglehub's cache (`$KAGGLEHUB_CACHE`, default `~/.cache/kagglehub`).
- keras.applications: Keras' cache, `<keras home>/models`.
When the file is not there, a 3 s probe decides: with a network it is downloaded into that
cache, without one the error says at once where we looked and where the file comes from.
Nothing here imports TensorFlow or PyTorch before a download is needed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from resnet_keras.core import network, tf_compat
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained import keras_apps, registry
from resnet_keras.pretrained import keras_hub as keras_hub_format
from resnet_keras.pretrained.registry import WeightSet


def torch_hub_dir() -> Path:
    """torch.hub's checkpoint folder, computed as torch.hub.get_dir() does (without PyTorch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def kagglehub_cache() -> Path:
    """kagglehub's cache, where keras-hub presets land (`$KAGGLEHUB_CACHE`, default ~/.cache/kagglehub)."""
    return Path(os.environ.get("KAGGLEHUB_CACHE") or os.path.expanduser("~/.cache/kagglehub"))


def cached_file(weight_set: WeightSet) -> tuple[Path | None, Path]:
    """(the cached file or None, where it was looked for); a keras-hub preset is a folder."""
    if weight_set.hub == "keras-hub":
        path = kagglehub_cache() / "models" / weight_set.file
        return (path if (path / "config.json").is_file() else None), path
    if weight_set.hub == "torchvision":
        path = torch_hub_dir() / weight_set.file
        return (path if path.is_file() else None), path
    repo = hf_hub_cache() / f"models--timm--{weight_set.arch}.{weight_set.tag}"
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    revisions = [ref.read_text().strip()] if ref.is_file() else []
    if snapshots.is_dir():
        revisions += sorted(p.name for p in snapshots.iterdir())
    for revision in revisions:
        path = snapshots / revision / weight_set.file
        if path.is_file():
            return path, path
    return None, snapshots / "*" / weight_set.file


def weights_file(weight_set: WeightSet, *, log: Callable[[str], None] = print) -> str:
    """The file of `weight_set`: from the cache, else downloaded into it, else UsageError at once."""
    if weight_set.unsupported:
        raise UsageError(f"{weight_set.name}: {weight_set.unsupported}; supported: plain torchvision/timm ResNets")
    found, looked = cached_file(weight_set)
    if found is not None:
        return str(found)
    url = {
        "torchvision": weight_set.url,
        "timm": f"{weight_set.url}/resolve/main/{weight_set.file}",
        "keras-hub": "https://www.kaggle.com/models/" + weight_set.file.rsplit("/", 1)[0],
    }[weight_set.hub]
    if not network.network_available(url):
        raise UsageError(
            f"{weight_set.name} is not in the cache ({looked}) and there is no network to download it; "
            f"copy {'the preset folder' if weight_set.hub == 'keras-hub' else weight_set.file} there "
            f"(from {url}) or pass its path"
        )
    log(f"Downloading {url}")
    if weight_set.hub == "timm":
        return _hf_download(weight_set)
    if weight_set.hub == "keras-hub":
        return download_preset(weight_set.tag)
    return _download_checked(url, looked)


def _hf_download(weight_set: WeightSet) -> str:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UsageError(
            f"downloading {weight_set.name} needs huggingface_hub (pip install huggingface_hub), "
            f"or download {weight_set.file} from {weight_set.url} and pass its path"
        ) from None
    try:
        return hf_hub_download(f"timm/{weight_set.arch}.{weight_set.tag}", weight_set.file, cache_dir=hf_hub_cache())
    except Exception as error:  # noqa: BLE001 - network and hub failures become one line
        raise UsageError(f"cannot download {weight_set.name}: {str(error).splitlines()[0]}") from None


def _download_checked(url: str, target: Path) -> str:
    """Downloads to a hidden sibling, checks the SHA-256 prefix in torchvision's file name, renames."""
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        expected = re.search(r"-([a-f0-9]{8,})\.", target.name)
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise UsageError(f"{url}: the download's SHA-256 does not start with {expected.group(1)}; not kept")
        os.replace(tmp, target)
    except OSError as error:
        raise UsageError(f"cannot download {url}: {error}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(target)


def download_preset(preset: str) -> str:
    """Fetches a named preset into kagglehub's cache (through keras-hub) and returns its folder."""
    keras_hub = keras_hub_format.import_keras_hub(preset)
    try:
        keras_hub.models.ImageClassifier.from_preset(preset)
    except Exception as error:  # noqa: BLE001 - network and hub failures become one line
        raise UsageError(f"cannot download keras-hub:{preset}: {str(error).splitlines()[0]}") from None
    found, looked = cached_file(registry.lookup(f"keras-hub:{preset}"))
    if found is None:
        raise UsageError(f"keras-hub:{preset} was downloaded but is not in {looked}")
    return str(found)


def keras_app_file(app: str, *, include_top: bool = True, log: Callable[[str], None] = print) -> str:
    """The official ImageNet weights of `app`, from Keras' cache or downloaded into it.

    A file already in `<keras home>/models` is used as it is (no network). Otherwise a 3 s
    probe decides: offline -> UsageError at once (instead of a download that fails or hangs).
    Neither step imports TensorFlow, so the answer comes in well under a second.
    """
    app = keras_apps.check_app(app)
    fname = f"{app}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
    cached = Path(tf_compat.keras_home()) / "models" / fname
    if cached.is_file():
        return str(cached)
    if not network.network_available(keras_apps.WEIGHTS_URL + fname):
        raise UsageError(
            f"ImageNet weights for {app} are not in the Keras cache ({cached}) and there is no "
            f"network to download them; copy {fname} there (from {keras_apps.WEIGHTS_URL}) or pass the file's path"
        )
    hashes = tf_compat.keras_applications_hashes().get(app)
    file_hash = hashes[0 if include_top else 1] if hashes else None
    log(f"Downloading {fname} into {cached.parent}")
    import keras

    try:
        return keras.utils.get_file(fname, keras_apps.WEIGHTS_URL + fname, cache_subdir="models", file_hash=file_hash)
    except Exception as error:  # noqa: BLE001 - network and hash failures become one line
        raise UsageError(f"cannot download {keras_apps.WEIGHTS_URL + fname}: {str(error).splitlines()[0]}") from None
