"""PyTorch weight import (torchvision, timm): exact parity, named weight sets, bad files.

`.pth` files without PyTorch: tests/fixtures/torch/state_dict_mixed.pth is torch.save's own archive
of every dtype and layout a state dict holds, state_dict_mixed.npz the arrays PyTorch held; our
reader must give exactly those. Hostile archives are written here by hand (zipfile and pickle
opcodes), and full-size torchvision/timm `.pth` files are made with torch.save where PyTorch is
installed (never in CI).

Parity without PyTorch: `scripts/make_torch_fixtures.py` filled torchvision's and timm's own
models with `seeded_state_dict` (numpy, seeded per key) and saved their logits and pooled stage
outputs on two seeded 64x64 images (tests/fixtures/torch/*.npz, with the models' real state-dict
keys and shapes). Here the same state dict is made again, written as a `.safetensors` file (the
hub format), imported and run: relative error below 1e-4, as for the keras.applications import.
"""

import json
import pickle
import struct
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from resnet_keras import create_model
from resnet_keras.cli.main import cli
from resnet_keras.core import network
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained import download, finetune, resolve
from resnet_keras.pretrained import registry as weight_sets
from resnet_keras.pretrained import state_dicts as torch_weights

FIXTURES = Path(__file__).parent / "fixtures" / "torch"
SIZE = 64
TOLERANCE = 1e-4  # relative to the largest magnitude of the reference


def fixture(name):
    data = np.load(FIXTURES / f"{name}.npz")
    shapes = dict(zip(data["keys"].tolist(), json.loads(str(data["shapes"]))))
    return data, shapes, torch_weights.seeded_state_dict(shapes, int(data["seed"]))


def seeded_images(seed):
    return np.random.default_rng(seed).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)


def relative_error(got, reference):
    return float(np.abs(got - reference).max() / np.abs(reference).max())


def outputs(model, config, images):
    """Logits and each stage's globally pooled output (torchvision's layer1..4 = our conv2..5)."""
    stages = {
        f"conv{i}": keras.layers.GlobalAveragePooling2D()(model.get_layer(f"conv{i}_block{stage.blocks}_out").output)
        for i, stage in enumerate(config.stages, start=2)
    }
    return keras.Model(model.input, {"logits": model.output, **stages}).predict(images, verbose=0)


def check_against_reference(model, config, data):
    images = seeded_images(int(data["seed"]))
    got = outputs(model, config, images)
    assert np.abs(data["logits"]).max() > 1.0  # a real signal, not all zeros
    for name in ("logits", "conv2", "conv3", "conv4", "conv5"):
        assert got[name].shape == data[name].shape, name
        assert relative_error(got[name], data[name]) < TOLERANCE, name


def write(state, path):
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    data, _, state = fixture("torchvision_resnet18")
    return write(state, tmp_path_factory.mktemp("r18") / "resnet18.safetensors"), data


@pytest.mark.parametrize(
    "name",
    [
        "torchvision_resnet18",
        "torchvision_resnet50",
        "timm_resnet50",
        pytest.param("torchvision_resnet34", marks=pytest.mark.slow),
        pytest.param("torchvision_resnet101", marks=pytest.mark.extended),
        pytest.param("torchvision_resnet152", marks=pytest.mark.extended),
        pytest.param("timm_resnet18", marks=pytest.mark.slow),
    ],
)
def test_import_matches_pytorch_reference(name, tmp_path):
    data, shapes, state = fixture(name)
    images = seeded_images(int(data["seed"]))
    total = sum(np.abs(v.astype(np.float64)).sum() for v in state.values()) + images.sum()
    assert total == pytest.approx(float(data["checksum"]), rel=1e-9), "numpy's generator no longer makes the fixture"
    source = resolve.resolve(str(write(state, tmp_path / f"{name}.safetensors")))
    # Our key list is the real model's (torchvision 0.29 / timm 1.0), not one we invented.
    assert torch_weights.expected_keys(source.config) == [k for k in shapes if not k.endswith("num_batches_tracked")]
    assert source.config.name == name.split("_")[1] + ("_v1.5" if source.config.depth >= 50 else "")
    model, config = resolve.build(source, image_size=SIZE)
    check_against_reference(model, config, data)


