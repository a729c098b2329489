"""Power-average (LP) pooling with a learnable power ``p``.

For each non-overlapping ``pool_size`` window of ``n`` values, with ``a = |x| + eps``:

    y = (mean_window a ** p) ** (1 / p)

``p = 1`` is average pooling of ``|x|``, ``p = 2`` a root-mean-square, and
``p -> inf`` tends to max pooling: learning ``p`` lets the network pick its place
between average and max (Gulcehre et al., 2014, "Learned-Norm Pooling").

``a ** p`` overflows float32 for large inputs, so the op divides by the window
maximum ``m`` first (``y`` does not depend on that choice). With ``r = a / m`` in
``(0, 1]``, ``S = mean r ** p`` and ``q = y / m = S ** (1 / p)``:

    dy/da_i = (r_i / q) ** (p - 1) / n
    dy/dp   = y / p * (mean(r ** p * log r) / S - log(S) / p)

and ``da/dx = sign(x)``. Windows do not overlap (``strides = pool_size``), so pooling
is a reshape plus a reduction and the backward pass is a broadcast.
"""

import math

import keras
from keras import ops

from kernels._shared import as_tensor as _tensor
from kernels._shared import standardize_data_format as _standardize_data_format

EPSILON = 1e-6


def _windows(x, pool_size):
    """Reshape (batch, height, width, channels) to (batch, h, ph, w, pw, channels).

    Rows and columns that do not fill a whole window are dropped ("valid" padding).
    """
    pool_height, pool_width = pool_size
    _, height, width, channels = x.shape
    out_height, out_width = height // pool_height, width // pool_width
    if out_height == 0 or out_width == 0:
        raise ValueError(
            f"pool_size {pool_size} is larger than the input ({height}, {width})"
        )
    x = x[:, : out_height * pool_height, : out_width * pool_width, :]
    return ops.reshape(
        x, (-1, out_height, pool_height, out_width, pool_width, channels)
    )


def _window_mean(values):
    """Mean over each window. (On torch, ops.mean computes in float32 even for
    float64 inputs; a sum keeps float64 for the gradient check.)"""
    window_count = values.shape[2] * values.shape[4]
    return ops.sum(values, axis=(2, 4), keepdims=True) / window_count


def _check_pool_size(pool_size):
    if isinstance(pool_size, int):
        pool_size = (pool_size, pool_size)
    pool_size = tuple(int(size) for size in pool_size)
    if len(pool_size) != 2 or min(pool_size) < 1:
        raise ValueError(f"pool_size must be 1 or 2 positive integers, got {pool_size}")
    return pool_size


def reference_lp_pooling(x, p, pool_size=2):
    """LP pooling in plain keras.ops (channels_last); Keras differentiates it."""
    pool_size = _check_pool_size(pool_size)
    x = _tensor(x)
    p = _tensor(p, x.dtype)
    magnitude = _windows(ops.abs(x) + EPSILON, pool_size)
    window_max = ops.stop_gradient(ops.max(magnitude, axis=(2, 4), keepdims=True))
    mean_power = _window_mean((magnitude / window_max) ** p)
    return ops.squeeze(window_max * mean_power ** (1.0 / p), axis=(2, 4))


def _lp_pooling_with_gradient(pool_size):
    pool_height, pool_width = pool_size
    window_count = float(pool_height * pool_width)

    @ops.custom_gradient
    def forward(x, p):
        magnitude = _windows(ops.abs(x) + EPSILON, pool_size)
        window_max = ops.max(magnitude, axis=(2, 4), keepdims=True)
        ratio = magnitude / window_max
        ratio_power = ratio**p
        mean_power = _window_mean(ratio_power)
        relative = mean_power ** (1.0 / p)
        y = window_max * relative

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.expand_dims(ops.expand_dims(upstream, 2), 4)
            grad_magnitude = upstream * (ratio / relative) ** (p - 1.0) / window_count
            grad_windows = grad_magnitude * ops.sign(_windows(x, pool_size))
            _, height, width, channels = x.shape
            grad_x = ops.reshape(
                grad_windows,
                (-1, y.shape[1] * pool_height, y.shape[3] * pool_width, channels),
            )
            grad_x = ops.pad(
                grad_x,
                [
                    (0, 0),
                    (0, height - grad_x.shape[1]),
                    (0, width - grad_x.shape[2]),
                    (0, 0),
                ],
            )
            weighted_log = _window_mean(ratio_power * ops.log(ratio))
            grad_p = ops.sum(
                upstream
                * (y / p)
                * (weighted_log / mean_power - ops.log(mean_power) / p)
            )
            return grad_x, grad_p

        return ops.squeeze(y, axis=(2, 4)), grad

    return forward


def lp_pooling(x, p, pool_size=2):
    """LP pooling with the hand-written gradient (w.r.t. ``x`` and the power ``p``).

    Args:
        x: tensor (batch, height, width, channels).
        p: scalar power, > 0 (the layer keeps it >= 1).
        pool_size: int or (height, width); strides equal the pool size.
    """
    pool_size = _check_pool_size(pool_size)
    x = _tensor(x)
    p = _tensor(p, x.dtype)
    if len(x.shape) != 4:
        raise ValueError(f"expected a 4D (batch, h, w, c) input, got shape {x.shape}")
    return _lp_pooling_with_gradient(pool_size)(x, p)


@keras.saving.register_keras_serializable(package="kernels")
class LPPooling2D(keras.layers.Layer):
    """2D power-average pooling with a trainable power ``p = 1 + softplus(rho)``.

    Args:
        pool_size: int or (height, width); strides equal it ("valid" padding).
        initial_power: starting ``p`` (> 1); 1 is average, large values near max.
        data_format: "channels_last" or "channels_first" (default: Keras config).
        use_reference: use the autodiff reference instead of the hand-written gradient.
    """

    def __init__(
        self,
        pool_size=2,
        initial_power=3.0,
        data_format=None,
        use_reference=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pool_size = _check_pool_size(pool_size)
        if initial_power <= 1.0:
            raise ValueError(f"initial_power must be > 1, got {initial_power}")
        self.initial_power = float(initial_power)
        self.data_format = _standardize_data_format(data_format)
        self.use_reference = bool(use_reference)

    def build(self, input_shape):
        # Inverse softplus, so that p starts at initial_power.
        rho = math.log(math.expm1(self.initial_power - 1.0))
        self.rho = self.add_weight(
            name="rho", shape=(), initializer=keras.initializers.Constant(rho)
        )

    @property
    def power(self):
        """The current power ``p`` (a tensor)."""
        return 1.0 + ops.softplus(self.rho)

    def call(self, inputs):
        if self.data_format == "channels_first":
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        power = ops.cast(self.power, inputs.dtype)
        pool = reference_lp_pooling if self.use_reference else lp_pooling
        outputs = pool(inputs, power, self.pool_size)
        if self.data_format == "channels_first":
            outputs = ops.transpose(outputs, (0, 3, 1, 2))
        return outputs

    def compute_output_shape(self, input_shape):
        input_shape = list(input_shape)
        spatial = [1, 2] if self.data_format == "channels_last" else [2, 3]
        for axis, size in zip(spatial, self.pool_size):
            if input_shape[axis] is not None:
                input_shape[axis] = input_shape[axis] // size
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "initial_power": self.initial_power,
            "data_format": self.data_format,
            "use_reference": self.use_reference,
        }
