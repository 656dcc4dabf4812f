"""Model files that load anywhere: stock Keras for plain-layer models, `import resnet_keras` for the rest.

Each loading check runs in a fresh Python process, because a test process has long since imported
resnet_keras.zoo.blocks (which registers our layers) and would hide a missing registration.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from resnet_keras.config.schema import ModelConfig
from resnet_keras.zoo import portable
from resnet_keras.zoo.models import build_model

CIFAR_A = ModelConfig(depth=8, width=0.25, image_size=32, num_classes=10)  # option A: ZeroPadShortcut
IMAGENET = ModelConfig(depth=18, width=0.125, image_size=32, num_classes=10)


def fresh_python(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_plain_layers_is_the_same_function_with_stock_batch_norm():
    import keras

    from resnet_keras.zoo.blocks import FusedBatchNormalization

    model = build_model(CIFAR_A)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    model(x, training=True)  # move the moving statistics off their initial values
    plain = portable.plain_layers(model)
    assert portable.custom_layers(model) == ["FusedBatchNormalization", "ZeroPadShortcut"]
    assert portable.custom_layers(plain) == ["ZeroPadShortcut"]
    assert type(plain.get_layer("conv1_bn")) is keras.layers.BatchNormalization
    assert isinstance(model.get_layer("conv1_bn"), FusedBatchNormalization)  # the original is untouched
    assert [layer.name for layer in plain.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(plain(x, training=False), model(x, training=False))


@pytest.mark.slow
def test_saved_files_load_with_stock_keras_or_after_import_resnet_keras(tmp_path):
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for name, config in (("imagenet", IMAGENET), ("cifar_a", CIFAR_A)):
        model = build_model(config)
        portable.save_model(model, tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", model(x, training=False).numpy())
    out = fresh_python(
        f"""
        import sys
        import numpy as np
        import keras

        x = np.load({str(tmp_path / "x.npy")!r})
        model = keras.saving.load_model({str(tmp_path / "imagenet.keras")!r}, safe_mode=True)
        np.testing.assert_allclose(model(x), np.load({str(tmp_path / "imagenet.npy")!r}), atol=1e-5)
        assert not any(name.startswith("resnet_keras") for name in sys.modules)
        try:
            keras.saving.load_model({str(tmp_path / "cifar_a.keras")!r}, safe_mode=True)
        except Exception as error:
            assert "ZeroPadShortcut" in str(error)
        else:
            raise AssertionError("option A loaded without its layer registered")
        print("stock keras ok")
        """
    )
    assert "stock keras ok" in out
    out = fresh_python(
        f"""
        import sys
        import numpy as np
        import resnet_keras
        assert "keras" not in sys.modules and "tensorflow" not in sys.modules  # import stays light
        import keras

        x = np.load({str(tmp_path / "x.npy")!r})
        model = keras.saving.load_model({str(tmp_path / "cifar_a.keras")!r}, safe_mode=True)
        np.testing.assert_allclose(model(x), np.load({str(tmp_path / "cifar_a.npy")!r}), atol=1e-5)
        again = resnet_keras.load_model({str(tmp_path / "cifar_a.keras")!r})
        np.testing.assert_allclose(again(x), np.load({str(tmp_path / "cifar_a.npy")!r}), atol=1e-5)
        print("after import resnet_keras ok")
        """
    )
    assert "after import resnet_keras ok" in out


def test_load_model_missing_file_is_a_usage_error(tmp_path):
    from resnet_keras.core.errors import UsageError

    with pytest.raises(UsageError, match="not found"):
        portable.load_model(tmp_path / "nope.keras")
