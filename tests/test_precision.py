"""The precision choice (`--mixed-precision auto`) from /proc/cpuinfo, and bfloat16 training against float32."""

import csv
import math

import numpy as np
import pytest

from resnet_keras.config.schema import ModelConfig, TrainConfig
from resnet_keras.core import precision
from resnet_keras.data.pipeline import DataConfig

# Abridged /proc/cpuinfo texts of real CPUs (one core each; the kernel prints one block per core).
ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_vp2intersect
"""
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
flags\t\t: fpu sse2 avx avx2 fma f16c bmi2 vaes
"""
NEOVERSE_V1 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm bf16 i8mm sve
"""


@pytest.mark.parametrize(
    "cpuinfo, found",
    [
        (ZEN5, ["AVX512_BF16"]),
        (SAPPHIRE_RAPIDS, ["AVX512_BF16", "AMX-BF16"]),
        (NEOVERSE_V1, ["Arm BF16"]),
        (ZEN3, []),
        ("", []),
    ],
)
def test_native_bfloat16_reads_the_flags(cpuinfo, found):
    assert precision.native_bfloat16(cpuinfo) == found


def test_a_flag_name_inside_another_word_is_not_a_flag():
    assert precision.native_bfloat16("flags\t: avx512_bf16x amx_bf16_not\nmodel name\t: bf16 special\n") == []


def test_auto_picks_bfloat16_where_native_and_says_why():
    choice = precision.resolve("auto", SAPPHIRE_RAPIDS)
    assert choice.name == "bfloat16" and choice.warning is None
    assert "AVX512_BF16" in choice.note and "AMX-BF16" in choice.note
    assert precision.resolve("auto", ZEN5).name == "bfloat16"


def test_auto_keeps_float32_without_native_bfloat16():
    choice = precision.resolve("auto", ZEN3)
    assert choice.name == "none" and choice.warning is None and "float32" in choice.note


def test_explicit_bfloat16_without_native_support_warns_with_its_cost():
    choice = precision.resolve("bfloat16", ZEN3)
    assert choice.name == "bfloat16"
    assert "emulated" in choice.warning and "slower than float32" in choice.warning and "0.077x" in choice.warning
    assert precision.resolve("bfloat16", ZEN5).warning is None
    assert precision.resolve("none", ZEN3) == precision.PrecisionChoice("none", "mixed precision: none")


def test_train_config_records_what_auto_chose(monkeypatch):
    read = precision.cpu_flags
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: read(ZEN5))
    assert TrainConfig(mixed_precision="auto").mixed_precision == "bfloat16"
    assert TrainConfig.from_dict(TrainConfig(mixed_precision="auto").to_dict()).mixed_precision == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: set())
    assert TrainConfig(mixed_precision="auto").mixed_precision == "none"


def test_cli_says_what_auto_chose(monkeypatch, capsys):
    from resnet_keras.cli import options as cli

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx512_bf16"})
    assert cli.resolve_precision("auto") == "bfloat16"
    assert "auto: bfloat16 (this CPU has AVX512_BF16)" in capsys.readouterr().err
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx2"})
    assert cli.resolve_precision("bfloat16") == "bfloat16"
    assert "Warning: this CPU reports no native bfloat16" in capsys.readouterr().err


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.slow
def test_bfloat16_loss_tracks_float32_and_the_float32_export_agrees(tmp_path, image_data):
    """Same seed, same data order: bfloat16's per-epoch training loss stays within 10 % of float32's
    on real CIFAR-10 images, and the float32 export predicts what the bfloat16-trained model does."""
    import keras
    import tensorflow as tf

    from resnet_keras.serving import export as export_lib
    from resnet_keras.training.train import train
    from resnet_keras.zoo.models import build_model, dtype_policy

    model = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
    data = DataConfig(dataset="folder", data_dir=str(image_data / "cifar10-mini"))
    losses = {}
    for name in ("none", "bfloat16"):
        config = TrainConfig(epochs=3, batch_size=64, learning_rate=0.1, mixed_precision=name)
        metrics = train(model, data, config, tmp_path / name, log=lambda _: None)
        assert math.isfinite(metrics["final_loss"])
        with open(tmp_path / name / "history.csv", newline="") as handle:
            losses[name] = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]  # it learns
    for fp32, bf16 in zip(losses["none"], losses["bfloat16"], strict=True):
        assert bf16 == pytest.approx(fp32, rel=0.10), losses

    report = export_lib.export_saved_model(tmp_path / "bfloat16", tmp_path / "saved", log=lambda _: None)
    assert report["max_probability_difference"] <= 1e-4  # the SavedModel is the float32 copy
    trained = export_lib.load_run(tmp_path / "bfloat16")
    assert trained.model.compute_dtype == "float32"
    with dtype_policy("mixed_bfloat16"):
        as_trained = build_model(model)
    as_trained.set_weights(trained.model.get_weights())
    files = sorted((image_data / "cifar10-mini" / "val").glob("*/*.jpg"))[:200]
    pixels = np.stack(
        [tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3), (16, 16)).numpy() for path in files]
    )
    export32 = tf.nn.softmax(trained.model(pixels, training=False)).numpy()
    bf16 = tf.nn.softmax(tf.cast(as_trained(pixels, training=False), tf.float32)).numpy()
    agreement = float(np.mean(export32.argmax(-1) == bf16.argmax(-1)))
    assert agreement >= 0.9 and float(np.abs(export32 - bf16).max()) < 0.1, agreement
    assert keras.mixed_precision.dtype_policy().name == "float32"
