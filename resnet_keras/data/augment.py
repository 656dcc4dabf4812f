"""Batch-level training augmentations beyond the paper: TrivialAugment, RandAugment, random erasing,
mixup and CutMix.

* TrivialAugment Wide (Mueller & Hutter 2021; torchvision's `TrivialAugmentWide`): one of 14 image
  ops per image at a random strength (`trivial_augment`).
* RandAugment (Cubuk et al. 2020) as timm's `rand-m{M}-mstd{S}-inc1` that "ResNet strikes back"
  trains with: two ops per image, each drawn from 15 and applied with probability 1/2 at a
  magnitude ~ N(M, S) of 10 (`rand_augment`). Both share the op implementations (`_run_ops`).

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

from resnet_keras.config.schema import RAND_AUGMENTS

ERASE_AREA = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
# Keeps these streams apart from the pipeline's own crop and flip seeds.
_SEED_SALT = 0x5EED_A06


def active(train_config) -> bool:
    return bool(
        train_config.mixup or train_config.cutmix or train_config.random_erasing or train_config.auto_augment != "none"
    )


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
            auto_augment=train_config.auto_augment,
        )

    dataset = dataset.enumerate(start=first_batch)
    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def mix_batch(
    images,
    labels,
    key,
    *,
    num_classes: int,
    mixup: float,
    cutmix: float,
    random_erasing: float,
    fill,
    auto_augment: str = "none",
):
    """float32 [b, H, W, C], int labels [b], int64 key [2] -> (images, float32 class weights [b, C]).

    In torchvision's (and timm's) order: TrivialAugment or RandAugment, random erasing, then mixup or CutMix.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if auto_augment == "ta_wide":
        images = trivial_augment(images, key)
    elif auto_augment in RAND_AUGMENTS:
        magnitude, std = RAND_AUGMENTS[auto_augment]
        images = rand_augment(images, key, magnitude=magnitude, std=std)
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
    # The box of each image is its partner's, the rest its own: pasted with slices, not a blend.
    partner = tf.roll(images[:, low[0] : high[0], low[1] : high[1]], 1, axis=0)
    middle = tf.concat([images[:, low[0] : high[0], : low[1]], partner, images[:, low[0] : high[0], high[1] :]], axis=2)
    mixed = tf.concat([images[:, : low[0]], middle, images[:, high[0] :]], axis=1)
    area = tf.cast((high[0] - low[0]) * (high[1] - low[1]), tf.float32)
    kept = 1.0 - area / (h * w)
    return tf.ensure_shape(mixed, images.shape), kept


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
    # Only the erased images (a tenth in the recipes) are touched: the rest of the batch is not read.
    erased = tf.where(draws[4] < probability)[:, 0]
    top, left, box_h, box_w = (tf.gather(v, erased) for v in (top, left, box_h, box_w))
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    mask = inside_rows[:, :, None] & inside_cols[:, None, :]
    fill = tf.reshape(tf.cast(fill, tf.float32), [1, 1, 1, -1])
    updated = tf.where(mask[..., None], fill, tf.gather(images, erased))
    return tf.tensor_scatter_nd_update(images, erased[:, None], updated)


def _mix_targets(targets, lam):
    return lam * targets + (1.0 - lam) * tf.roll(targets, 1, axis=0)


def _beta(key, alpha: float):
    """One draw of Beta(alpha, alpha) as X / (X + Y) of two Gamma(alpha) draws."""
    gammas = tf.random.stateless_gamma([2], key, alpha=alpha)
    return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def _subkey(key, stream: int):
    return tf.stack([key[0] * 16 + stream, key[1]])


# ----------------------------------------------------------------------------- TrivialAugment

# torchvision's TrivialAugmentWide (Mueller & Hutter 2021, "wide" search space): one op per image,
# uniform over these, at a uniform magnitude bin of 31, with a random sign where the op has one.
TRIVIAL_AUGMENT_OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
MAGNITUDE_BINS = 31
# Largest magnitudes of the wide space: shear 0.99, rotation 135 degrees, enhance factors 1 +- 0.99,
# posterize down to 2 bits, solarize down to threshold 0. Translation is 32 pixels at 224 in
# torchvision; here it is the same fraction of the image (4.6 pixels on a 32x32 CIFAR image).
_SHEAR, _ROTATE, _ENHANCE, _TRANSLATE_FRACTION = 0.99, 135.0, 0.99, 32.0 / 224.0


