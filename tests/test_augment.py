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
    config = type("C", (), dict(mixup=0.2, cutmix=1.0, random_erasing=0.25))()
    kwargs = dict(num_classes=CLASSES, fill=(0.0, 0.0, 0.0), seed=3)
    whole = [np.asarray(x) for x, _ in augment.apply(stream, config, **kwargs)]
    resumed = [np.asarray(x) for x, _ in augment.apply(stream.skip(3), config, first_batch=3, **kwargs)]
    for a, b in zip(whole[3:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(whole[0], whole[1])
