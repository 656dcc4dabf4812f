"""Batch augmentations (resnet_keras.augment): mixup, CutMix and random erasing."""

import numpy as np
import pytest
import tensorflow as tf

from resnet_keras import augment

CLASSES = 5


def constant_batch(n=8, size=16):
    """Image i is filled with the value 10 * (i + 1) and labelled i % CLASSES."""
    values = 10.0 * np.arange(1, n + 1, dtype="float32")
    images = np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).copy()
    return images, np.arange(n, dtype="int32") % CLASSES, values


def key(n):
    return tf.constant([7, n], tf.int64)


def test_cutmix_labels_sum_to_one_and_match_the_pasted_area():
    images, labels, values = constant_batch()
    partner = np.roll(np.arange(len(values)), 1)
    pasted_shares = []
    for n in range(6):
        mixed, targets = (
            np.asarray(t)
            for t in augment.mix_batch(
                images, labels, key(n), num_classes=CLASSES, mixup=0.0, cutmix=1.0, random_erasing=0.0, fill=(0, 0, 0)
            )
        )
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
        for i in range(len(values)):
            own = np.mean(mixed[i] == values[i])
            pasted = np.mean(mixed[i] == values[partner[i]])
            assert own + pasted == pytest.approx(1.0)
            expected = np.zeros(CLASSES)
            expected[labels[i]] += own
            expected[labels[partner[i]]] += pasted
            np.testing.assert_allclose(targets[i], expected, atol=1e-6)
            pasted_shares.append(pasted)
    assert max(pasted_shares) > 0.1  # boxes were pasted


def test_mixup_blends_pixels_with_the_label_weights_and_is_reproducible():
    images, labels, values = constant_batch()
    args = dict(num_classes=CLASSES, mixup=0.4, cutmix=0.0, random_erasing=0.0, fill=(0, 0, 0))
    mixed, targets = (np.asarray(t) for t in augment.mix_batch(images, labels, key(3), **args))
    lam = targets[0, labels[0]]  # class 0 for image 0, class 4 for its partner (image 7)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed[:, 0, 0, 0], lam * values + (1 - lam) * np.roll(values, 1), rtol=1e-5)
    again, _ = augment.mix_batch(images, labels, key(3), **args)
    np.testing.assert_array_equal(np.asarray(again), mixed)  # same key, same batch: resumable
    other, _ = augment.mix_batch(images, labels, key(4), **args)
    assert not np.array_equal(np.asarray(other), mixed)


def test_random_erasing_fills_rectangles_of_the_given_share_with_the_mean():
    n, size, p = 400, 32, 0.5
    images = np.full((n, size, size, 3), 255.0, "float32")
    fill = (100.0, 110.0, 120.0)
    erased = np.asarray(augment.random_erase(tf.constant(images), key(0), p, fill))
    touched = np.any(erased != 255.0, axis=(1, 2, 3))
    assert abs(touched.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    for image in erased[touched][:50]:
        mask = np.all(image == fill, axis=-1)
        rows, cols = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == mask.sum()  # one filled rectangle
        assert 0.01 <= mask.sum() / size**2 <= 0.34
        assert np.all(image[~mask] == 255.0)


def test_apply_keys_batches_by_their_number_so_a_resumed_stream_matches():
    images, labels, _ = constant_batch()
    stream = tf.data.Dataset.from_tensors((images, labels)).repeat(5)
    config = type("C", (), dict(mixup=0.2, cutmix=1.0, random_erasing=0.25, auto_augment="ta_wide"))()
    kwargs = dict(num_classes=CLASSES, fill=(0.0, 0.0, 0.0), seed=3)
    whole = [np.asarray(x) for x, _ in augment.apply(stream, config, **kwargs)]
    resumed = [np.asarray(x) for x, _ in augment.apply(stream.skip(3), config, first_batch=3, **kwargs)]
    for a, b in zip(whole[3:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(whole[0], whole[1])


# PIL is what torchvision's TrivialAugmentWide runs on PIL images; Keras needs Pillow, so it is here.
PIL_OPS = {
    "brightness": lambda im, f: __import__("PIL.ImageEnhance").ImageEnhance.Brightness(im).enhance(f),
    "color": lambda im, f: __import__("PIL.ImageEnhance").ImageEnhance.Color(im).enhance(f),
    "contrast": lambda im, f: __import__("PIL.ImageEnhance").ImageEnhance.Contrast(im).enhance(f),
    "sharpness": lambda im, f: __import__("PIL.ImageEnhance").ImageEnhance.Sharpness(im).enhance(f),
    "posterize": lambda im, bits: __import__("PIL.ImageOps").ImageOps.posterize(im, bits),
    "solarize": lambda im, t: __import__("PIL.ImageOps").ImageOps.solarize(im, t),
    "autocontrast": lambda im, _: __import__("PIL.ImageOps").ImageOps.autocontrast(im),
    "equalize": lambda im, _: __import__("PIL.ImageOps").ImageOps.equalize(im),
    "translate_x": lambda im, t: im.transform(im.size, 0, (1, 0, -t, 0, 1, 0)),
}


@pytest.mark.parametrize("name", sorted(PIL_OPS))
def test_trivial_augment_ops_match_pil(name, shared_data):
    from PIL import Image

    files = sorted((shared_data / "cifar10-mini" / "train").glob("*/*.jpg"))[:4]
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files])
    level, sign = 20, 1.0  # bin 20 of 31
    fraction = level / (augment.MAGNITUDE_BINS - 1)
    argument = {
        "posterize": int(8 - round(level / 5)),
        "solarize": 255.0 * (30 - level) / 30,
        "translate_x": round(32 / 224 * 32 * fraction),
    }.get(name, 1 + 0.99 * fraction)
    op = augment.TRIVIAL_AUGMENT_OPS.index(name)
    n = len(images)
    ours = np.asarray(augment.apply_ops(images.astype("float32"), [op] * n, [level] * n, [sign] * n))
    for image, got in zip(images, ours):
        want = np.asarray(PIL_OPS[name](Image.fromarray(image), argument), "float32")
        # PIL rounds its intermediate grey images to integers; we keep floats.
        assert np.abs(got - want).max() <= (3.0 if name in ("contrast", "color", "sharpness") else 1.0)
    assert np.abs(ours - images).max() > 0  # the op did something


def test_trivial_augment_is_seeded_and_changes_most_images():
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3)).astype("float32")
    once = np.asarray(augment.trivial_augment(images, key(1)))
    np.testing.assert_array_equal(once, np.asarray(augment.trivial_augment(images, key(1))))
    assert once.min() >= 0 and once.max() <= 255
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(once, images)])
    assert 0.75 < changed < 1.0  # identity and zero-magnitude draws leave a few images as they were
