"""Model builders. Every model takes raw 0-255 grayscale pixels; rescaling is inside the model,
so the int8 TFLite model is fed camera pixels unchanged."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from train.data import CLASS_NAMES, IMAGE_SIZE


def build_model(architecture: str, **kwargs) -> keras.Model:
    try:
        builder = MODELS[architecture]
    except KeyError:
        raise ValueError(f"unknown model {architecture!r}; choose one of {sorted(MODELS)}") from None
    return builder(**kwargs)


def _inputs():
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    return inputs, layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)


def _head(x, dense, dropout, bn_momentum):
    """Feature map -> class scores: flatten, a BN-ReLU dense layer, dropout on both sides."""
    x = layers.Flatten()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(dense, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=bn_momentum)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(dropout)(x)
    return _scores(x)


def _scores(x):
    # float32 even under a mixed-precision policy: softmax and the losses need the range.
    return layers.Dense(len(CLASS_NAMES), activation="softmax", dtype="float32", name="scores")(x)


def seed_cnn(name: str = "seed") -> keras.Model:
    """The origin notebook's Sequential CNN, kept as the reference point."""
    inputs, x = _inputs()
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Conv2D(128, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(128, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(1024, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, _scores(x), name=name)


def vgg_bn(
    widths=(32, 64, 128, 256), convs_per_stage=2, dense=256, dropout=0.4, bn_momentum=0.99, name="vgg_bn"
) -> keras.Model:
    """VGG-style stages of 3x3 conv + BN + ReLU, max-pooled; a small dense head.

    Plain 3x3 convolutions are what int8 kernels on a Pi's Cortex-A run fastest per MAC. A lower
    ``bn_momentum`` lets BatchNorm's moving statistics settle within a few hundred steps (tiny runs).
    """
    inputs, x = _inputs()
    for stage, width in enumerate(widths):
        for i in range(convs_per_stage):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"s{stage}_conv{i}")(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"s{stage}_bn{i}")(x)
            x = layers.ReLU(name=f"s{stage}_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"s{stage}_pool")(x)
    return keras.Model(inputs, _head(x, dense, dropout, bn_momentum), name=name)


def sep_bn(
    widths=(40, 80, 160, 320), convs_per_stage=2, dense=256, dropout=0.3, bn_momentum=0.99, name="sep_bn"
) -> keras.Model:
    """:func:`vgg_bn` with each 3x3 convolution split into a depthwise 3x3 and a pointwise 1x1
    (MobileNet's separable convolution), after one full 3x3 stem on the single-channel input.

    About a sixth of the MACs of :func:`vgg_bn` at the same widths: the fast tier's way to wider
    layers within its budget.
    """
    inputs, x = _inputs()
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, width in enumerate(widths):
        for i in range(convs_per_stage):
            x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"s{stage}_dw{i}")(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"s{stage}_dw_bn{i}")(x)
            x = layers.ReLU(name=f"s{stage}_dw_relu{i}")(x)
            x = layers.Conv2D(width, 1, use_bias=False, name=f"s{stage}_pw{i}")(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"s{stage}_pw_bn{i}")(x)
            x = layers.ReLU(name=f"s{stage}_pw_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"s{stage}_pool")(x)
    return keras.Model(inputs, _head(x, dense, dropout, bn_momentum), name=name)


MODELS: dict[str, Callable[..., keras.Model]] = {"seed": seed_cnn, "vgg_bn": vgg_bn, "sep_bn": sep_bn}


@keras.saving.register_keras_serializable(package="fer")
class MirrorImage(layers.Layer):
    """Horizontal flip of an NHWC batch (TFLite: REVERSE_V2)."""

    def call(self, x):
        return keras.ops.flip(x, axis=2)


def with_flip_tta(model: keras.Model) -> keras.Model:
    """``model`` averaged over the face and its mirror image: test-time augmentation inside the
    model, so the device runs it as one inference (of twice the MACs)."""
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    scores = layers.Average(name="scores_tta")([model(inputs), model(MirrorImage()(inputs))])
    return keras.Model(inputs, scores, name=f"{model.name}_flip_tta")


def grow_from(wide: keras.Model, narrow: keras.Model) -> None:
    """Start ``wide`` from a trained ``narrow`` model of the same layers with fewer channels.

    Each weight of ``narrow`` fills the leading slice of its counterpart; the kernel weights that
    read an added input channel are zeroed (a depthwise kernel reads only its own channel), so
    ``wide`` computes exactly what ``narrow`` did, while its added channels (randomly initialized,
    as built) receive gradients from the first step: widening without the symmetry that copying
    channels (Net2Net) would have to break.
    """
    if [type(layer) for layer in wide.layers] != [type(layer) for layer in narrow.layers]:
        raise ValueError(f"{narrow.name} and {wide.name} differ in their layers, not only in their widths")
    in_channels = 1  # channels of the current activation, narrow model
    for wide_layer, narrow_layer in zip(wide.layers, narrow.layers):
        old_weights, new_weights = narrow_layer.get_weights(), wide_layer.get_weights()
        if not old_weights:
            continue
        grown = []
        for old, new in zip(old_weights, new_weights):
            shape, new = new.shape, new.copy()
            if isinstance(wide_layer, layers.Dense) and old.ndim == 2:
                # rows after Flatten are (row, column, channel) of the last feature map: (spatial, inputs, outputs)
                spatial = old.shape[0] // in_channels
                old, new = old.reshape(spatial, in_channels, -1), new.reshape(spatial, shape[0] // spatial, -1)
            if old.ndim >= 2 and not isinstance(wide_layer, layers.DepthwiseConv2D):  # (..., inputs, outputs)
                new[..., old.shape[-2] :, :] = 0.0
            new[tuple(slice(0, n) for n in old.shape)] = old
            grown.append(new.reshape(shape))
        wide_layer.set_weights(grown)
        if isinstance(narrow_layer, (layers.Conv2D, layers.Dense)):  # (a DepthwiseConv2D keeps its channels)
            in_channels = old_weights[0].shape[-1]


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one inference over conv and dense layers."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            out = layer.output.shape  # (None, H, W, C)
            k = layer.kernel.shape  # (kh, kw, cin, cout or mult)
            if isinstance(layer, layers.DepthwiseConv2D):
                macs += out[1] * out[2] * out[3] * k[0] * k[1]
            else:
                macs += out[1] * out[2] * out[3] * k[0] * k[1] * k[2] // layer.groups
        elif isinstance(layer, layers.Dense):
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(macs)
