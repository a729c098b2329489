"""Swish with a learnable ``beta``: ``f(x) = x * sigmoid(beta * x)``.

``beta = 1`` is SiLU, ``beta -> 0`` tends to ``x / 2`` (linear) and ``beta -> inf``
to ReLU, so learning ``beta`` lets each layer choose its own non-linearity
(Ramachandran et al., 2017, "Searching for Activation Functions").

With ``s = sigmoid(beta * x)``, and ``s' = s (1 - s)`` the derivative of the sigmoid:

    df/dx    = s + beta * x * s'
    df/dbeta = x * x * s'

``beta`` is a scalar or holds one value per channel (the last axis), so its gradient
sums ``upstream * df/dbeta`` over every axis it was broadcast along.
"""

import keras
from keras import ops

from kernels._shared import as_tensor as _tensor


def reference_swish(x, beta):
    """Swish in plain keras.ops; Keras differentiates it."""
    x = _tensor(x)
    beta = _tensor(beta, x.dtype)
    return x * ops.sigmoid(beta * x)


def _sum_to_shape(gradient, shape):
    """Sum a broadcast gradient back to ``shape``: ``()`` or ``(channels,)``."""
    if len(shape) == 0:
        return ops.sum(gradient)
    return ops.sum(ops.reshape(gradient, (-1, shape[-1])), axis=0)


@ops.custom_gradient
def _swish(x, beta):
    sigmoid = ops.sigmoid(beta * x)
    sigmoid_derivative = sigmoid * (1.0 - sigmoid)

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        grad_x = upstream * (sigmoid + beta * (x * sigmoid_derivative))
        # x * (x * s') rather than x**2 * s': s' is exactly 0 where |x| is huge,
        # so the product stays 0 instead of inf * 0 = NaN.
        grad_beta = _sum_to_shape(upstream * (x * (x * sigmoid_derivative)), beta.shape)
        return grad_x, grad_beta

    return x * sigmoid, grad


def swish(x, beta):
    """Swish with the hand-written gradient (w.r.t. ``x`` and ``beta``).

    Args:
        x: tensor of any shape.
        beta: scalar, or one value per channel (shape ``(x.shape[-1],)``).
    """
    x = _tensor(x)
    beta = _tensor(beta, x.dtype)
    if len(beta.shape) > 1 or (len(beta.shape) == 1 and beta.shape[0] != x.shape[-1]):
        raise ValueError(
            f"beta must be a scalar or have shape ({x.shape[-1]},), got {beta.shape}"
        )
    return _swish(x, beta)


@keras.saving.register_keras_serializable(package="kernels")
class LearnableSwish(keras.layers.Layer):
    """Swish activation ``x * sigmoid(beta * x)`` with a trainable ``beta``.

    Args:
        beta_initializer: initial value of ``beta`` (1.0 is SiLU).
        per_channel: one ``beta`` per channel (last axis) instead of one per layer.
        use_reference: use the autodiff reference instead of the hand-written gradient.
    """

    def __init__(
        self, beta_initializer=1.0, per_channel=False, use_reference=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.beta_initializer = float(beta_initializer)
        self.per_channel = bool(per_channel)
        self.use_reference = bool(use_reference)

    def build(self, input_shape):
        if self.per_channel and input_shape[-1] is None:
            raise ValueError("per_channel=True needs a known last dimension")
        self.beta = self.add_weight(
            name="beta",
            shape=(input_shape[-1],) if self.per_channel else (),
            initializer=keras.initializers.Constant(self.beta_initializer),
        )

    def call(self, inputs):
        beta = ops.cast(self.beta, inputs.dtype)
        if self.use_reference:
            return reference_swish(inputs, beta)
        return swish(inputs, beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "beta_initializer": self.beta_initializer,
            "per_channel": self.per_channel,
            "use_reference": self.use_reference,
        }
