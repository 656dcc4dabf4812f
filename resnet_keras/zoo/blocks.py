"""Residual layer factories: each takes a tensor and returns a tensor.

He et al. 2015, section 3 and Figure 5: a block computes y = F(x) + x (eq. 1), or
y = F(x) + W_s x (eq. 2) where the dimensions change. The basic block's F is two
3x3 convolutions (ResNet-18/34 and the CIFAR nets); the bottleneck's is 1x1, 3x3, 1x1
with a 4x wider output (ResNet-50/101/152). The pre-activation form (He et al. 2016,
"Identity Mappings in Deep Residual Networks", Figure 1b) moves BN and ReLU in front
of each convolution and leaves the shortcut path free of any non-linearity.

Layer names follow the paper's stages and keras.applications: `conv2_block1_1_conv`,
`..._1_bn`, `..._1_relu`, `..._0_conv` (shortcut), `..._add`, `..._out`.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from resnet_keras.core import tf_compat
from resnet_keras.core.errors import ConfigError

# Batch norm as in the paper's Caffe/Torch code: running averages with momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He et al. 2015 initialise as in "Delving Deep into Rectifiers" (the paper's ref. [13]).
KERNEL_INITIALIZER = "he_normal"

SHORTCUT_OPTIONS = ("A", "B")


@keras.saving.register_keras_serializable(package="resnet_keras")
class ZeroPadShortcut(layers.Layer):
    """Option A shortcut: subsample by `stride`, then append zero channels up to `filters`.

    Input [batch, H, W, C], output [batch, ceil(H/stride), ceil(W/stride), filters].
    It has no parameters, which is why the paper uses it for the CIFAR nets (section 4.2).
    A real layer rather than a `Lambda`, so models load with `safe_mode=True`.
    """

    def __init__(self, filters: int, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)

    def call(self, inputs):
        x = inputs[:, :: self.stride, :: self.stride, :] if self.stride > 1 else inputs
        extra = self.filters - x.shape[-1]
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]]) if extra else x

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        ceil = lambda size: None if size is None else -(-size // self.stride)  # noqa: E731
        return (batch, ceil(height), ceil(width), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


def _regularizer(weight_decay: float):
    # weight_decay / 2 * |w|^2 has gradient weight_decay * w: the paper's SGD weight decay.
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def conv(
    x,
    filters: int,
    kernel_size: int,
    *,
    stride: int = 1,
    weight_decay: float = 0.0,
    zero_init: bool = False,
    use_bias: bool = False,
    name: str,
):
    """Convolution named `{name}_conv`, bias-free unless `use_bias` (a BN follows, so a bias would
    be redundant; only the keras.applications ResNetV2 layout has convs with no BN after them).

    A strided 3x3 pads one pixel on every side first (`{name}_pad`), as the paper's Caffe
    model does; TensorFlow's "same" would pad only the bottom and right.
    """
    padding = "same"
    if stride > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer="zeros" if zero_init else KERNEL_INITIALIZER,
        kernel_regularizer=_regularizer(weight_decay),
        name=f"{name}_conv",
    )(x)


@keras.saving.register_keras_serializable(package="resnet_keras")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras BatchNormalization whose training step runs TensorFlow's fused kernel.

    Keras 3 computes training-mode BN on TensorFlow from separate moments, subtract, multiply
    and tile ops (~10 ops forward, more backward); `FusedBatchNormV3` does it in one op each
    way: 1.05-1.15x training images/s for ResNet-20 on a 2-core CPU (alternating A/B steps in
    one process; docs/benchmarks.md). Same variables, same moving-statistics update (the kernel's
    unbiased variance is rescaled to Keras's biased one), same outputs to float rounding.
    Inference, frozen layers and anything else unusual use Keras's own path.
    """

    def call(self, inputs, training=None, mask=None):
        if not (
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.scale
            and self.center
            and self.axis in (3, -1)
            and len(inputs.shape) == 4
            and keras.backend.backend() == "tensorflow"
        ):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # The input stays in the compute dtype: the fused kernel takes float16 and bfloat16 images
        # with float32 scale, offset and statistics and accumulates the statistics in float32
        # itself (what Keras's cast buys), and cuDNN's fast NHWC batch norm exists for half
        # types only. A cast to float32 first would add two full passes over every activation.
        x = tf.cast(inputs, self.compute_dtype)
        y, mean, variance = tf_compat.fused_batch_norm_training(
            x, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"), self.epsilon
        )
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def batch_norm(x, *, zero_gamma: bool = False, name: str):
    return FusedBatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )(x)