def test_a_transposed_kernel_breaks_parity(resnet18_file):
    """Guards the test itself: kernels with height and width swapped must be visibly wrong."""
    path, data = resnet18_file
    source = resolve.resolve(str(path))
    model, config = resolve.build(source, image_size=SIZE)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel.shape[0] == 3:
            layer.kernel.assign(np.transpose(layer.kernel.numpy(), (1, 0, 2, 3)))
    got = outputs(model, config, seeded_images(int(data["seed"])))
    assert relative_error(got["logits"], data["logits"]) > 1e-2


def test_convert_cli_writes_an_exact_keras_model(resnet18_file, tmp_path):
    path, data = resnet18_file
    output = tmp_path / "r18.keras"
    result = CliRunner().invoke(cli, ["convert", str(path), "--output", str(output), "--image-size", str(SIZE)])
    assert result.exit_code == 0, result.output
    assert "as resnet18" in result.output and "ImageNet mean/std inside" in result.output
    loaded = keras.saving.load_model(output, safe_mode=True, compile=False)
    logits = loaded.predict(seeded_images(int(data["seed"])), verbose=0)
    assert relative_error(logits, data["logits"]) < TOLERANCE
    again = CliRunner().invoke(cli, ["convert", str(path), "--output", str(output)])
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output


def hf_cache_with(tmp_path, repo, state):
    """A Hugging Face hub cache as huggingface_hub lays it out, holding `state` for `repo`."""
    cache = tmp_path / "hf" / "hub"
    snapshot = cache / f"models--timm--{repo}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    write(state, snapshot / "model.safetensors")
    (cache / f"models--timm--{repo}" / "refs").mkdir()
    (cache / f"models--timm--{repo}" / "refs" / "main").write_text("0123abcd")
    return cache


def test_named_timm_weights_come_from_the_hub_cache_offline(tmp_path, monkeypatch):
    data, _, state = fixture("timm_resnet18")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache_with(tmp_path, "resnet18.a1_in1k", state)))
    monkeypatch.setattr(network, "network_available", lambda *a, **k: pytest.fail("must not touch the network"))
    model = create_model("resnet18", weights="timm:a1_in1k", image_size=SIZE)
    check_against_reference(model, torch_weights.model_config(18, image_size=SIZE), data)
    # The head is replaced, the backbone kept, when the classes differ.
    ten = create_model("resnet18", weights="timm:resnet18.a1_in1k", image_size=SIZE, num_classes=10)
    assert ten.output.shape[-1] == 10
    np.testing.assert_array_equal(
        ten.get_layer("conv5_block2_2_conv").kernel.numpy(), model.get_layer("conv5_block2_2_conv").kernel.numpy()
    )
    with pytest.raises(UsageError, match=r"variant='v2' \(weights: 'v1'\)"):
        create_model("resnet18_v2", weights="timm:a1_in1k")
    with pytest.raises(UsageError, match="holds ResNet-18 weights; expected ResNet-50|expected weights for resnet50"):
        create_model("resnet50", weights="timm:resnet18.a1_in1k")


def test_named_weights_offline_without_a_file_say_where_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(network, "network_available", lambda *a, **k: False)
    start = time.perf_counter()
    result = CliRunner().invoke(
        cli, ["convert", "torchvision:resnet50.IMAGENET1K_V2", "--output", str(tmp_path / "x.keras")]
    )
    assert time.perf_counter() - start < 5
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "no network" in line and str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in line
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in line
    assert not (tmp_path / "x.keras").exists()


