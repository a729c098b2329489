"""Convolution with extra logic: weight standardization, and a fixed Sobel filter.

**Weight standardization** (Qiao et al., 2019) rescales each output filter of a
convolution kernel to zero mean and unit variance before convolving. Over the
``n = kernel_height * kernel_width * in_channels`` weights of one filter, with
``sigma = sqrt(var(w) + epsilon)`` and ``w_hat = (w - mean(w)) / sigma``, the
backward pass is the layer-normalization one:

    dL/dw = (g - mean(g) - w_hat * mean(g * w_hat)) / sigma,    g = dL/dw_hat

**Sobel** filters are fixed 3x3 derivative kernels (``SOBEL_X`` responds to vertical
edges, ``SOBEL_Y`` to horizontal ones). With zero "same" padding and stride 1, the
gradient of a correlation with kernel ``K`` w.r.t. its input is the correlation of
the upstream gradient with ``K`` flipped in both directions. Sobel kernels are
antisymmetric, so the flipped kernel is ``-K``: the backward pass is minus the Sobel
filter applied to the upstream gradient.
"""

import keras
from keras import ops

from kernels._shared import as_tensor as _tensor
from kernels._shared import standardize_data_format as _standardize_data_format

SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
SOBEL_Y = [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]


# Weight standardization ---------------------------------------------------------

_FILTER_AXES = (0, 1, 2)


def _filter_mean(values):
    """Mean over each output filter. (On torch, ops.mean and ops.var compute in
    float32 even for float64 inputs; a sum keeps float64 for the gradient check.)"""
    count = values.shape[0] * values.shape[1] * values.shape[2]
    return ops.sum(values, axis=_FILTER_AXES, keepdims=True) / count


def reference_weight_standardize(kernel, epsilon=1e-5):
    """Standardize each output filter of a (kh, kw, in, out) kernel; keras.ops only."""
    kernel = _tensor(kernel)
    centered = kernel - _filter_mean(kernel)
    return centered / ops.sqrt(_filter_mean(centered * centered) + epsilon)


def _weight_standardize_with_gradient(epsilon):
    @ops.custom_gradient
    def forward(kernel):
        centered = kernel - _filter_mean(kernel)
        sigma = ops.sqrt(_filter_mean(centered * centered) + epsilon)
        standardized = centered / sigma

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            mean_upstream = _filter_mean(upstream)
            mean_projection = _filter_mean(upstream * standardized)
            return (upstream - mean_upstream - standardized * mean_projection) / sigma

        return standardized, grad

    return forward


def weight_standardize(kernel, epsilon=1e-5):
    """Weight standardization with the hand-written gradient.

    Args:
        kernel: convolution kernel (kernel_height, kernel_width, in_channels, filters).
        epsilon: added to the variance; keeps constant filters finite.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    kernel = _tensor(kernel)
    if len(kernel.shape) != 4:
        raise ValueError(f"expected a 4D Conv2D kernel, got shape {kernel.shape}")
    return _weight_standardize_with_gradient(float(epsilon))(kernel)


@keras.saving.register_keras_serializable(package="kernels")
class WSConv2D(keras.layers.Conv2D):
    """Conv2D whose kernel is weight-standardized on every call.

    Takes every ``keras.layers.Conv2D`` argument, plus:

    Args:
        epsilon: added to each filter's variance.
        use_reference: use the autodiff reference instead of the hand-written gradient.
    """

    def __init__(self, *args, epsilon=1e-5, use_reference=False, **kwargs):
        super().__init__(*args, **kwargs)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)
        self.use_reference = bool(use_reference)

    def convolution_op(self, inputs, kernel):
        standardize = (
            reference_weight_standardize if self.use_reference else weight_standardize
        )
        return super().convolution_op(inputs, standardize(kernel, self.epsilon))

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "use_reference": self.use_reference,
        }


# Sobel edge filter ---------------------------------------------------------------


def _filter_each_channel(images, kernels_2d):
    """Correlate every channel with each 3x3 kernel ("same", zero padding).

    Returns (batch, height, width, channels * len(kernels_2d)), ordered
    channel-major: [k0(c0), k1(c0), k0(c1), k1(c1), ...].
    """
    channels = images.shape[-1]
    kernel = ops.stack([_tensor(k, images.dtype) for k in kernels_2d], axis=-1)
    kernel = ops.tile(kernel[:, :, None, :], (1, 1, channels, 1))
    return ops.depthwise_conv(images, kernel, strides=1, padding="same")


def _flip(kernel_2d):
    return [row[::-1] for row in kernel_2d[::-1]]


def reference_sobel(images):
    """Sobel derivatives of (batch, height, width, channels) images; keras.ops only.

    Returns (batch, height, width, 2 * channels): per input channel, the x derivative
    then the y derivative.
    """
    return _filter_each_channel(_tensor(images), [SOBEL_X, SOBEL_Y])


@ops.custom_gradient
def _sobel(images):
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        channels = images.shape[-1]
        upstream = ops.reshape(upstream, (-1, *upstream.shape[1:3], channels, 2))
        return _filter_each_channel(upstream[..., 0], [_flip(SOBEL_X)]) + (
            _filter_each_channel(upstream[..., 1], [_flip(SOBEL_Y)])
        )

    return _filter_each_channel(images, [SOBEL_X, SOBEL_Y]), grad


def sobel(images):
    """Sobel derivatives with the hand-written gradient; same as the reference."""
    images = _tensor(images)
    if len(images.shape) != 4:
        raise ValueError(
            f"expected 4D (batch, height, width, channels) images, got {images.shape}"
        )
    return _sobel(images)


@keras.saving.register_keras_serializable(package="kernels")
class SobelEdges(keras.layers.Layer):
    """A fixed (non-trainable) Sobel edge filter applied to every channel.

    Args:
        output_mode: "magnitude" gives sqrt(gx**2 + gy**2) per channel, the input's
            shape; "xy" gives both derivatives, 2 * channels (gx, gy per channel).
        data_format: "channels_last" or "channels_first" (default: Keras config).
        use_reference: use the autodiff reference instead of the hand-written gradient.
    """

    _OUTPUT_MODES = ("magnitude", "xy")

    def __init__(
        self, output_mode="magnitude", data_format=None, use_reference=False, **kwargs
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if output_mode not in self._OUTPUT_MODES:
            raise ValueError(
                f"output_mode must be one of {self._OUTPUT_MODES}, got {output_mode!r}"
            )
        self.output_mode = output_mode
        self.data_format = _standardize_data_format(data_format)
        self.use_reference = bool(use_reference)

    def call(self, inputs):
        if self.data_format == "channels_first":
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        derivatives = (reference_sobel if self.use_reference else sobel)(inputs)
        if self.output_mode == "magnitude":
            pairs = ops.reshape(derivatives, (-1, *inputs.shape[1:], 2))
            derivatives = ops.sqrt(ops.sum(pairs * pairs, axis=-1) + 1e-12)
        if self.data_format == "channels_first":
            derivatives = ops.transpose(derivatives, (0, 3, 1, 2))
        return derivatives

    def compute_output_shape(self, input_shape):
        if self.output_mode == "magnitude":
            return tuple(input_shape)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        output_shape = list(input_shape)
        if output_shape[channel_axis] is not None:
            output_shape[channel_axis] *= 2
        return tuple(output_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "output_mode": self.output_mode,
            "data_format": self.data_format,
            "use_reference": self.use_reference,
        }
