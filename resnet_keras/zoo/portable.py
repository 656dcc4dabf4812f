"""Model files that load anywhere: ``resnet_keras.load_model``, plain-layer saving, and registering
our custom Keras layers as soon as Keras is imported.

Two layers of ours can appear in a model: ``FusedBatchNormalization`` and ``ZeroPadShortcut``
(``blocks.py``). The first is a training-time kernel choice (TensorFlow's fused batch-norm op for the
training step; inference runs Keras's own code), not a different layer, so ``save_model`` writes it as
a stock ``BatchNormalization`` with the same weights: such a file (every ImageNet-layout ResNet, and
the CIFAR nets with option B shortcuts) loads with stock Keras and no import of ours. The option A
shortcut is a real layer with no stock equivalent; files holding it need the layer registered.

``import resnet_keras`` does not import TensorFlow (about 1 ms instead of about 5 s), so it cannot
register Keras layers directly. Instead ``register_when_keras_loads`` registers them right away when
Keras is already imported, and otherwise the moment Keras finishes importing (an import hook that
removes itself after firing once); registering costs about 6 ms once Keras is loaded. Either way
``import resnet_keras; keras.saving.load_model(path)`` works with ``safe_mode=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from resnet_keras.core.files import saved_size, space_for
from resnet_keras.core.storage import local_file_for

_LAYERS_MODULE = "resnet_keras.zoo.blocks"


def _register() -> None:
    importlib.import_module(_LAYERS_MODULE)  # its @register_keras_serializable decorators do the work


class _AfterKerasImport:
    """A ``sys.meta_path`` finder that finds nothing itself: when ``keras`` is first imported it wraps
    Keras's loader so that our layers are registered right after Keras's own module has run, then
    leaves ``sys.meta_path``. Not an importlib.abc subclass: importing that module would cost more
    than the rest of ``import resnet_keras``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        _remove_hook()
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            sys.modules.setdefault("keras", module)
            try:
                _register()
            except Exception as error:  # noqa: BLE001 - never break `import keras` for other users
                import warnings

                warnings.warn(f"resnet_keras could not register its Keras layers: {error}", stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _AfterKerasImport)]


def register_when_keras_loads() -> None:
    """Registers our custom layers now if Keras is imported, else as soon as it is (idempotent)."""
    if "keras" in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterKerasImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())


def plain_layers(model):
    """A copy of ``model`` with every ``FusedBatchNormalization`` replaced by a stock
    ``BatchNormalization`` of the same config and weights (inference is identical: the fused kernel
    only ever runs in training mode). Other layers are shared with ``model``, not copied."""
    import keras

    from resnet_keras.zoo.blocks import FusedBatchNormalization

    if not any(isinstance(layer, FusedBatchNormalization) for layer in _all_layers(model)):
        return model

    def swap(layer):
        if type(layer) is FusedBatchNormalization:
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=swap, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def custom_layers(model) -> list[str]:
    """Class names of the layers in ``model`` that stock Keras cannot load without ``import resnet_keras``."""
    import keras

    names = set()
    for layer in _all_layers(model):
        module = type(layer).__module__
        if not (module == "keras" or module.startswith("keras.")) and not isinstance(layer, keras.Model):
            names.add(type(layer).__name__)
    return sorted(names)


def save_model(model, path: str | os.PathLike) -> None:
    """``model.save(path)`` of ``plain_layers(model)``: only layers with no stock equivalent
    (the option A shortcut) make the file depend on resnet_keras."""
    plain_layers(model).save(str(path))


def load_model(path: str | os.PathLike, *, compile: bool = False):
    """Loads a ``.keras`` file written by resnet-keras (or any Keras file) with ``safe_mode=True``,
    our custom layers registered first. ``compile`` is passed to ``keras.saving.load_model``."""
    from resnet_keras.core.errors import UsageError

    if not os.path.isfile(path):
        raise UsageError(f"Model file not found: {path}")
    import keras

    _register()
    return keras.saving.load_model(str(path), safe_mode=True, compile=compile)


def save_model_atomic(model, output: str | os.PathLike) -> None:
    """Saves a `.keras` file that loads anywhere (`save_model`: stock layers wherever ours are
    only a kernel choice) to a hidden sibling (Keras wants the suffix), then renames: all or nothing."""
    # Space is checked before Keras (and HDF5, for a model too big to stage in memory) writes.
    with space_for(output, saved_size(model)), local_file_for(output, suffix=".keras") as local:
        save_model(model, local)  # a URL's file is copied up from a local one
