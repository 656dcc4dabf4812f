"""The evaluation view travels with the weights: a model built from a published weight set crops its
images as the publisher does (`ModelConfig.eval_view`), in evaluation, prediction and every export.

The reference is torchvision's `weights.transforms()` and timm's eval transform on three real images
(mosaics of CIFAR-10 photos in tests/fixtures/views, at sizes that make the crop offsets odd), written
by `scripts/make_torch_fixtures.py --views-only` in a PyTorch venv.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from resnet_keras.config.schema import EvalView, ModelConfig
from resnet_keras.data import preprocessing
from resnet_keras.pretrained import registry

VIEWS = Path(__file__).parent / "fixtures" / "views"
SETS = ("torchvision:resnet50.IMAGENET1K_V1", "torchvision:resnet50.IMAGENET1K_V2", "timm:resnet50.a1_in1k")


@pytest.fixture(scope="module")
def reference():
    return np.load(VIEWS / "torch_views.npz")


def ours(path: Path, view: EvalView) -> np.ndarray:
    image = preprocessing.decode_image(tf.io.read_file(str(path)))
    return preprocessing.eval_view("imagenet", 224, view)(image).numpy()[::2, ::2]  # the fixture's pixels


@pytest.mark.parametrize("name", SETS)
def test_our_view_of_real_images_is_the_publishers_transform(reference, name):
    """Tolerance, in 0-255 pixel levels: mean under 0.3 and 99 % of values within 1 (torchvision's
    bilinear and timm's bicubic on PIL round in uint8 at each pass, TensorFlow in float once); a few
    pixels at sharp edges differ by up to 12 with bicubic, where PIL clips each of its two passes."""
    view = registry.lookup(name).eval_view
    for i, file in enumerate(reference["files"]):
        difference = np.abs(ours(VIEWS / str(file), view) - reference[name][i].astype(np.float32))
        assert difference.mean() < 0.3, (name, file, difference.mean())
        assert np.percentile(difference, 99) <= 1.0, (name, file)
        assert difference.max() <= 12, (name, file, difference.max())


def test_the_default_view_is_not_torchvisions_v2_view(reference):
    """The test above can fail: the 0.875 bilinear crop of our own models is 50 levels off V2's."""
    name = "torchvision:resnet50.IMAGENET1K_V2"
    difference = np.abs(ours(VIEWS / str(reference["files"][0]), EvalView()) - reference[name][0])
    assert difference.mean() > 10


def test_jpegs_decode_to_pils_pixels():
    from PIL import Image

    for path in sorted(VIEWS.glob("*.jpg")):
        decoded = preprocessing.decode_image(tf.io.read_file(str(path))).numpy()
        np.testing.assert_array_equal(decoded, np.asarray(Image.open(path).convert("RGB")))


def test_weight_sets_record_the_publishers_view():
    v2 = registry.lookup("torchvision:resnet50.IMAGENET1K_V2").eval_view
    assert (v2.resize(224), v2.interpolation) == (232, "bilinear")
    assert registry.lookup("torchvision:resnet50.IMAGENET1K_V1").eval_view.resize(224) == 256
    timm = registry.lookup("timm:resnet50.a1_in1k").eval_view
    assert (timm.resize(224), timm.interpolation) == (235, "bicubic")  # floor(224 / 0.95), as timm
    assert EvalView().resize(224) == 256 and EvalView().resize(32) == 37  # ours: round(size / 0.875)


def test_the_view_round_trips_through_config_json():
    config = ModelConfig(depth=50, eval_view=EvalView(224 / 232, "bilinear", "torchvision"))
    stored = json.loads(config.to_json())
    assert stored["eval_view"] == {"crop_fraction": 224 / 232, "interpolation": "bilinear", "convention": "torchvision"}
    assert ModelConfig.from_json(config.to_json()) == config
    old = {k: v for k, v in ModelConfig(depth=50).to_dict().items() if k != "eval_view"}  # runs before it
    assert ModelConfig.from_dict(old).eval_view == EvalView()


@pytest.mark.parametrize(
    "value, message",
    [
        ({"crop_fraction": 1.5}, "crop_fraction"),
        ({"interpolation": "lanczos"}, "bilinear or bicubic"),
        ({"convention": "pil"}, "resnet_keras or torchvision"),
        ({"crop": 0.9}, "unknown eval_view config keys"),
    ],
)
def test_a_bad_view_in_config_json_is_named(value, message):
    from resnet_keras.core.errors import ConfigError

    data = dict(ModelConfig(depth=50).to_dict(), eval_view=value)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_a_run_from_a_weight_set_evaluates_and_exports_with_its_view(tmp_path, monkeypatch):
    """Fine-tuned from timm's weights (seeded, from the hub cache), the run records timm's view in
    config.json; the SavedModel's serving_bytes and the TFLite sidecar use and state it."""
    import keras
    from test_torch_weights import fixture, hf_cache_with

    from resnet_keras.data.pipeline import DataConfig
    from resnet_keras.pretrained import finetune, resolve
    from resnet_keras.serving import export
    from resnet_keras.training.train import TrainConfig, train

    _, _, state = fixture("timm_resnet18")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache_with(tmp_path, "resnet18.a1_in1k", state)))
    init = resolve.normalize("timm:resnet18.a1_in1k")
    config = finetune.model_config_for(init, num_classes=3, image_size=72)
    assert config.eval_view == EvalView(0.95, "bicubic", "torchvision")
    data = DataConfig(dataset="synthetic", synthetic_classes=3, synthetic_examples=32)
    run = tmp_path / "run"
    train(
        config,
        data,
        TrainConfig(family="imagenet", epochs=1, batch_size=16, steps_per_epoch=1, init_from=init, freeze="backbone"),
        run,
        log=lambda _: None,
    )
    stored = json.loads((run / "config.json").read_text())["model"]["eval_view"]
    assert stored == {"crop_fraction": 0.95, "interpolation": "bicubic", "convention": "torchvision"}

    # The seeded weights give logits in the hundreds: a head scaled down keeps the probabilities
    # sensitive to the pixels, so a different crop shows.
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    head = model.get_layer("predictions")
    head.kernel.assign(head.kernel * 1e-3)
    model.save(run / "model.keras")
    report = export.export_saved_model(run, tmp_path / "served", log=lambda _: None)
    served = tf.saved_model.load(report["path"]).signatures[export.BYTES_SIGNATURE]
    jpeg = (VIEWS / "portrait.jpg").read_bytes()
    got = served(**{export.BYTES_INPUT: tf.constant([jpeg])})["probabilities"].numpy()
    assert got.max() < 0.99
    image = preprocessing.decode_image(tf.constant(jpeg))
    for view, close in ((config.eval_view, True), (EvalView(), False)):
        pixels = preprocessing.eval_view("imagenet", 72, view)(image)[None]
        expected = tf.nn.softmax(model(pixels, training=False)).numpy()
        assert np.allclose(got, expected, atol=1e-5) == close, view

    export.export_tflite(run, tmp_path / "m.tflite", eval_samples=8, log=lambda _: None)
    sidecar = json.loads((tmp_path / "m.tflite.json").read_text())["eval_view"]
    assert (sidecar["resize"], sidecar["crop"], sidecar["interpolation"]) == (75, 72, "bicubic")  # floor(72 / 0.95)
    assert sidecar["mean"] == [123.675, 116.28, 103.53]