def conv_bn(
    x,
    filters: int,
    kernel_size: int,
    *,
    stride: int = 1,
    relu: bool = True,
    weight_decay: float = 0.0,
    zero_gamma: bool = False,
    name: str,
):
    """conv -> BN [-> ReLU], the post-activation unit of the original ResNet."""
    x = conv(x, filters, kernel_size, stride=stride, weight_decay=weight_decay, name=name)
    x = batch_norm(x, zero_gamma=zero_gamma, name=f"{name}_bn")
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def bn_relu(x, *, name: str):
    """BN -> ReLU, the pre-activation unit of He et al. 2016."""
    x = batch_norm(x, name=f"{name}_bn")
    return layers.ReLU(name=f"{name}_relu")(x)


def shortcut(
    x,
    filters: int,
    *,
    stride: int,
    option: str,
    preact: bool,
    weight_decay: float = 0.0,
    use_bias: bool = False,
    avg_down: bool = False,
    name: str,
):
    """The shortcut path: identity when shapes match, else option A (zero-pad) or B (1x1 projection).

    The projection of a post-activation block is followed by BN (as in keras.applications and
    torchvision); a pre-activation block's projection is a bare 1x1 conv (He et al. 2016).
    `avg_down` (ResNet-D, He et al. 2019 "Bag of Tricks", sec. 4.1): a strided projection first
    averages 2x2 windows (`{name}_0_pool`) and then projects at stride 1, so it reads every pixel
    instead of one in four.
    """
    if stride == 1 and x.shape[-1] == filters:
        return x
    if option == "A":
        if x.shape[-1] > filters:
            raise ConfigError(
                f"Received: option A shortcut from {x.shape[-1]} to {filters} channels; "
                "zero-padding can only add channels. Use shortcut 'B'."
            )
        return ZeroPadShortcut(filters, stride, name=f"{name}_0_pad")(x)
    if option != "B":
        raise ConfigError(f"Received: shortcut={option!r}; expected one of {', '.join(SHORTCUT_OPTIONS)}.")
    if avg_down and stride > 1:
        # "same" pads the bottom/right of an odd map and leaves the padding out of the mean: timm's
        # AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False).
        x = layers.AveragePooling2D(2, strides=stride, padding="same", name=f"{name}_0_pool")(x)
        stride = 1
    x = conv(x, filters, 1, stride=stride, weight_decay=weight_decay, use_bias=use_bias, name=f"{name}_0")
    return x if preact else batch_norm(x, name=f"{name}_0_bn")


def basic_block(
    x,
    filters: int,
    *,
    stride: int = 1,
    shortcut_option: str = "B",
    preact: bool = False,
    zero_init: bool = False,
    weight_decay: float = 0.0,
    stride_in_3x3: bool = True,
    layout: str = "paper",
    se_ratio: float = 0.0,
    avg_down: bool = False,
    drop_path: float = 0.0,
    name: str,
):
    """Two 3x3 convolutions plus a shortcut (paper Figure 5, left).

    [batch, H, W, C] -> [batch, H/stride, W/stride, filters]. `stride_in_3x3` is accepted for
    a uniform signature with the bottleneck; a basic block has only 3x3 convolutions.
    `se_ratio`, `avg_down` and `drop_path` are described in `_residual`.
    """
    del stride_in_3x3
    return _residual(
        x,
        filters,
        ((3, stride), (3, 1)),
        shortcut_option=shortcut_option,
        preact=preact,
        zero_init=zero_init,
        weight_decay=weight_decay,
        layout=layout,
        se_ratio=se_ratio,
        avg_down=avg_down,
        drop_path=drop_path,
        name=name,
    )


