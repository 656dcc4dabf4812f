"""Batch-level training augmentations beyond the paper: random erasing, mixup and CutMix.

* Random erasing (Zhong et al. 2017; torchvision's `RandomErasing`): with probability `p` per
  image, a rectangle of 2-33 % of the area and aspect ratio 0.3-3.3 (log-uniform) is filled with
  the model's input mean, which is 0 after the model's normalisation, as torchvision's `value=0`.
* Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): each batch is mixed with itself rolled
  by one (torchvision's `MixUp`/`CutMix` transforms), with lam ~ Beta(alpha, alpha). When both are
  on, each batch picks one of the two with equal odds (torchvision's `RandomChoice`, timm's
  `switch_prob=0.5`). Labels become class weights [b, C]: lam for the image's own class and
  1 - lam for its partner's; CutMix's lam is the share of pixels the image keeps.

Every random number comes from a stateless op keyed by (seed, batch number): batch n of a
training stream is augmented the same whether it is reached directly or after a resume.
Images are float32 raw pixels [b, H, W, C] as `data.make_dataset` yields them.
"""

from __future__ import annotations

import tensorflow as tf

ERASE_AREA = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
# Keeps these streams apart from the pipeline's own crop and flip seeds.
_SEED_SALT = 0x5EED_A06


def active(train_config) -> bool:
    return bool(train_config.mixup or train_config.cutmix or train_config.random_erasing)


def apply(dataset, train_config, *, num_classes: int, fill, seed: int, first_batch: int = 0, pipeline=(0, 1)):
    """Augments a stream of (images, int labels) batches; returns (images, float32 class weights [b, C]).

    `first_batch` is the number of batches the stream already skipped (a resumed run), so batch n
    is keyed by n; `pipeline` = (input_pipeline_id, num_input_pipelines) keeps pipelines apart.
    """
    index, count = pipeline

    def augment(n, batch):
        images, labels = batch
        key = tf.stack([tf.constant(seed + _SEED_SALT, tf.int64), n * count + index])
        return mix_batch(
            images,
            labels,
            key,
            num_classes=num_classes,
            mixup=train_config.mixup,
            cutmix=train_config.cutmix,
            random_erasing=train_config.random_erasing,
            fill=fill,
        )

    dataset = dataset.enumerate(start=first_batch)
    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def mix_batch(images, labels, key, *, num_classes: int, mixup: float, cutmix: float, random_erasing: float, fill):
    """float32 [b, H, W, C], int labels [b], int64 key [2] -> (images, float32 class weights [b, C])."""
    images = tf.convert_to_tensor(images, tf.float32)
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if random_erasing:
        images = random_erase(images, _subkey(key, 0), random_erasing, fill)
    if not (mixup or cutmix):
        return images, targets
    if mixup and cutmix:
        use_cutmix = tf.random.stateless_uniform([], _subkey(key, 1)) < 0.5
        lam_mix = _beta(_subkey(key, 2), mixup)
        lam_cut = _beta(_subkey(key, 3), cutmix)
        mixed = tf.cond(
            use_cutmix,
            lambda: cutmix_images(images, lam_cut, _subkey(key, 4)),
            lambda: mixup_images(images, lam_mix),
        )
        return mixed[0], _mix_targets(targets, mixed[1])
    if mixup:
        images, lam = mixup_images(images, _beta(_subkey(key, 2), mixup))
    else:
        images, lam = cutmix_images(images, _beta(_subkey(key, 3), cutmix), _subkey(key, 4))
    return images, _mix_targets(targets, lam)


def mixup_images(images, lam):
    """lam * images + (1 - lam) * images rolled by one: (mixed images, lam)."""
    return lam * images + (1.0 - lam) * tf.roll(images, 1, axis=0), lam


def cutmix_images(images, lam, key):
    """Pastes a box of about (1 - lam) of the area from the rolled batch: (images, the kept share).

    The box has sides sqrt(1 - lam) x H and x W around a uniform centre, clipped at the borders
    (Yun et al. 2019, Algorithm A1); the returned share counts the pixels actually kept.
    """
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    cut = tf.sqrt(1.0 - lam)
    centre = tf.random.stateless_uniform([2], key) * tf.stack([h, w])
    half = tf.stack([cut * h, cut * w]) / 2.0
    low = tf.cast(tf.clip_by_value(tf.round(centre - half), 0.0, tf.stack([h, w])), tf.int32)
    high = tf.cast(tf.clip_by_value(tf.round(centre + half), 0.0, tf.stack([h, w])), tf.int32)
    rows = tf.range(height)
    cols = tf.range(width)
    inside_rows = (rows >= low[0]) & (rows < high[0])
    inside_cols = (cols >= low[1]) & (cols < high[1])
    box = tf.cast(inside_rows[:, None] & inside_cols[None, :], tf.float32)[None, :, :, None]
    mixed = images * (1.0 - box) + tf.roll(images, 1, axis=0) * box
    kept = 1.0 - tf.reduce_sum(box) / (h * w)
    return mixed, kept


def random_erase(images, key, probability: float, fill):
    """Per image, with `probability`: a rectangle of ERASE_AREA of the image and ERASE_RATIO aspect
    (log-uniform) at a uniform position, filled with `fill` (per channel, raw pixel units)."""
    n = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draws = tf.random.stateless_uniform([5, n], key)
    area = (ERASE_AREA[0] + draws[0] * (ERASE_AREA[1] - ERASE_AREA[0])) * h * w
    log_low, log_high = tf.math.log(ERASE_RATIO[0]), tf.math.log(ERASE_RATIO[1])
    ratio = tf.exp(log_low + draws[1] * (log_high - log_low))
    box_h = tf.minimum(tf.round(tf.sqrt(area * ratio)), h)
    box_w = tf.minimum(tf.round(tf.sqrt(area / ratio)), w)
    top = tf.floor(draws[2] * (h - box_h + 1.0))
    left = tf.floor(draws[3] * (w - box_w + 1.0))
    erase = draws[4] < probability
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    mask = inside_rows[:, :, None] & inside_cols[:, None, :] & erase[:, None, None]
    fill = tf.reshape(tf.cast(fill, tf.float32), [1, 1, 1, -1])
    return tf.where(mask[..., None], fill, images)


def _mix_targets(targets, lam):
    return lam * targets + (1.0 - lam) * tf.roll(targets, 1, axis=0)


def _beta(key, alpha: float):
    """One draw of Beta(alpha, alpha) as X / (X + Y) of two Gamma(alpha) draws."""
    gammas = tf.random.stateless_gamma([2], key, alpha=alpha)
    return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def _subkey(key, stream: int):
    return tf.stack([key[0] * 16 + stream, key[1]])