def trivial_augment(images, key):
    """TrivialAugment Wide on a batch: float32 [b, H, W, 3] raw pixels -> the same, one random op each.

    Geometric ops use nearest-neighbour sampling and black fill (torchvision's defaults); shear is
    about the top-left corner and rotation about the centre, as torchvision does.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    n = tf.shape(images)[0]
    op = tf.random.stateless_uniform([n], _subkey(key, 10), 0, len(TRIVIAL_AUGMENT_OPS), tf.int32)
    level = tf.random.stateless_uniform([n], _subkey(key, 11), 0, MAGNITUDE_BINS, tf.int32)
    sign = tf.where(tf.random.stateless_uniform([n], _subkey(key, 12)) < 0.5, -1.0, 1.0)
    return apply_ops(images, op, level, sign)


def apply_ops(images, op, level, sign):
    """Op `op[i]` (an index into TRIVIAL_AUGMENT_OPS) at magnitude bin `level[i]` with sign `sign[i]`
    on image i of float32 [b, H, W, 3] raw pixels."""
    images = tf.convert_to_tensor(images, tf.float32)
    op = tf.convert_to_tensor(op, tf.int32)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    level = tf.cast(level, tf.float32)
    sign = tf.cast(sign, tf.float32)
    fraction = level / (MAGNITUDE_BINS - 1)  # 0 .. 1 along the linspace of each op
    bits = 8.0 - tf.round(level / ((MAGNITUDE_BINS - 1) / 6.0))
    return _run_ops(
        images,
        tf.gather(tf.constant([_OPS.index(name) for name in TRIVIAL_AUGMENT_OPS]), op),
        shear=sign * _SHEAR * fraction,
        shift=sign * tf.round(_TRANSLATE_FRACTION * w * fraction),
        angle=sign * _ROTATE * fraction,
        factor=1.0 + sign * _ENHANCE * fraction,
        bits=bits,
        threshold=255.0 * (MAGNITUDE_BINS - 1 - level) / (MAGNITUDE_BINS - 1),  # exact bins
        add=tf.zeros_like(level),
    )


# Every op either augmentation uses; each picks its own subset and maps magnitudes to arguments.
_OPS = (*TRIVIAL_AUGMENT_OPS, "invert", "solarize_add")


def _run_ops(images, op, *, shear, shift, angle, factor, bits, threshold, add, fill=None):
    """Op `_OPS[op[i]]` on image i of float32 [b, H, W, 3] raw pixels, with per-image arguments [b]:
    shear factor, translation in pixels, rotation in degrees, enhance factor, posterize bits kept,
    solarize threshold, and solarize_add's increment (below 128). `fill` (per channel, default
    black) fills what geometric ops uncover.

    The batch is split by op (`tf.dynamic_partition`) and each op runs on its own images only, then
    the pieces are put back in place (`tf.dynamic_stitch`): the cost is one op per image plus two
    copies of the batch, whatever the number of ops to choose from. Computing every op for the whole
    batch and selecting with `tf.where` cost a full float32 pass of the batch per op (about 20 per
    RandAugment layer).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    op = tf.convert_to_tensor(op, tf.int32)
    args = dict(shear=shear, shift=shift, angle=angle, factor=factor, bits=bits, threshold=threshold, add=add)
    args = {name: tf.cast(value, tf.float32) * tf.ones_like(op, tf.float32) for name, value in args.items()}
    # Over the whole batch, as before: Eigen's vectorised cos and sin can round an element differently
    # from a shorter array's, and one ulp moves a nearest-neighbour pixel.
    radians = args.pop("angle") * (3.141592653589793 / 180.0)
    args.update(cos=tf.cos(radians), sin=tf.sin(radians))
    count = len(_OPS)
    positions = tf.dynamic_partition(tf.range(tf.shape(images)[0]), op, count)
    parts = tf.dynamic_partition(images, op, count)
    part_args = {name: tf.dynamic_partition(value, op, count) for name, value in args.items()}
    results = []
    for i, name in enumerate(_OPS):
        result = OP_FUNCTIONS[name](parts[i], {k: v[i] for k, v in part_args.items()}, fill)
        # The colour ops end in [0, 255] by construction; the others pass the input's range on.
        results.append(tf.clip_by_value(result, 0.0, 255.0) if name in _UNCLIPPED else result)
    return tf.ensure_shape(tf.dynamic_stitch(positions, results), images.shape)


_UNCLIPPED = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def _transform(images, transforms, fill):
    """One projective transform per image (output pixel -> input pixel), nearest neighbour; what
    the transform uncovers is `fill` (per channel; None: black)."""
    # Uncovered pixels are 0 after the transform: shifting by the fill first makes them the fill.
    offset = 0.0 if fill is None else tf.reshape(tf.cast(fill, tf.float32), [1, 1, 1, -1])
    return (
        tf.raw_ops.ImageProjectiveTransformV3(
            images=images - offset,
            transforms=transforms,
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="NEAREST",
            fill_mode="CONSTANT",
        )
        + offset
    )