def test_download_lands_in_the_torch_cache_only_with_the_right_hash(tmp_path, monkeypatch):
    """The download step, against a file server on loopback (there is no other network here)."""
    import dataclasses
    import functools
    import hashlib
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    payload = b"weights" * 1000
    good = f"resnet18-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    (served / good).write_bytes(payload)
    (served / "resnet18-00000000.pth").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    base = weight_sets.lookup("torchvision:resnet18")
    try:
        for name, ok in ((good, True), ("resnet18-00000000.pth", False)):
            url = f"http://127.0.0.1:{server.server_port}/{name}"
            weight_set = dataclasses.replace(base, file=name, url=url)
            if ok:
                path = download.weights_file(weight_set, log=lambda _: None)
                assert path == str(tmp_path / "torch" / "hub" / "checkpoints" / good)
                assert open(path, "rb").read() == payload
            else:
                with pytest.raises(UsageError, match="SHA-256 does not start with 00000000; not kept"):
                    download.weights_file(weight_set, log=lambda _: None)
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in (tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == [good]


def test_names_resolve_through_the_registry():
    assert weight_sets.lookup("torchvision:DEFAULT", depth=50).file == "resnet50-11ad3fa6.pth"
    assert weight_sets.lookup("torchvision:resnet18").tag == "IMAGENET1K_V1"
    assert weight_sets.lookup("torchvision:IMAGENET1K_V1", depth=152).top1 == 78.312
    assert weight_sets.lookup("timm:resnet50").tag == "a1_in1k"
    with pytest.raises(UsageError, match="a tag without an architecture"):
        weight_sets.lookup("torchvision:IMAGENET1K_V2")
    with pytest.raises(UsageError, match="not a known weight set"):
        weight_sets.lookup("torchvision:resnet18.IMAGENET1K_V2")


def test_info_lists_weight_sets_with_published_accuracy():
    result = CliRunner().invoke(cli, ["info", "--weights"])
    assert result.exit_code == 0, result.output
    line = next(ly for ly in result.output.splitlines() if ly.startswith("torchvision:resnet50.IMAGENET1K_V2 "))
    assert "80.858" in line and "95.434" in line and "resize 232" in line
    rows = json.loads(CliRunner().invoke(cli, ["info", "--weights", "--json"]).output)
    by_name = {row["name"]: row for row in rows}
    assert by_name["timm:resnet50.a1_in1k"]["top1"] == 80.382
    assert not by_name["timm:resnet50d.ra2_in1k"]["supported"]
    assert by_name["resnet50"]["top1"] == 74.9  # keras.applications' own


def test_finetuning_source_and_features_take_torch_weights(resnet18_file, tmp_path):
    path, _ = resnet18_file
    init = resolve.normalize(str(path))
    config = finetune.model_config_for(init, num_classes=3, image_size=SIZE)
    assert (config.depth, config.variant, config.stem, config.num_classes) == (18, "v1", "imagenet", 3)
    values = finetune.read_init_weights(init, config, log=lambda _: None)
    expected = resolve.load(resolve.resolve(str(path)), include_top=False)
    assert sorted(values) == sorted(expected)
    np.testing.assert_array_equal(values["conv4_block1_0_conv"][0], expected["conv4_block1_0_conv"][0])
    assert resolve.normalize("torchvision:IMAGENET1K_V2") == "torchvision:IMAGENET1K_V2"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--dataset",
            "digits",
            "--init-from",
            str(path),
            "--depth",
            "50",
            "--model-dir",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"Error: {path} holds ResNet-18 weights; expected ResNet-50"
    ], result.output
    assert not (tmp_path / "run").exists()


