"""Additive (Bahdanau) attention pooling over time steps.

For a sequence of hidden states ``h_t`` (batch, time, features), e.g. the outputs of
a bidirectional GRU, attention pooling learns which steps matter:

    hidden_t = tanh(h_t @ kernel + bias)          (batch, time, units)
    score_t  = hidden_t @ score_vector            (batch, time)
    weights  = softmax(score over unmasked steps)  (batch, time)
    context  = sum_t weights_t * h_t              (batch, features)

(Bahdanau et al., 2015; as pooling for classification: Yang et al., 2016.)
The backward pass walks the same chain in reverse. With ``gc`` and ``gw`` the
upstream gradients of ``context`` and ``weights``:

    g_weights = gw + gc . h_t
    g_score   = weights * (g_weights - sum_t weights * g_weights)   (softmax)
    g_pre     = (g_score * score_vector) * (1 - hidden ** 2)         (tanh)
    dh_t      = weights_t * gc + g_pre @ kernel.T
    dkernel   = sum h_t^T g_pre,  dbias = sum g_pre,  dscore_vector = sum hidden g_score

On torch, ``keras.ops.custom_gradient`` takes one output tensor, so the op packs
``[context, weights]`` along the last axis and splits them afterwards.
"""

import keras
from keras import ops

from kernels._shared import as_tensor as _tensor

MASKED_SCORE = -1e9


def _masked_softmax(scores, mask):
    scores = ops.where(mask > 0, scores, ops.full_like(scores, MASKED_SCORE))
    return ops.softmax(scores, axis=-1)


def _as_mask(values, mask):
    """A float (batch, time) mask: 1 for real steps, 0 for padding."""
    if mask is None:
        return ops.ones(ops.shape(values)[:2], dtype=values.dtype)
    return ops.cast(mask, values.dtype)


def reference_additive_attention(values, kernel, bias, score_vector, mask=None):
    """Attention pooling in plain keras.ops; returns (context, weights).

    Args:
        values: (batch, time, features).
        kernel: (features, units); bias and score_vector: (units,).
        mask: optional (batch, time), true/1 for real steps.
    """
    values = _tensor(values)
    kernel = _tensor(kernel, values.dtype)
    bias = _tensor(bias, values.dtype)
    score_vector = _tensor(score_vector, values.dtype)
    mask = _as_mask(values, mask)
    hidden = ops.tanh(ops.einsum("btd,du->btu", values, kernel) + bias)
    scores = ops.einsum("btu,u->bt", hidden, score_vector)
    weights = _masked_softmax(scores, mask)
    context = ops.einsum("bt,btd->bd", weights, values)
    return context, weights


@ops.custom_gradient
def _packed_additive_attention(values, kernel, bias, score_vector, mask):
    features = values.shape[-1]
    hidden = ops.tanh(ops.einsum("btd,du->btu", values, kernel) + bias)
    scores = ops.einsum("btu,u->bt", hidden, score_vector)
    weights = _masked_softmax(scores, mask)
    context = ops.einsum("bt,btd->bd", weights, values)

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        grad_context = upstream[:, :features]
        grad_weights = upstream[:, features:] + ops.einsum(
            "bd,btd->bt", grad_context, values
        )
        grad_scores = weights * (
            grad_weights - ops.sum(weights * grad_weights, axis=-1, keepdims=True)
        )
        grad_scores = grad_scores * mask
        grad_pre_activation = ops.einsum("bt,u->btu", grad_scores, score_vector) * (
            1.0 - hidden * hidden
        )
        grad_values = ops.einsum("bt,bd->btd", weights, grad_context) + ops.einsum(
            "btu,du->btd", grad_pre_activation, kernel
        )
        grad_kernel = ops.einsum("btd,btu->du", values, grad_pre_activation)
        grad_bias = ops.sum(grad_pre_activation, axis=(0, 1))
        grad_score_vector = ops.einsum("btu,bt->u", hidden, grad_scores)
        return (
            grad_values,
            grad_kernel,
            grad_bias,
            grad_score_vector,
            ops.zeros_like(mask),
        )

    return ops.concatenate([context, weights], axis=-1), grad


def additive_attention(values, kernel, bias, score_vector, mask=None):
    """Attention pooling with the hand-written gradient; returns (context, weights).

    Same arguments as :func:`reference_additive_attention`.
    """
    values = _tensor(values)
    if len(values.shape) != 3 or values.shape[-1] is None:
        raise ValueError(
            f"values must be (batch, time, features) with known features, "
            f"got shape {values.shape}"
        )
    kernel = _tensor(kernel, values.dtype)
    bias = _tensor(bias, values.dtype)
    score_vector = _tensor(score_vector, values.dtype)
    packed = _packed_additive_attention(
        values, kernel, bias, score_vector, _as_mask(values, mask)
    )
    features = values.shape[-1]
    return packed[:, :features], packed[:, features:]


@keras.saving.register_keras_serializable(package="kernels")
class AdditiveAttentionPooling(keras.layers.Layer):
    """Pool a sequence into one vector with additive attention.

    Call it on (batch, time, features); it returns ``(context, weights)`` with shapes
    (batch, features) and (batch, time). It honours a Keras mask (e.g. from
    ``Embedding(mask_zero=True)``): padded steps get weight 0.

    Args:
        units: size of the attention hidden layer.
        kernel_initializer: initializer of ``kernel`` and ``score_vector``.
        use_reference: use the autodiff reference instead of the hand-written gradient.
    """

    def __init__(
        self, units, kernel_initializer="glorot_uniform", use_reference=False, **kwargs
    ):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"units must be a positive integer, got {units}")
        self.units = int(units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.use_reference = bool(use_reference)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"expected (batch, time, features) with known features, "
                f"got {input_shape}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.units),
            initializer=self.kernel_initializer,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer="zeros"
        )
        self.score_vector = self.add_weight(
            name="score_vector",
            shape=(self.units,),
            initializer=self.kernel_initializer,
        )

    def call(self, inputs, mask=None):
        attend = (
            reference_additive_attention if self.use_reference else additive_attention
        )
        weights = [
            ops.cast(weight, inputs.dtype)
            for weight in (self.kernel, self.bias, self.score_vector)
        ]
        return attend(inputs, *weights, mask=mask)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2]), (input_shape[0], input_shape[1])

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "use_reference": self.use_reference,
        }