def _geometric(matrix):
    """An op of OP_FUNCTIONS from `matrix(args, h, w)` -> the 8 projective coefficients, each [k]."""

    def run(images, args, fill):
        h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
        return _transform(images, tf.stack(matrix(args, h, w), axis=1), fill)

    return run


def _rotation(args, h, w):
    """Rotation about the centre, as torchvision does."""
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    cos, sin = args["cos"], args["sin"]
    zero = tf.zeros_like(cos)
    return [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zero, zero]


def _coefficients(**nonzero):
    """The identity's 8 coefficients with some replaced by `name -> f(args)`; shear is about the top-left corner."""
    names = ("a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1")
    identity = {"a0": 1.0, "b1": 1.0}

    def matrix(args, h, w):
        zero = tf.zeros_like(args["shear"])
        return [nonzero[name](args) if name in nonzero else zero + identity.get(name, 0.0) for name in names]

    return matrix


def _pixels(images):
    return tf.clip_by_value(tf.round(images), 0.0, 255.0)


def _grey(images):
    return tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def _per_image(value):
    return value[:, None, None, None]


# name -> op(images [k, H, W, 3], per-image arguments {name: [k]}, fill) -> images; `_run_ops` gives
# each op only the images that drew it.
OP_FUNCTIONS = {
    "identity": lambda x, a, fill: x,
    "shear_x": _geometric(_coefficients(a1=lambda a: a["shear"])),
    "shear_y": _geometric(_coefficients(b0=lambda a: a["shear"])),
    "translate_x": _geometric(_coefficients(a2=lambda a: -a["shift"])),
    "translate_y": _geometric(_coefficients(b2=lambda a: -a["shift"])),
    "rotate": _geometric(_rotation),
    "brightness": lambda x, a, fill: _blend(x, tf.zeros_like(x), _per_image(a["factor"])),
    "color": lambda x, a, fill: _blend(x, _grey(x), _per_image(a["factor"])),
    "contrast": lambda x, a, fill: _blend(
        x, tf.reduce_mean(_grey(x), axis=[1, 2, 3], keepdims=True), _per_image(a["factor"])
    ),
    # A depthwise convolution of an empty batch keeps its input's shape: skip the op for no image.
    "sharpness": lambda x, a, fill: tf.cond(
        tf.shape(x)[0] > 0, lambda: _blend(x, _smooth(x), _per_image(a["factor"])), lambda: x
    ),
    "posterize": lambda x, a, fill: _posterize(_pixels(x), _per_image(tf.pow(2.0, 8.0 - a["bits"]))),
    "solarize": lambda x, a, fill: _solarize(_pixels(x), _per_image(a["threshold"])),
    "autocontrast": lambda x, a, fill: _autocontrast(x),
    "equalize": lambda x, a, fill: _equalize(_pixels(x)),
    "invert": lambda x, a, fill: 255.0 - _pixels(x),
    "solarize_add": lambda x, a, fill: _solarize_add(_pixels(x), _per_image(a["add"])),
}


def _posterize(pixels, step):
    return tf.floor(pixels / step) * step


def _solarize(pixels, threshold):
    return tf.where(pixels >= threshold, 255.0 - pixels, pixels)


def _solarize_add(pixels, add):
    return tf.where(pixels < 128.0, tf.minimum(pixels + add, 255.0), pixels)


# ----------------------------------------------------------------------------- RandAugment

