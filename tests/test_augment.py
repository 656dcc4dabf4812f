"""Batch augmentations (resnet_keras.data.augment): mixup, CutMix and random erasing."""

import numpy as np
import pytest
import tensorflow as tf

from resnet_keras.data import augment

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


@pytest.mark.parametrize("auto_augment", ["ta_wide", "rand_m6_mstd0.5"])
def test_apply_keys_batches_by_their_number_so_a_resumed_stream_matches(auto_augment):
    images, labels, _ = constant_batch()
    stream = tf.data.Dataset.from_tensors((images, labels)).repeat(5)
    config = type("C", (), dict(mixup=0.2, cutmix=1.0, random_erasing=0.25, auto_augment=auto_augment))()
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
def test_trivial_augment_ops_match_pil(name, image_data):
    from PIL import Image

    files = sorted((image_data / "cifar10-mini" / "train").glob("*/*.jpg"))[:4]
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


def test_rand_augment_draws_two_ops_half_applied_at_noisy_bounded_magnitudes():
    n = 4000
    draws = {k: np.asarray(v) for k, v in augment.rand_augment_draws(n, key(2), magnitude=6.0, std=0.5).items()}
    assert all(value.shape == (2, n) for value in draws.values())
    assert set(draws["op"].ravel()) == set(range(len(augment.RAND_AUGMENT_OPS)))  # 15 ops, with replacement
    assert abs(draws["applied"].mean() - 0.5) < 4 * np.sqrt(0.25 / (2 * n))
    magnitude = draws["magnitude"]
    assert magnitude.min() >= 0 and magnitude.max() <= 10
    assert abs(magnitude.mean() - 6.0) < 0.05 and abs(magnitude.std() - 0.5) < 0.05
    edge = np.asarray(augment.rand_augment_draws(n, key(2), magnitude=10.0, std=0.5)["magnitude"])
    assert edge.max() == 10.0 and (edge == 10.0).mean() > 0.4  # clipped at 10, as timm clips


def test_rand_augment_is_seeded_and_changes_exactly_the_images_an_op_was_applied_to():
    images = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3)).astype("float32")
    once = np.asarray(augment.rand_augment(images, key(5), magnitude=6.0, std=0.5))
    np.testing.assert_array_equal(once, np.asarray(augment.rand_augment(images, key(5), magnitude=6.0, std=0.5)))
    assert not np.array_equal(once, np.asarray(augment.rand_augment(images, key(6), magnitude=6.0, std=0.5)))
    assert once.min() >= 0 and once.max() <= 255
    applied = np.asarray(augment.rand_augment_draws(256, key(5), magnitude=6.0, std=0.5)["applied"]).sum(axis=0)
    changed = np.array([not np.array_equal(a, b) for a, b in zip(once, images)])
    assert not changed[applied == 0].any()  # no op drawn to run: the image is untouched
    assert changed[applied > 0].mean() > 0.9  # a few ops (a flip of sign at a small angle) may do nothing
    assert 0.15 < (applied == 0).mean() < 0.35  # both skipped with probability 1/4


def test_rand_augment_ops_beyond_trivial_augment_match_pil_and_timm(image_data):
    from PIL import Image, ImageOps

    files = sorted((image_data / "cifar10-mini" / "train").glob("*/*.jpg"))[:4]
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files])
    n, zeros = len(images), np.zeros(len(images), "float32")
    add = 66.0  # timm's solarize_add at magnitude 6: int(0.6 * 110)
    args = dict(shear=zeros, shift=zeros, angle=zeros, factor=zeros + 1, bits=zeros + 8, threshold=zeros + 256)
    for name, want in [
        ("invert", lambda im: ImageOps.invert(im)),
        ("solarize_add", lambda im: im.point([min(255, i + int(add)) if i < 128 else i for i in range(256)] * 3)),
    ]:
        op = np.full(n, augment._OPS.index(name), "int32")
        ours = np.asarray(augment._run_ops(images.astype("float32"), op, add=zeros + add, **args))
        for image, got in zip(images, ours):
            np.testing.assert_array_equal(got, np.asarray(want(Image.fromarray(image)), "float32"))