def bottleneck_block(
    x,
    filters: int,
    *,
    stride: int = 1,
    shortcut_option: str = "B",
    preact: bool = False,
    zero_init: bool = False,
    weight_decay: float = 0.0,
    stride_in_3x3: bool = False,
    layout: str = "paper",
    se_ratio: float = 0.0,
    avg_down: bool = False,
    drop_path: float = 0.0,
    name: str,
):
    """1x1 reduce, 3x3, 1x1 expand to `4 * filters`, plus a shortcut (paper Figure 5, right).

    [batch, H, W, C] -> [batch, H/stride, W/stride, 4 * filters]. The paper (v1) strides the
    first 1x1, which skips three quarters of its input; v1.5 strides the 3x3 instead, which
    sees every pixel and gains about 0.5% top-1 on ImageNet for ~7% more multiply-adds.
    """
    first, second = (1, stride) if stride_in_3x3 else (stride, 1)
    return _residual(
        x,
        filters * BLOCK_EXPANSION["bottleneck"],
        ((1, first, filters), (3, second, filters), (1, 1)),
        shortcut_option=shortcut_option,
        preact=preact,
        zero_init=zero_init,
        weight_decay=weight_decay,
        layout=layout,
        se_ratio=se_ratio,
        avg_down=avg_down,
        drop_path=drop_path,
        name=name,
    )


def _residual(
    x,
    out_filters,
    branch,
    *,
    shortcut_option,
    preact,
    zero_init,
    weight_decay,
    name,
    layout="paper",
    se_ratio=0.0,
    avg_down=False,
    drop_path=0.0,
):
    """Builds y = F(x) + shortcut(x) with F given as (kernel, stride[, filters]) per conv.

    layout="keras" (pre-activation only) reproduces keras.applications' ResNetV2 blocks: the
    convs that add into the residual stream (last conv, projection) have biases, and a strided
    block whose channels do not change subsamples its shortcut (`MaxPooling2D(1, stride)`).
    se_ratio > 0 rescales F's channels by squeeze-and-excitation (`squeeze_excite`) before the
    sum; drop_path > 0 drops F for a random `drop_path` of the examples while training
    (`DropPath`); avg_down pools before a strided projection shortcut (`shortcut`).
    """
    stride = max(layer[1] for layer in branch)
    needs_projection = stride != 1 or x.shape[-1] != out_filters
    if preact:
        keras_layout = layout == "keras"
        activated = bn_relu(x, name=f"{name}_preact")
        if keras_layout and x.shape[-1] == out_filters:
            # keras.applications ResNetV2: identity (subsampled by a 1x1 max pool) on the raw input.
            residual = x if stride == 1 else layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
        else:
            # The projection sees the normalised input; the identity path stays untouched.
            source = activated if needs_projection and shortcut_option == "B" else x
            residual = shortcut(
                source,
                out_filters,
                stride=stride,
                option=shortcut_option,
                preact=True,
                weight_decay=weight_decay,
                use_bias=keras_layout,
                avg_down=avg_down,
                name=name,
            )
        y = activated
        for index, (kernel, conv_stride, *width) in enumerate(branch, start=1):
            if index > 1:
                y = bn_relu(y, name=f"{name}_{index - 1}")
            last = index == len(branch)
            y = conv(
                y,
                width[0] if width else out_filters,
                kernel,
                stride=conv_stride,
                weight_decay=weight_decay,
                zero_init=zero_init and last,
                use_bias=keras_layout and last,
                name=f"{name}_{index}",
            )
        y = _branch_end(y, se_ratio=se_ratio, drop_path=drop_path, weight_decay=weight_decay, name=name)
        return layers.Add(name=f"{name}_out")([residual, y])

    residual = shortcut(
        x,
        out_filters,
        stride=stride,
        option=shortcut_option,
        preact=False,
        weight_decay=weight_decay,
        avg_down=avg_down,
        name=name,
    )
    y = x
    for index, (kernel, conv_stride, *width) in enumerate(branch, start=1):
        last = index == len(branch)
        y = conv_bn(
            y,
            width[0] if width else out_filters,
            kernel,
            stride=conv_stride,
            relu=not last,
            weight_decay=weight_decay,
            zero_gamma=zero_init and last,
            name=f"{name}_{index}",
        )
    y = _branch_end(y, se_ratio=se_ratio, drop_path=drop_path, weight_decay=weight_decay, name=name)
    y = layers.Add(name=f"{name}_add")([residual, y])
    return layers.ReLU(name=f"{name}_out")(y)


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}
BLOCK_EXPANSION = {"basic": 1, "bottleneck": 4}