def test_train_init_from_a_named_weight_set(tmp_path, monkeypatch):
    from resnet_keras.data.pipeline import DataConfig
    from resnet_keras.training.train import TrainConfig, train

    _, _, state = fixture("timm_resnet18")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache_with(tmp_path, "resnet18.a1_in1k", state)))
    init = resolve.normalize("timm:a1_in1k")
    config = finetune.model_config_for(init, num_classes=3, image_size=32, depth=18)
    data = DataConfig(dataset="synthetic", synthetic_classes=3, synthetic_examples=96)
    run = tmp_path / "run"
    train(
        config,
        data,
        TrainConfig(family="imagenet", epochs=1, batch_size=32, steps_per_epoch=2, init_from=init, freeze="backbone"),
        run,
        log=lambda _: None,
    )
    trained = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    assert trained.output.shape[-1] == 3
    assert trained.get_layer("normalize").get_config()["mean"] == [123.675, 116.28, 103.53]
    assert json.loads((run / "config.json").read_text())["train"]["init_from"] == "timm:a1_in1k"
    # The backbone was frozen, so it still holds the file's weights exactly.
    kernel = trained.get_layer("conv5_block2_2_conv").kernel.numpy()
    np.testing.assert_array_equal(kernel, state["layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(trained.get_layer("conv1_bn").moving_mean.numpy(), state["bn1.running_mean"])


@pytest.mark.slow
def test_export_features_of_torch_weights_match_the_reference(resnet18_file, tmp_path):
    import tensorflow as tf

    path, data = resnet18_file
    output = tmp_path / "features"
    result = CliRunner().invoke(cli, ["export-features", str(path), "--output", str(output), "--image-size", str(SIZE)])
    assert result.exit_code == 0, result.output
    loaded = tf.saved_model.load(str(output))
    images = tf.constant(seeded_images(int(data["seed"])))
    embedding = loaded.signatures["serving_default"](image=images)["embedding"].numpy()
    stages = loaded.signatures["stage_features"](image=images)
    assert relative_error(embedding, data["conv5"]) < TOLERANCE
    for name in ("conv2", "conv3", "conv4"):
        assert relative_error(stages[f"{name}_pool"].numpy(), data[name]) < TOLERANCE, name


# ----------------------------------------------------------------------------- bad input


def variant_state(arch):
    shapes = json.loads((FIXTURES / "timm_variants.json").read_text())[arch]
    return torch_weights.seeded_state_dict(shapes, 0)


def test_bad_weights_files_are_one_line_exit_2_and_write_nothing(resnet18_file, tmp_path, monkeypatch):
    _, _, r18 = fixture("torchvision_resnet18")
    missing = {k: v for k, v in r18.items() if k != "layer3.1.bn2.running_var"}
    extra = {**r18, "layer1.0.extra.weight": np.zeros(3, np.float32)}
    narrow = {**r18, "conv1.weight": np.zeros((32, 3, 7, 7), np.float32)}
    good = resnet18_file[0].read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    pickled = (FIXTURES / "not_weights_only.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(pickled[: len(pickled) // 2])
    cases = [
        (write(variant_state("resnet50d"), tmp_path / "r50d.safetensors"), "a deep 3x3 stem (ResNet-C/D)"),
        (write(variant_state("seresnet50"), tmp_path / "se50.safetensors"), "squeeze-and-excitation"),
        (write(missing, tmp_path / "missing.safetensors"), "does not fit resnet18: layer3.1.bn2.running_var missing"),
        (write(extra, tmp_path / "extra.safetensors"), "does not fit resnet18: layer1.0.extra.weight unexpected"),
        (
            write(narrow, tmp_path / "narrow.safetensors"),
            "layer conv1_conv has shapes [(7, 7, 3, 32)], expected [(7, 7, 3, 64)]",
        ),
        (tmp_path / "truncated.safetensors", "is not a readable safetensors file"),
        (FIXTURES / "not_weights_only.pth", "not a weights-only PyTorch file: its pickle imports __main__.NotWeights"),
        (tmp_path / "truncated.pth", "is not a PyTorch weights file (no zip archive inside; truncated?)"),
        (tmp_path / "absent.safetensors", "does not exist"),
        ("timm:seresnet50.ra2_in1k", "SE-ResNet (squeeze-and-excitation blocks) is not in our zoo yet"),
    ]
    for source, message in cases:
        output = tmp_path / "out.keras"
        result = CliRunner().invoke(cli, ["convert", str(source), "--output", str(output), "--image-size", str(SIZE)])
        assert result.exit_code == 2, (source, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], (message, result.output)
        assert not output.exists() and not list(tmp_path.glob(".out*"))
    # Without PyTorch, a torch.save archive loads (our own unpickler); only the legacy format needs it.
    monkeypatch.setitem(sys.modules, "torch", None)
    check_mixed_fixture(torch_weights.read_state_dict(FIXTURES / "state_dict_mixed.pth"))
    result = CliRunner().invoke(
        cli, ["convert", str(FIXTURES / "legacy_format.pth"), "--output", str(tmp_path / "o.keras")]
    )
    assert result.exit_code == 2 and "needs PyTorch (pip install 'resnet-keras[torch]')" in result.output, result.output
    assert "legacy format (before 1.6, not a zip archive)" in result.output and len(result.output.splitlines()) == 1


def check_mixed_fixture(state):
    expected = np.load(FIXTURES / "state_dict_mixed.npz")
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        got, want = state[key], expected[key]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        np.testing.assert_array_equal(got, want, err_msg=key)


def test_torch_save_archives_read_without_pytorch(monkeypatch):
    """float32/16, bfloat16, float64, int64/32, uint16 (torch's newer UntypedStorage form), bool, a
    Parameter, a transposed view, slices sharing a storage at offsets, a 0-d counter, an empty tensor."""
    monkeypatch.setitem(sys.modules, "torch", None)
    state = torch_weights.read_state_dict(FIXTURES / "state_dict_mixed.pth")
    check_mixed_fixture(state)
    assert state["bn1.running_mean"].dtype == state["bn1.running_var"].dtype == np.float32  # float16, bfloat16
    assert state["bn1.num_batches_tracked"].shape == () and state["bn1.num_batches_tracked"] == 7
    assert state["fc.weight"].strides == (4, 20)  # a view of the memory-mapped storage, not a copy
    assert not state["fc.weight"].flags.writeable
    assert {"double": np.float64, "uint16": np.uint16, "mask": np.bool_}.items() <= {
        k: v.dtype.type for k, v in state.items()
    }.items()
    assert torch_weights.check_weights_only(FIXTURES / "state_dict_mixed.pth") is None


def from_skeleton(name, state, path):
    """torch.save's archive of the seeded `name` state dict, its storages put back (stored, unaligned)."""
    with zipfile.ZipFile(FIXTURES / f"{name}.pth-skeleton.zip") as skeleton, zipfile.ZipFile(path, "w") as archive:
        storages = json.loads(skeleton.read("storages.json"))
        for info in skeleton.infolist():
            if info.filename != "storages.json":
                archive.writestr(info.filename, skeleton.read(info))
        for key, owner in storages.items():
            archive.writestr(f"{name}/data/{key}", state[owner].astype(state[owner].dtype.newbyteorder("<")).tobytes())
    return path


@pytest.mark.parametrize("name", ["torchvision_resnet18", "timm_resnet50"])
def test_real_torch_save_resnet_files_import_exactly_without_pytorch(name, tmp_path, monkeypatch):
    """torchvision's ResNet-18 and timm's ResNet-50 as torch.save wrote them (their data.pkl), read
    with PyTorch blocked, give the reference logits."""
    monkeypatch.setitem(sys.modules, "torch", None)
    data, shapes, state = fixture(name)
    path = from_skeleton(name, state, tmp_path / f"{name}.pth")
    got = torch_weights.read_state_dict(path)
    assert list(got) == list(shapes)  # torch.save's key order: the model's
    for key, value in state.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    result = CliRunner().invoke(
        cli, ["convert", str(path), "--output", str(tmp_path / "m.keras"), "--image-size", str(SIZE)]
    )
    assert result.exit_code == 0, result.output
    model = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    logits = model.predict(seeded_images(int(data["seed"])), verbose=0)
    assert relative_error(logits, data["logits"]) < TOLERANCE


def test_compressed_members_are_read_once(tmp_path):
    """torch.save never compresses (storages are memory-mapped); a re-zipped archive still reads."""
    path = tmp_path / "deflated.pth"
    with zipfile.ZipFile(FIXTURES / "state_dict_mixed.pth") as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
    check_mixed_fixture(torch_weights.read_state_dict(path))


def test_safetensors_bf16_reads_as_float32(tmp_path):
    """numpy has no bfloat16 (the safetensors package's numpy API refuses BF16): read by hand."""
    values = np.array([[1.0, -2.5, 3.140625], [0.0, 1e-3, -65280.0]], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    other = np.arange(3, dtype=np.int64)
    header = {
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
        "n": {"dtype": "I64", "shape": [3], "data_offsets": [16, 40]},
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bf16.tobytes() + b"\0" * 4 + other.astype("<i8").tobytes())
    state = torch_weights.read_state_dict(path)
    assert state["w"].dtype == np.float32
    np.testing.assert_array_equal(state["w"], (bf16.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_allclose(state["w"], values, rtol=1 / 128)
    np.testing.assert_array_equal(state["n"], other)
    header["n"]["data_offsets"] = [16, 48]  # past the end of the file
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bf16.tobytes() + b"\0" * 4 + other.tobytes())
    with pytest.raises(UsageError, match="is not a readable safetensors file"):
        torch_weights.read_state_dict(path)


# Hand-written pickles (protocol 2 opcodes) and archives laid out as torch.save writes them.


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    if 0 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def tensor_pickle(tensors, after=b""):
    """data.pkl of {key: (storage type, storage key, numel, offset, size, stride)}, as torch.save writes it
    (`after`: opcodes applied to each tensor once it is built)."""
    body = b""
    for key, (kind, storage, numel, offset, size, stride) in tensors.items():
        persistent_id = _tuple([_str("storage"), f"ctorch\n{kind}\n".encode(), _str(storage), _str("cpu"), _int(numel)])
        body += _str(key) + b"ctorch._utils\n_rebuild_tensor_v2\n"
        body += _tuple(
            [
                persistent_id + b"Q",
                _int(offset),
                _tuple(map(_int, size)),
                _tuple(map(_int, stride)),
                b"\x89",  # requires_grad False
                b"ccollections\nOrderedDict\n)R",  # backward hooks
            ]
        )
        body += b"R" + after
    return b"\x80\x02}(" + body + b"u."


def torch_archive(path, pickled, storages, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data, compress_type=compress)
        archive.writestr("archive/version", "3\n")
    return path


def declare_size(path, member, size):
    """Rewrites the uncompressed size a zip declares for `member` (central directory and local header)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    central = data.rindex(name) - 46
    local = data.index(name) - 30
    assert data[central : central + 4] == b"PK\x01\x02" and data[local : local + 4] == b"PK\x03\x04"
    data[central + 24 : central + 28] = struct.pack("<I", size)
    data[local + 22 : local + 26] = struct.pack("<I", size)
    path.write_bytes(bytes(data))
    return path


class RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_hand_made_archives_read_and_hostile_ones_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    four = np.arange(4, dtype="<f4").tobytes()
    good = torch_archive(
        tmp_path / "good.pth",
        tensor_pickle({"a": ("FloatStorage", "0", 4, 1, (3,), (1,)), "b": ("FloatStorage", "0", 4, 0, (2, 2), (1, 2))}),
        {"0": four},
    )
    state = torch_weights.read_state_dict(good)  # the builders make what the reader reads
    np.testing.assert_array_equal(state["a"], [1, 2, 3])
    np.testing.assert_array_equal(state["b"], [[0, 2], [1, 3]])

    ran = tmp_path / "ran"
    system = b"\x80\x02cposix\nsystem\n" + _str(f"touch {ran}") + b"\x85R."  # GLOBAL + REDUCE
    bomb = np.zeros(1 << 24, np.float32).tobytes()  # 64 MiB of zeros: 65 KiB deflated
    cases = [
        (torch_archive(tmp_path / "system.pth", system, {}), "its pickle imports posix.system"),
        (
            torch_archive(tmp_path / "reduce.pth", pickle.dumps(RunsACommand(f"touch {ran}"), protocol=2), {}),
            "its pickle imports posix.system",
        ),
        (
            torch_archive(
                tmp_path / "numpy.pth",
                b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n" + _tuple([_int(0)]) + b"R.",
                {},
            ),
            "its pickle imports numpy.core.multiarray._reconstruct",
        ),
        (
            torch_archive(
                tmp_path / "offset.pth", tensor_pickle({"a": ("FloatStorage", "0", 4, 3, (4,), (1,))}), {"0": four}
            ),
            "a tensor at offset 3 with shape [4] and stride [1] that reaches element 7 of a storage of 4",
        ),
        (
            torch_archive(
                tmp_path / "stride.pth", tensor_pickle({"a": ("FloatStorage", "0", 4, 0, (2, 2), (3, 1))}), {"0": four}
            ),
            "reaches element 5 of a storage of 4",
        ),
        (
            torch_archive(
                tmp_path / "overflow.pth",
                tensor_pickle({"a": ("FloatStorage", "0", 4, 0, (2**62, 2**62), (0, 0))}),
                {"0": four},
            ),
            f"a tensor of shape [{2**62}, {2**62}] ({2**124} elements) on a storage of 4, which is absurd",
        ),
        (
            torch_archive(
                tmp_path / "bomb.pth",
                tensor_pickle({"a": ("FloatStorage", "0", 4, 0, (4,), (1,))}),
                {"0": bomb},
                compress=zipfile.ZIP_DEFLATED,
            ),
            "archive/data/0 of 67108864 bytes where its storage declares 16 (a zip bomb or a damaged archive?)",
        ),
        (
            declare_size(
                torch_archive(
                    tmp_path / "declared.pth",
                    tensor_pickle({"a": ("FloatStorage", "0", 2**29, 0, (2**29,), (1,))}),
                    {"0": four},
                    compress=zipfile.ZIP_DEFLATED,
                ),
                "archive/data/0",
                2**31,
            ),
            "its compressed tensors would inflate to 2147483648 bytes",
        ),
        (
            torch_archive(
                tmp_path / "missing.pth", tensor_pickle({"a": ("FloatStorage", "7", 4, 0, (4,), (1,))}), {"0": four}
            ),
            "a tensor in archive/data/7, which the archive does not hold",
        ),
        (
            torch_archive(tmp_path / "persid.pth", b"\x80\x02" + _tuple([_str("module"), _str("os")]) + b"Q.", {}),
            "a persistent id ('module', 'os') that is not a tensor storage",
        ),
    ]
    # BUILD (setting attributes) on the reader's own tensor, after its bounds were checked:
    moved = b"N}" + _str("offset") + _int(10**9) + b"s\x86b"
    cases.append(
        (
            torch_archive(
                tmp_path / "build.pth",
                tensor_pickle({"a": ("FloatStorage", "0", 4, 0, (4,), (1,))}, moved),
                {"0": four},
            ),
            "is not a readable PyTorch weights file (a BUILD of a tensor)",
        )
    )
    whole = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(whole[: len(whole) - 30])
    cases.append((tmp_path / "truncated.pth", "is not a PyTorch weights file (no zip archive inside; truncated?)"))
    for source, message in cases:
        output = tmp_path / "out.keras"
        result = CliRunner().invoke(cli, ["convert", str(source), "--output", str(output)])
        assert result.exit_code == 2, (source, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], (message, result.output)
        assert not output.exists() and not ran.exists(), source


def torch_saved(torch, name, path):
    _, shapes, state = fixture(name)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize(
    "name",
    [
        "torchvision_resnet18",
        pytest.param("timm_resnet50", marks=pytest.mark.slow),
        pytest.param("torchvision_resnet152", marks=pytest.mark.extended),
    ],
)
def test_full_size_pth_files_load_without_pytorch(name, tmp_path, monkeypatch):
    """Where PyTorch is installed (never in CI): torch.save's full-size file, read without it, is exact."""
    torch = pytest.importorskip("torch")
    data, _, state = fixture(name)
    path = torch_saved(torch, name, tmp_path / f"{name}.pth")
    expected = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    monkeypatch.setitem(sys.modules, "torch", None)
    got = torch_weights.read_state_dict(path)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    model, config = resolve.build(resolve.resolve(str(path)), image_size=SIZE)
    check_against_reference(model, config, data)
    with pytest.raises(UsageError, match="not a weights-only PyTorch file"):
        torch_weights.read_state_dict(FIXTURES / "not_weights_only.pth")


def test_legacy_pth_files_go_to_torch_load(tmp_path):
    """Where PyTorch is installed (never in CI): the pre-1.6 format still loads, through torch.load."""
    pytest.importorskip("torch")
    state = torch_weights.read_state_dict(FIXTURES / "legacy_format.pth")
    expected = np.load(FIXTURES / "state_dict_mixed.npz")
    for key in ("conv1.weight", "bn1.running_var"):
        np.testing.assert_array_equal(state[key], expected[key])