def test_rand_augment_fills_uncovered_pixels_with_timms_mean_pixel():
    white = np.full((1, 32, 32, 3), 255.0, "float32")
    draws = augment.rand_augment_draws(1, key(0), magnitude=10.0, std=0.0, layers=1)
    assert float(draws["magnitude"][0, 0]) == 10.0
    # Find a key whose single drawn op is rotate (30 degrees at magnitude 10) and applied.
    for seed in range(200):
        draws = augment.rand_augment_draws(1, key(seed), magnitude=10.0, std=0.0, layers=1)
        if bool(draws["applied"][0, 0]) and augment.RAND_AUGMENT_OPS[int(draws["op"][0, 0])] == "rotate":
            break
    rotated = np.asarray(augment.rand_augment(white, key(seed), magnitude=10.0, std=0.0, layers=1))[0]
    np.testing.assert_array_equal(rotated[0, 0], [124.0, 116.0, 104.0])  # a corner rotated out of view
    np.testing.assert_array_equal(rotated[16, 16], [255.0, 255.0, 255.0])


# ----------------------------------------------------------------------------- one op per image


def dense_reference(images, op, *, shear, shift, angle, factor, bits, threshold, add, fill=None):
    """The former `_run_ops`: every op computed for the whole batch, the chosen one kept with tf.where.

    Kept here to pin the outputs of the per-op implementation to it."""
    n = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ops = augment._OPS

    def is_op(name):
        return tf.equal(op, ops.index(name))

    angle = angle * (3.141592653589793 / 180.0)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    zero, one = tf.zeros([n]), tf.ones([n])
    transforms = tf.stack([one, zero, zero, zero, one, zero, zero, zero], axis=1)
    for name, matrix in {
        "shear_x": [one, shear, zero, zero, one, zero, zero, zero],
        "shear_y": [one, zero, zero, shear, one, zero, zero, zero],
        "translate_x": [one, zero, -shift, zero, one, zero, zero, zero],
        "translate_y": [one, zero, zero, zero, one, -shift, zero, zero],
        "rotate": [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zero, zero],
    }.items():
        transforms = tf.where(is_op(name)[:, None], tf.stack(matrix, axis=1), transforms)
    offset = 0.0 if fill is None else tf.reshape(tf.cast(fill, tf.float32), [1, 1, 1, -1])
    out = (
        tf.raw_ops.ImageProjectiveTransformV3(
            images=images - offset,
            transforms=transforms,
            output_shape=tf.stack([height, width]),
            fill_value=0.0,
            interpolation="NEAREST",
            fill_mode="CONSTANT",
        )
        + offset
    )
    factor = factor[:, None, None, None]
    grey = tf.reduce_sum(out * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    pixels = tf.clip_by_value(tf.round(out), 0.0, 255.0)
    step = tf.pow(2.0, 8.0 - bits)[:, None, None, None]
    threshold = threshold[:, None, None, None]
    colour = {
        "brightness": lambda: augment._blend(out, tf.zeros_like(out), factor),
        "color": lambda: augment._blend(out, grey, factor),
        "contrast": lambda: augment._blend(out, tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True), factor),
        "sharpness": lambda: augment._blend(out, augment._smooth(out), factor),
        "posterize": lambda: tf.floor(pixels / step) * step,
        "solarize": lambda: tf.where(pixels >= threshold, 255.0 - pixels, pixels),
        "autocontrast": lambda: augment._autocontrast(out),
        "equalize": lambda: augment._equalize(pixels),
        "invert": lambda: 255.0 - pixels,
        "solarize_add": lambda: tf.where(pixels < 128.0, tf.minimum(pixels + add[:, None, None, None], 255.0), pixels),
    }
    for name, make in colour.items():
        out = tf.where(is_op(name)[:, None, None, None], make(), out)
    return tf.clip_by_value(out, 0.0, 255.0)


def random_arguments(n, seed):
    rng = np.random.default_rng(seed)
    return dict(
        shear=rng.uniform(-0.9, 0.9, n).astype("float32"),
        shift=rng.integers(-6, 7, n).astype("float32"),
        angle=rng.uniform(-135, 135, n).astype("float32"),
        factor=rng.uniform(0.05, 1.99, n).astype("float32"),
        bits=rng.integers(1, 9, n).astype("float32"),
        threshold=rng.integers(0, 257, n).astype("float32"),
        add=rng.integers(0, 111, n).astype("float32"),
    )


@pytest.mark.parametrize("name", augment._OPS)
@pytest.mark.parametrize("fill", [None, (124.0, 116.0, 104.0)])
def test_each_op_gives_what_computing_every_op_for_the_whole_batch_gave(name, fill):
    images = np.random.default_rng(1).integers(0, 256, (12, 20, 24, 3)).astype("float32")
    op = np.full(12, augment._OPS.index(name), "int32")
    args = random_arguments(12, seed=2)
    want = np.asarray(dense_reference(tf.constant(images), tf.constant(op), fill=fill, **args))
    np.testing.assert_array_equal(np.asarray(augment._run_ops(images, op, fill=fill, **args)), want)