def residual_stage(
    x,
    block: str,
    filters: int,
    blocks: int,
    *,
    stride: int,
    name: str,
    last_stride: int = 1,
    drop_path_rates=(),
    **block_options,
):
    """`blocks` residual blocks of one kind; the first one carries the stage's stride.

    `last_stride` strides the stage's last block instead (keras.applications ResNetV2 downsamples
    at the end of a stage for the next one; with it, pass stride=1). `drop_path_rates` (one per
    block, or empty for none) is each block's stochastic-depth rate. Names the blocks
    `{name}_block1`, `{name}_block2`, ...
    """
    if block not in BLOCKS:
        raise ConfigError(f"Received: block={block!r}; expected one of {', '.join(BLOCKS)}.")
    for index in range(blocks):
        block_stride = stride if index == 0 else 1
        if index == blocks - 1 and last_stride != 1:
            block_stride *= last_stride
        if drop_path_rates:
            block_options["drop_path"] = drop_path_rates[index]
        x = BLOCKS[block](x, filters, stride=block_stride, name=f"{name}_block{index + 1}", **block_options)
    return x


def imagenet_stem(x, filters: int = 64, *, preact: bool = False, weight_decay: float = 0.0, use_bias: bool = False):
    """7x7/2 conv and 3x3/2 max pool (Table 1, conv1 and the start of conv2_x): H -> H/4.

    `use_bias` for keras.applications' ResNetV2, whose conv1 bias cannot be folded anywhere:
    no BN follows it, and the max pool's zero padding does not commute with a constant shift.
    """
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(
        filters,
        7,
        strides=2,
        use_bias=use_bias,
        kernel_initializer=KERNEL_INITIALIZER,
        kernel_regularizer=_regularizer(weight_decay),
        name="conv1_conv",
    )(x)
    if not preact:  # a pre-activation network normalises at the first block instead
        x = bn_relu(x, name="conv1")
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def small_stem(x, filters: int = 16, *, preact: bool = False, weight_decay: float = 0.0, use_bias: bool = False):
    """3x3/1 conv, no pooling (section 4.2, the CIFAR nets' first layer): keeps H x W."""
    if preact:
        return conv(x, filters, 3, weight_decay=weight_decay, use_bias=use_bias, name="conv1")
    return conv_bn(x, filters, 3, weight_decay=weight_decay, name="conv1")


