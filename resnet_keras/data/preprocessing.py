"""The image as the model sees it: files, decoding, and the training and evaluation views.

One owner for every pixel transformation, shared by the input pipeline (`data`), the
exports (`export`: the serving graph decodes and crops with these functions) and `predict`,
so training, evaluation and serving see the same pixels. Views follow He et al. 2015:

* ``"cifar"`` (sec. 4.2): "4 pixels are padded on each side, and a 32x32 crop is randomly sampled
  from the padded image or its horizontal flip. For testing, we only evaluate the single view of
  the original 32x32 image."
* ``"imagenet"`` (sec. 3.4): scale augmentation with random crops and horizontal flips. We use the
  random-resized crop of Szegedy et al. (area 8-100 %, aspect 3/4-4/3) that reimplementations use;
  evaluation resizes the shorter side to ``image_size / 0.875`` and takes the centre crop, the
  usual single-crop view (the paper's 10-crop and multi-scale testing are not done here).
* ``"none"``: resize only.

Images are uint8 RGB ``[h, w, 3]`` until a view turns them into float32 raw pixels in [0, 255];
normalisation lives in the model, so exported models take raw pixels too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import tensorflow as tf

VIEWS = ("cifar", "imagenet", "none")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# What tf.io.decode_image recognises, by the first bytes of the file.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
CIFAR_PAD = 4
# What the serving signature and `predict` accept, checked before anything is decoded: a 1 MB PNG can
# declare 20000 x 20000 pixels (1.2 GB decoded). 50 MB and 64 megapixels pass any camera's photos.
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 8192 * 8192


# ----------------------------------------------------------------------------- files


def list_image_files(directory: str | os.PathLike) -> list[str]:
    """Image files under directory (recursive, by extension, dot-files ignored), sorted."""
    found = []
    for parent, _, names in os.walk(directory):
        found += [
            os.path.join(parent, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
        ]
    return sorted(found)


NOT_REGULAR = "not a regular file"
NOT_AN_IMAGE_FILE = "not an image file (JPEG/PNG/GIF/BMP)"


def open_regular_file(path: str | os.PathLike):
    """A binary file object for `path` if it is a regular file (symlinks followed); ValueError
    (NOT_REGULAR) for a FIFO, device or socket, checked without blocking, OSError if unreadable.

    Every reader of user files opens them here: opening a FIFO waits for a writer for ever and a
    device like /dev/zero never ends."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO opens at once instead of waiting
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(NOT_REGULAR)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def starts_like_image(data: bytes) -> bool:
    """Whether encoded bytes start like a JPEG, PNG, GIF or BMP."""
    return data.startswith(_MAGIC)


def image_file_problem(path: str | os.PathLike) -> str | None:
    """None if `path` is a regular file that starts like a JPEG, PNG, GIF or BMP (what
    tf.io.decode_image checks), else why not (NOT_REGULAR, NOT_AN_IMAGE_FILE or the OS's reason)."""
    try:
        with open_regular_file(path) as f:
            return None if starts_like_image(f.read(8)) else NOT_AN_IMAGE_FILE
    except ValueError as error:
        return str(error)
    except OSError as error:
        return error.strerror or NOT_AN_IMAGE_FILE


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file that starts like a JPEG, PNG, GIF or BMP."""
    return image_file_problem(path) is None


# libjpeg's accurate integer IDCT, which PIL (so torchvision and timm) uses. TensorFlow's default is the
# fast one, 1.8-2.1 levels off PIL's pixels on average on CIFAR photos (max 12-17 after a resize);
# the accurate one gives PIL's pixels exactly (tests/test_views.py).
JPEG_DCT = "INTEGER_ACCURATE"


def decode_image(data) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 RGB [h, w, 3] (first frame of a GIF); JPEGs as PIL
    decodes them (`JPEG_DCT`)."""

    def jpeg():
        return tf.io.decode_jpeg(data, channels=3, dct_method=JPEG_DCT)

    def other():
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    return tf.ensure_shape(image, [None, None, 3])


def _bytes_at(data, offset: int, count: int, big_endian: bool) -> tf.Tensor:
    """The unsigned integer of `count` bytes at `offset` of a scalar string (0 past its end), int64."""
    raw = tf.io.decode_raw(tf.strings.substr(data, offset, count), tf.uint8)
    raw = tf.cast(tf.pad(raw, [[0, count - tf.shape(raw)[0]]]), tf.int64)
    weights = tf.constant([256**k for k in (range(count - 1, -1, -1) if big_endian else range(count))], tf.int64)
    return tf.reduce_sum(raw * weights)


