"""The weights installed with the package (`resnet-keras:resnet20.cifar10`): they load with no network and
no cache, their card agrees with the registry, `predict` uses them with no file of the user's, and they
score what the registry says on the held-out images of the run that trained them."""

import json
import socket
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIXTURES, REPO

from resnet_keras.cli.main import cli
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained import registry, shipped
from resnet_keras.pretrained.resolve import create_model, kind_of, resolve

NAME = "resnet-keras:resnet20.cifar10"
WEIGHT_SET = registry.REGISTRY[NAME]
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-train.tar.gz"
PER_CLASS = 5000  # the archive: 5,000 training images a class, NNNN.jpg


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty publisher caches: anything that would fetch a file fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("the installed weights tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for variable in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "KAGGLEHUB_CACHE", "KERAS_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))


def held_out_fixture_images():
    """The repository's CIFAR-10 JPEGs (tests/fixtures/cifar10-mini, images 0000-0119 of each class, the same
    files as the archive's) that the run held out: `--validation-fraction 0.1` on the archive's listing."""
    from resnet_keras.data.sources import SPLIT_SEED, _carve

    _, held = _carve(np.repeat(np.arange(len(CIFAR10)), PER_CLASS), 0.1, SPLIT_SEED)
    found = []
    for index in sorted(held):
        label, number = divmod(int(index), PER_CLASS)
        for split in ("train", "val"):
            path = FIXTURES / "cifar10-mini" / split / CIFAR10[label] / f"{number:04d}.jpg"
            if path.is_file():
                found.append((path, label))
    return found


def test_the_card_agrees_with_the_registry_and_the_file():
    card = shipped.card(WEIGHT_SET)
    assert card["name"] == NAME
    assert tuple(card["labels"]) == CIFAR10
    assert shipped.sha256(shipped.weights_file(WEIGHT_SET)) == card["sha256"]
    assert (WEIGHT_SET.top1, WEIGHT_SET.top5) == (card["val"]["top1"], card["val"]["top5"])
    assert card["val"]["images"] == 5000 and card["val"]["split"]["validation_fraction"] == 0.1
    assert card["trained"]["recipe"] == "paper" and card["trained"]["batch_size"] == 128
    if card["trained"].get("selected_on_val"):  # chosen on the images it is scored on: the entry says so
        last = card["trained"]["last_epoch_val_top1"]
        assert last <= WEIGHT_SET.top1 and f"{last:.2f} %" in WEIGHT_SET.evaluated_on
        assert f"epoch ({card['trained']['epoch']} of {card['trained']['epochs_done']})" in WEIGHT_SET.evaluated_on
    config = shipped.model_config(WEIGHT_SET)
    assert (config.depth, config.family, config.shortcut, config.num_classes) == (20, "cifar", "A", 10)


def test_create_model_loads_them_offline(offline):
    model = create_model("resnet20", weights="cifar10")
    import keras

    from resnet_keras.zoo.models import count_parameters

    assert count_parameters(model)[0] == 269_722  # trainable: the paper's 0.27M

    reference = create_model("resnet20")
    reference.load_weights(str(shipped.weights_file(WEIGHT_SET)))
    for ours, theirs in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # A new head for another task keeps the trained backbone.
    other = create_model("resnet20", weights=NAME, num_classes=3)
    assert other.get_layer("predictions").units == 3
    np.testing.assert_array_equal(
        other.get_layer("conv1_conv").get_weights()[0], model.get_layer("conv1_conv").get_weights()[0]
    )
    keras.backend.clear_session()


def test_names_and_their_errors(tmp_path, monkeypatch):
    assert resolve("cifar10", depth=20).weight_set is WEIGHT_SET
    assert registry.lookup("resnet-keras:cifar10") is WEIGHT_SET
    with pytest.raises(UsageError, match="resnet-keras:resnet20.cifar10"):
        create_model("resnet56", weights="cifar10")  # only ResNet-20 is shipped; the error lists what is
    with pytest.raises(UsageError, match="not a known weight set"):
        resolve("resnet-keras:resnet20.cifar100")
    # A folder of images named cifar10 (a common --data-dir) does not hide the name; a run directory does.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10" / "train").mkdir(parents=True)
    assert kind_of("cifar10") == "ours" and resolve("cifar10", depth=20).weight_set is WEIGHT_SET
    (tmp_path / "cifar10" / "config.json").write_text("{}")
    with pytest.raises(UsageError):
        resolve("cifar10", depth=20)  # now it is read as the (broken) run directory it is