def deep_stem(x, filters: int = 64, *, preact: bool = False, weight_decay: float = 0.0, use_bias: bool = False):
    """ResNet-C stem (He et al. 2019, "Bag of Tricks", sec. 4.1): three 3x3 convs of filters/2,
    filters/2 and filters channels, the first at stride 2, then the 3x3/2 max pool: H -> H/4.

    Three 3x3 convs see the 7x7 field of the paper's conv1 at less cost per output channel and
    with two more non-linearities. Widths 32/32/64 at filters=64, as timm's `resnet50d`
    (`stem_width=32, stem_type="deep"`). Names `conv1_1_*`, `conv1_2_*`, `conv1_3_conv`, then
    `conv1_bn`/`conv1_relu` (post-activation) and `pool1_pool` as the 7x7 stem.
    """
    del use_bias  # only the keras.applications ResNetV2 layout has a conv1 bias; it has no deep stem
    half = max(1, filters // 2)
    x = conv_bn(x, half, 3, stride=2, weight_decay=weight_decay, name="conv1_1")
    x = conv_bn(x, half, 3, weight_decay=weight_decay, name="conv1_2")
    x = conv(x, filters, 3, weight_decay=weight_decay, name="conv1_3")
    if not preact:
        x = bn_relu(x, name="conv1")
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


STEMS = {"imagenet": imagenet_stem, "small": small_stem, "deep": deep_stem}


# ----------------------------------------------------------------------------- modern block options

# timm's SEModule rounds the squeezed width to a multiple of 8 (at least 8), never up by 10 %.
SE_DIVISOR = 8


def se_channels(channels: int, ratio: float) -> int:
    """Channels of the squeeze: round(channels * ratio) to a multiple of SE_DIVISOR, at least SE_DIVISOR
    (timm's `make_divisible(..., round_limit=0)`, so parameter counts match its `seresnet*`)."""
    value = channels * ratio
    return max(SE_DIVISOR, int(value + SE_DIVISOR / 2) // SE_DIVISOR * SE_DIVISOR)


def squeeze_excite(x, ratio: float, *, weight_decay: float = 0.0, name: str):
    """Squeeze-and-excitation (Hu et al. 2018, Figure 3): [b, H, W, C] -> [b, H, W, C] rescaled per channel.

    Global average (`{name}_se_squeeze`), 1x1 conv to `se_channels(C, ratio)` with bias and ReLU
    (`_se_reduce`, `_se_relu`), 1x1 conv back to C with bias and sigmoid (`_se_expand`), product
    (`_se_excite`): the names of keras.applications' EfficientNet. Applied to the residual branch
    after its last BN, before the sum, as in the paper's SE-ResNet module and timm.
    """
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(x)
    s = layers.Conv2D(
        se_channels(channels, ratio),
        1,
        kernel_initializer=KERNEL_INITIALIZER,
        kernel_regularizer=_regularizer(weight_decay),
        name=f"{name}_se_reduce",
    )(s)
    s = layers.ReLU(name=f"{name}_se_relu")(s)
    s = layers.Conv2D(
        channels,
        1,
        activation="sigmoid",
        kernel_initializer=KERNEL_INITIALIZER,
        kernel_regularizer=_regularizer(weight_decay),
        name=f"{name}_se_expand",
    )(s)
    return layers.Multiply(name=f"{name}_se_excite")([x, s])


def replica_dropout(inputs, rate: float, noise_shape, seed_generator):
    """`inputs` with a random `rate` of the `noise_shape` entries zeroed and the rest scaled by
    1 / (1 - rate), from `seed_generator`'s next seed offset by the tf.distribute replica id.

    Every replica holds the same generator state (a mirrored variable), so Keras' own
    `keras.random.dropout` draws the same mask on every replica: N GPUs drop the same examples'
    blocks, which is dropout on 1/N of the batch. The replica id (0 outside a strategy, and for
    replica 0, which keeps the single-device masks) makes one stream per replica. It is the only
    place model code reads the distribution context, and it only reads.
    """
    import tensorflow as tf

    replica = tf.distribute.get_replica_context()
    replica_id = 0 if replica is None else replica.replica_id_in_sync_group
    seed = tf.cast(seed_generator.next(), tf.int64) + tf.stack(
        [tf.constant(0, tf.int64), tf.cast(replica_id, tf.int64)]
    )
    keep = tf.random.stateless_uniform(noise_shape, seed=seed) >= rate
    return inputs * tf.cast(keep, inputs.dtype) / tf.cast(1.0 - rate, inputs.dtype)


@keras.saving.register_keras_serializable(package="resnet_keras")
class DropPath(layers.Layer):
    """Stochastic depth (Huang et al. 2016): while training, zero the input of a random `rate` of the
    examples and scale the others by 1 / (1 - rate), so the expected output equals the input.

    Applied to a residual branch, it drops the whole block for those examples (the shortcut still
    carries them). Identity at inference. [batch, ...] -> same shape. A real layer rather than a
    `Lambda`, so models load with `safe_mode=True`; its random stream is a Keras `SeedGenerator`
    (seeded by `keras.utils.set_random_seed`, as `Dropout`), one stream per replica (`replica_dropout`).
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate <= 0.0:
            return inputs
        noise_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        return replica_dropout(inputs, self.rate, noise_shape, self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="resnet_keras")
class Dropout(layers.Dropout):
    """`keras.layers.Dropout` with one random stream per replica (`replica_dropout`); same config."""

    def call(self, inputs, training=False):
        if not training or self.rate <= 0.0:
            return inputs
        shape = ops.shape(inputs)
        noise_shape = (
            shape
            if self.noise_shape is None
            else [shape[i] if d is None else d for i, d in enumerate(self.noise_shape)]
        )
        return replica_dropout(inputs, self.rate, noise_shape, self.seed_generator)


def _branch_end(y, *, se_ratio: float, drop_path: float, weight_decay: float, name: str):
    """The residual branch's optional squeeze-and-excitation, then its optional drop path."""
    if se_ratio:
        y = squeeze_excite(y, se_ratio, weight_decay=weight_decay, name=name)
    if drop_path:
        y = DropPath(drop_path, name=f"{name}_drop_path")(y)
    return y