def test_mixed_ops_trivial_augment_and_rand_augment_give_the_former_outputs(monkeypatch):
    images = np.random.default_rng(3).integers(0, 256, (64, 20, 24, 3)).astype("float32")
    op = np.random.default_rng(4).integers(0, len(augment._OPS), 64).astype("int32")
    args = random_arguments(64, seed=5)
    want = np.asarray(dense_reference(tf.constant(images), tf.constant(op), **args))
    np.testing.assert_array_equal(np.asarray(augment._run_ops(images, op, **args)), want)

    ours_ta = [np.asarray(augment.trivial_augment(images, key(k))) for k in range(3)]
    ours_ra = [np.asarray(augment.rand_augment(images, key(k), magnitude=9.0, std=0.5)) for k in range(3)]
    monkeypatch.setattr(augment, "_run_ops", dense_reference)
    for k in range(3):
        np.testing.assert_array_equal(ours_ta[k], np.asarray(augment.trivial_augment(images, key(k))))
        # The former code shifted every image by the fill and back (one rounding of float32 pixels).
        np.testing.assert_allclose(
            ours_ra[k], np.asarray(augment.rand_augment(images, key(k), magnitude=9.0, std=0.5)), atol=1e-3, rtol=0
        )


def test_each_image_goes_through_the_one_op_it_drew(monkeypatch):
    """The cost of an augmentation layer is one op per image, not one per op it could choose."""
    seen = {}

    def counting(name, run):
        def wrapped(images, args, fill):
            seen[name] = seen.get(name, 0) + int(tf.shape(images)[0])
            return run(images, args, fill)

        return wrapped

    for name, run in dict(augment.OP_FUNCTIONS).items():
        monkeypatch.setitem(augment.OP_FUNCTIONS, name, counting(name, run))
    images = np.random.default_rng(0).integers(0, 256, (96, 16, 16, 3)).astype("float32")
    augment.trivial_augment(images, key(1))
    assert sum(seen.values()) == 96 and set(seen) == set(augment._OPS)
    seen.clear()
    augment.rand_augment(images, key(1), magnitude=6.0, std=0.5)
    assert sum(seen.values()) == 2 * 96  # two layers, each image once per layer


def test_random_erasing_and_cutmix_give_what_their_whole_batch_formulas_gave():
    images = tf.constant(np.random.default_rng(6).uniform(0, 255, (32, 20, 24, 3)).astype("float32"))
    fill = (124.0, 116.0, 104.0)
    for k in range(4):
        # Random erasing as a mask over the whole batch, with the same draws.
        n, h, w = 32, 20.0, 24.0
        draws = tf.random.stateless_uniform([5, n], key(k))
        area = (augment.ERASE_AREA[0] + draws[0] * (augment.ERASE_AREA[1] - augment.ERASE_AREA[0])) * h * w
        low, high = np.log(augment.ERASE_RATIO[0]), np.log(augment.ERASE_RATIO[1])
        ratio = tf.exp(low + draws[1] * (high - low))
        box_h, box_w = tf.minimum(tf.round(tf.sqrt(area * ratio)), h), tf.minimum(tf.round(tf.sqrt(area / ratio)), w)
        top, left = tf.floor(draws[2] * (h - box_h + 1.0)), tf.floor(draws[3] * (w - box_w + 1.0))
        rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
        inside_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
        inside_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
        mask = inside_rows[:, :, None] & inside_cols[:, None, :] & (draws[4] < 0.3)[:, None, None]
        want = tf.where(mask[..., None], tf.reshape(tf.constant(fill), [1, 1, 1, 3]), images)
        np.testing.assert_array_equal(np.asarray(augment.random_erase(images, key(k), 0.3, fill)), np.asarray(want))

        # CutMix as a 0/1 box blended over the whole batch.
        lam = 0.2 + 0.15 * k
        mixed, kept = augment.cutmix_images(images, lam, key(k))
        mixed_box = np.any(np.asarray(mixed) != np.asarray(images), axis=(0, 3))
        box = tf.cast(tf.constant(mixed_box)[None, :, :, None], tf.float32)
        np.testing.assert_array_equal(np.asarray(mixed), np.asarray(images * (1.0 - box) + tf.roll(images, 1, 0) * box))
        assert float(kept) == pytest.approx(1.0 - mixed_box.mean()) and mixed_box.any()