# timm's _RAND_INCREASING_TRANSFORMS ("inc1": every op grows stronger with the magnitude), in its order.
RAND_AUGMENT_OPS = (
    "autocontrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "solarize_add",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
RAND_AUGMENT_LAYERS = 2
RAND_AUGMENT_PROBABILITY = 0.5  # timm's rand_augment_ops: each chosen op runs with probability 1/2
MAX_MAGNITUDE = 10.0  # timm's _LEVEL_DENOM: magnitudes are clipped to [0, 10]
# timm's hparams for ImageNet training (create_transform): uncovered pixels take the mean pixel.
_RAND_FILL = (124.0, 116.0, 104.0)


def rand_augment_draws(n, key, *, magnitude: float, std: float, layers: int = RAND_AUGMENT_LAYERS):
    """The random choices of `rand_augment` for n images: a dict of [layers, n] tensors: `op`
    (index into RAND_AUGMENT_OPS, drawn with replacement), `applied` (bool, probability 1/2),
    `magnitude` (N(magnitude, std) clipped to [0, 10], drawn per op as timm does) and `sign` (+-1)."""
    shape = [layers, n]
    return dict(
        op=tf.random.stateless_uniform(shape, _subkey(key, 20), 0, len(RAND_AUGMENT_OPS), tf.int32),
        applied=tf.random.stateless_uniform(shape, _subkey(key, 21)) < RAND_AUGMENT_PROBABILITY,
        magnitude=tf.clip_by_value(
            magnitude + std * tf.random.stateless_normal(shape, _subkey(key, 22)), 0.0, MAX_MAGNITUDE
        ),
        sign=tf.where(tf.random.stateless_uniform(shape, _subkey(key, 23)) < 0.5, -1.0, 1.0),
    )


def rand_augment(images, key, *, magnitude: float, std: float, layers: int = RAND_AUGMENT_LAYERS):
    """RandAugment as timm's `rand-m{magnitude}-mstd{std}-inc1` on a batch of float32 [b, H, W, 3]
    raw pixels: `layers` ops in turn per image (`rand_augment_draws`).

    Arguments follow timm's level functions at fraction f = magnitude / 10: rotate +-30 f degrees,
    shear +-0.3 f, translate +-0.45 f of the side, enhance factors max(0.1, 1 +- 0.9 f), posterize
    to 4 - int(4 f) bits, solarize above 256 - int(256 f), solarize_add int(110 f) below 128.
    Geometric ops sample nearest-neighbour (timm: bilinear or bicubic at random) and fill with
    timm's mean pixel.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    draws = rand_augment_draws(tf.shape(images)[0], key, magnitude=magnitude, std=std, layers=layers)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    table = tf.constant([_OPS.index(name) for name in RAND_AUGMENT_OPS])
    for layer in range(layers):
        fraction = draws["magnitude"][layer] / MAX_MAGNITUDE
        sign = draws["sign"][layer]
        op = tf.where(draws["applied"][layer], tf.gather(table, draws["op"][layer]), _OPS.index("identity"))
        images = _run_ops(
            images,
            op,
            shear=sign * 0.3 * fraction,
            shift=sign * 0.45 * fraction * w,
            angle=sign * 30.0 * fraction,
            factor=tf.maximum(0.1, 1.0 + sign * 0.9 * fraction),
            bits=4.0 - tf.floor(4.0 * fraction),
            threshold=256.0 - tf.floor(256.0 * fraction),
            add=tf.floor(110.0 * fraction),
            fill=_RAND_FILL,
        )
    return images


def _blend(image, degenerate, factor):
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate), clipped to 0-255."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _smooth(images):
    """PIL's SMOOTH filter (3x3, centre weight 5, total 13) inside; the border pixels stay as they are."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "VALID")
    # The border pixels pasted around the filtered inside with slices: no mask over the image.
    middle = tf.concat([images[:, 1:-1, :1], inner, images[:, 1:-1, -1:]], axis=2)
    return tf.concat([images[:, :1], middle, images[:, -1:]], axis=1)


def _autocontrast(images):
    """Per image and channel, stretch [min, max] to [0, 255]; a flat channel stays as it is."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
    low = tf.where(high > low, low, 0.0)
    return tf.clip_by_value((images - low) * scale, 0.0, 255.0)


def _equalize(pixels):
    """PIL's ImageOps.equalize per image and channel, on integer pixels float32 [b, H, W, C]."""
    shape = tf.shape(pixels)
    channels_first = tf.transpose(tf.cast(pixels, tf.int32), [0, 3, 1, 2])
    flat = tf.reshape(channels_first, [shape[0] * shape[3], shape[1] * shape[2]])
    hist = tf.cast(tf.math.bincount(flat, minlength=256, maxlength=256, axis=-1), tf.float32)  # [b*C, 256]
    # PIL: step = (count - count of the last non-empty bin) // 255; lut[i] = (cum[i-1] + step // 2) // step.
    last = tf.reduce_max(tf.where(hist > 0, tf.range(256, dtype=tf.float32), -1.0), axis=-1)
    last_count = tf.gather(hist, tf.cast(last, tf.int32), batch_dims=1)
    step = tf.floor((tf.reduce_sum(hist, axis=-1) - last_count) / 255.0)
    before = tf.cumsum(hist, axis=-1, exclusive=True)
    lut = tf.clip_by_value(tf.floor((before + tf.floor(step / 2.0)[:, None]) / tf.maximum(step, 1.0)[:, None]), 0, 255)
    mapped = tf.gather(lut, flat, batch_dims=1)
    mapped = tf.where(step[:, None] > 0, mapped, tf.cast(flat, tf.float32))
    mapped = tf.reshape(mapped, [shape[0], shape[3], shape[1], shape[2]])
    return tf.transpose(mapped, [0, 2, 3, 1])