def test_a_missing_or_damaged_install_is_named(tmp_path, monkeypatch):
    card = (shipped.DIRECTORY / "resnet20-cifar10.json").read_text()
    monkeypatch.setattr(shipped, "DIRECTORY", tmp_path)
    with pytest.raises(UsageError, match="missing from this installation"):
        create_model("resnet20", weights="cifar10")
    (tmp_path / WEIGHT_SET.file).write_bytes(b"not the weights")
    (tmp_path / "resnet20-cifar10.json").write_text(card)
    with pytest.raises(UsageError, match="SHA-256"):
        create_model("resnet20", weights="cifar10")


def test_info_lists_them():
    result = CliRunner().invoke(cli, ["info", "--weights", "--json"])
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.output) if r["name"] == NAME)
    assert row["top1"] == WEIGHT_SET.top1 and "installed with the package" in row["note"]


@pytest.mark.slow
def test_predict_needs_no_file_of_the_users(offline):
    """`resnet-keras predict cifar10 IMAGES`: the held-out CIFAR-10 JPEGs kept with the tests (117 of them)
    score the registry's accuracy within the binomial spread of that many images (3.3 standard deviations)."""
    images = held_out_fixture_images()
    assert len(images) > 100
    result = CliRunner().invoke(cli, ["predict", "cifar10", *[str(p) for p, _ in images], "--json", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["image"] for r in out] == [str(p) for p, _ in images]
    assert all(len(r["predictions"]) == 3 and r["predictions"][0]["label"] in CIFAR10 for r in out)
    accuracy = np.mean([r["predictions"][0]["index"] == label for r, (_, label) in zip(out, images)])
    p = WEIGHT_SET.top1 / 100
    assert abs(accuracy - p) <= 3.3 * np.sqrt(p * (1 - p) / len(images)), (accuracy, p)
    assert accuracy > 0.5  # far above the 10 % of chance whatever the registry says
    # A name that is no installed set is a usage error, not a traceback.
    result = CliRunner().invoke(cli, ["predict", "cifar100", str(images[0][0])])
    assert result.exit_code == 2 and "installed with the package (cifar10)" in result.output


@pytest.mark.slow
@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"needs {ARCHIVE} (the shared CIFAR-10 training split)")
def test_they_score_the_registry_accuracy_on_the_held_out_split(tmp_path, offline):
    """The 5,000 images `--validation-fraction 0.1` held out of ../shared's CIFAR-10 training split, read by
    the product's own pipeline: the count of correct answers is the card's (2 images of slack for float
    rounding on another CPU), and the fixture images above are among them."""
    from resnet_keras.config.schema import DataConfig
    from resnet_keras.data.pipeline import make_dataset
    from resnet_keras.data.sources import open_source

    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, filter="data")
    config = DataConfig(dataset="folder", data_dir=str(tmp_path / "cifar10"), validation_fraction=0.1)
    files = open_source(config).split("val", 32).files
    held = {(p.parent.name, p.name) for p, _ in held_out_fixture_images()}
    assert held <= {(f.split("/")[-2], f.split("/")[-1]) for f in files}
    model = create_model("resnet20", weights="cifar10")
    correct = total = 0
    for images, labels in make_dataset(config, "val", image_size=32, batch_size=500, training=False):
        correct += int((np.argmax(model(images, training=False).numpy(), 1) == labels.numpy()).sum())
        total += len(labels)
    card = shipped.card(WEIGHT_SET)["val"]
    assert total == card["images"] == 5000
    assert abs(correct - card["correct"]) <= 2, (correct, card["correct"])
    assert abs(100 * correct / total - WEIGHT_SET.top1) <= 0.05