def encoded_size(data) -> tf.Tensor:
    """int64 [height, width] that an encoded JPEG/PNG/GIF/BMP declares in its header, without decoding.

    Other bytes give [0, 0] (decoding then fails with its own error)."""
    magic2, magic4 = tf.strings.substr(data, 0, 2), tf.strings.substr(data, 0, 4)

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)

    def png():  # IHDR: width, height as big-endian uint32 at bytes 16 and 20
        return tf.stack([_bytes_at(data, 20, 4, True), _bytes_at(data, 16, 4, True)])

    def gif():  # logical screen: little-endian uint16 width, height at bytes 6 and 8
        return tf.stack([_bytes_at(data, 8, 2, False), _bytes_at(data, 6, 2, False)])

    def bmp():  # BITMAPINFOHEADER: little-endian int32 width, height (negative: top-down) at 18 and 22
        height = _bytes_at(data, 22, 4, False)
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return tf.stack([height, _bytes_at(data, 18, 4, False)])

    return tf.case(
        [
            (tf.equal(magic2, b"\xff\xd8"), jpeg),
            (tf.equal(magic4, b"\x89PNG"), png),
            (tf.equal(tf.strings.substr(data, 0, 3), b"GIF"), gif),
            (tf.equal(magic2, b"BM"), bmp),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )


def decode_image_checked(data) -> tf.Tensor:
    """`decode_image` after checking the encoded size (MAX_IMAGE_BYTES) and the pixel count its header
    declares (MAX_IMAGE_PIXELS); InvalidArgumentError with a message that says which limit."""
    size = encoded_size(data)
    checks = [
        tf.debugging.assert_less_equal(
            tf.cast(tf.strings.length(data), tf.int64),
            tf.constant(MAX_IMAGE_BYTES, tf.int64),
            message=f"image larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB",
        ),
        tf.debugging.assert_less_equal(
            size[0] * size[1],
            tf.constant(MAX_IMAGE_PIXELS, tf.int64),
            message=f"image has more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels",
        ),
    ]
    with tf.control_dependencies(checks):
        return decode_image(tf.identity(data))


def to_rgb(image) -> tf.Tensor:
    """uint8 [h, w, 1|3|4] -> [h, w, 3]: grey replicated, alpha dropped."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    return image[..., :3] if channels == 4 else image


# ----------------------------------------------------------------------------- which view


def view_family(data_config, image_size: int) -> str:
    """The view ("cifar", "imagenet" or "none") of `data_config.augment` at `image_size`."""
    if data_config.augment != "auto":
        return data_config.augment
    if data_config.dataset == "digits":
        # Flips turn digits into other shapes: ResNet-20 reached 98.1 % test accuracy without
        # augmentation and 94.7 % with "cifar" (15 epochs, measured).
        return "none"
    return "cifar" if image_size <= 64 else "imagenet"


# ----------------------------------------------------------------------------- evaluation views


def resize_to(image, size: int) -> tf.Tensor:
    """uint8 [h, w, 3] -> uint8 [size, size, 3]; bilinear, skipped when already that size."""

    def resize():
        return tf.saturate_cast(tf.round(tf.image.resize(image, [size, size], antialias=True)), tf.uint8)

    same = tf.reduce_all(tf.shape(image)[:2] == size)
    return tf.ensure_shape(tf.cond(same, lambda: image, resize), [size, size, 3])


def centre_crop(image, size: int, view=None) -> tf.Tensor:
    """ImageNet evaluation view: shorter side to `view.resize(size)` (default round(size / 0.875)),
    centre size x size crop, float32. `view` (`config.schema.EvalView`) also sets the interpolation and
    the rounding convention: "torchvision" reproduces torchvision's Resize + CenterCrop on a PIL image
    (timm's eval transform too), within the resampling kernels' differences."""
    from resnet_keras.config.schema import EvalView

    view = view or EvalView()
    short = view.resize(size)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = short / tf.reduce_min(hw)
    if view.convention == "torchvision":  # the longer side truncated, the shorter one exact
        resized = tf.where(hw == tf.reduce_min(hw), float(short), tf.floor(hw * scale))
        resized = tf.maximum(tf.cast(resized, tf.int32), size)
    else:
        resized = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
    image = tf.image.resize(image, resized, method=view.interpolation, antialias=True)
    if view.convention == "torchvision":
        image = tf.round(tf.clip_by_value(image, 0.0, 255.0))  # PIL resizes in uint8
        # CenterCrop: int(round((h - size) / 2)), Python's round (half to even), as tf.round.
        top, left = (tf.cast(tf.round(tf.cast(resized[k] - size, tf.float32) / 2), tf.int32) for k in (0, 1))
    else:
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def eval_view(family: str, image_size: int, view=None) -> Callable:
    """uint8 ``[h, w, 3]`` -> float32 ``[image_size, image_size, 3]`` raw pixels: the evaluation view
    of `family`, exactly as the input pipeline computes it. `view` (`config.schema.EvalView`, the
    model config's `eval_view`) shapes the "imagenet" view's resize and crop."""

    def apply(image):
        if family == "imagenet":
            return tf.ensure_shape(centre_crop(image, image_size, view), [image_size, image_size, 3])
        return tf.cast(resize_to(image, image_size), tf.float32)

    return apply


# ----------------------------------------------------------------------------- training views


def cifar_pad_crop_flip(images, key, labels, crop: int | None = None, flips=None):
    """Sec. 4.2 on a batch: uint8 [n, s, s, 3] -> float32 [n, c, c, 3], per-image crop and flip.

    `crop` (default s) smaller than s takes the central c x c of each s x s crop: the objects keep
    their scale and the translation range stays +-4 pixels, only the border is cut, so a network
    trained on these crops is tested on the whole s x s image as it is (FixRes without the
    resize: random-resized crops enlarge objects, these do not). One vectorised gather per batch:
    94k images/s on 2 cores against 26k for a per-image map, which leaves the cores to the model.
    `key` is the batch's stateless seed. `flips` (bool [n]) chooses the mirrored images instead of
    a coin per image (`alternating_flips`).
    """
    n, size = tf.shape(images)[0], images.shape[1]
    crop = size if crop is None else crop
    margin = (size - crop) // 2
    # Zero (black) padding as in common reimplementations; the paper pads after mean subtraction.
    padded = tf.pad(images, [[0, 0], [CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
    offsets = tf.random.stateless_uniform([2, n], tf.stack([key, 0]), 0, 2 * CIFAR_PAD + 1, tf.int32) + margin
    flip = tf.random.stateless_uniform([n], tf.stack([key, 1])) < 0.5 if flips is None else flips
    steps = tf.range(crop)
    rows = offsets[0][:, None] + steps
    cols = offsets[1][:, None] + tf.where(flip[:, None], crop - 1 - steps, steps)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    return tf.cast(out, tf.float32), labels


def flip_coins(count: int, seed: int) -> tf.Tensor:
    """A fair coin per image of a split of `count` (bool [count]), drawn from `seed` alone."""
    return tf.random.stateless_uniform([count], tf.constant([seed, 0x5EED], tf.int64)) < 0.5


def alternating_flips(indices, coins, epoch) -> tf.Tensor:
    """Which images of a batch to mirror in `epoch` (bool, like `indices`): every other epoch each.

    Airbench's derandomized flip (Jordan 2024, sec. 3.6): the image's coin (`flip_coins`, by its
    index in the split) mirrors it in even epochs, and its opposite in odd ones. Over any two
    consecutive epochs every image is seen once each way, where independent coins show half of
    the images the same way twice; the first epoch is a fair coin per image as before. Stateless,
    so a resumed run draws the same.
    """
    return tf.not_equal(tf.gather(coins, indices), tf.equal(tf.cast(epoch, tf.int64) % 2, 1))


def random_resized_crop(image, key, size: int) -> tf.Tensor:
    """Sec. 3.4 scale augmentation: uint8 [h, w, 3] -> float32 [size, size, 3], random flip.

    Given encoded bytes (a string tensor) instead, decodes only the crop (`decode_random_crop`).
    """
    if image.dtype == tf.string:
        return decode_random_crop(image, key, size)
    begin, crop = _sample_crop(tf.shape(image), key)
    return _resize_and_flip(tf.slice(image, begin, crop), key, size)


def _sample_crop(shape, key):
    """(begin, size) of an Inception-style crop (8-100 % of the area, aspect 3/4-4/3) of an image of
    `shape` [h, w, c], drawn from the stateless `key`."""
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=tf.stack([key, 0]),
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, crop


def _resize_and_flip(crop, key, size: int):
    image = tf.image.resize(crop, [size, size], antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=tf.stack([key, 1]))


def decode_random_crop(data, key, size: int) -> tf.Tensor:
    """`random_resized_crop` of encoded image bytes -> float32 [size, size, 3], decoding only the crop.

    A JPEG's size is in its header (`extract_jpeg_shape`): the crop window is sampled from it with
    the same stateless draw as `random_resized_crop`, and `decode_and_crop_jpeg` decodes only the
    window's blocks (Model Garden's ImageNet input). The crop keeps 8-100 % of the area, so this
    skips on average about half of the decoding work, and never holds the whole image. Other
    formats (PNG, GIF, BMP) are decoded whole and cropped alike.
    """

    def fused():
        begin, crop = _sample_crop(tf.image.extract_jpeg_shape(data), key)
        window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
        image = tf.ensure_shape(
            tf.io.decode_and_crop_jpeg(data, window, channels=3, dct_method=JPEG_DCT), [None, None, 3]
        )
        return _resize_and_flip(image, key, size)

    def whole():
        return random_resized_crop(decode_image(data), key, size)

    return tf.ensure_shape(tf.cond(tf.io.is_jpeg(data), fused, whole), [size, size, 3])
