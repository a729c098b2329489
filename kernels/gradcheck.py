"""A small finite-difference gradient checker, used by the tests and shown to students.

A hand-written backward pass is easy to get subtly wrong. The classic check compares
it with central differences::

    d loss / d x[i]  ~=  (loss(x + epsilon e_i) - loss(x - epsilon e_i)) / (2 epsilon)

where ``loss = sum(output * upstream)`` for a fixed random ``upstream``: one scalar
that touches every output element, so one backward pass checks the whole Jacobian
product. Use tiny inputs: the numerical side costs two forward passes per element.

Example::

    from kernels.gradcheck import check_gradients
    from kernels.swish import swish

    check_gradients(swish, [np.random.randn(3, 4), np.array(1.5)])

Computing a gradient is the one backend-specific piece of Keras 3 code, so it lives
in one function here, :func:`backprop_gradients`, with one branch per backend.
"""

import keras
import numpy as np


class GradientCheckError(AssertionError):
    """The hand-written (backprop) gradient disagrees with finite differences."""


def float64_precision(function):
    """Run ``function`` with float64 arrays kept as float64.

    Finite differences need float64: with float32, ``epsilon = 1e-3`` leaves about
    three significant digits. torch and TensorFlow keep a float64 input as it is;
    JAX turns it into float32 unless 64-bit mode is on, so on JAX the check runs
    inside ``jax.enable_x64(True)`` (and only the check).
    """
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if keras.backend.backend() != "jax":
            return function(*args, **kwargs)
        import jax

        with jax.enable_x64(True):
            return function(*args, **kwargs)

    return wrapper


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _weighted_sum(outputs, upstreams):
    """The scalar ``sum_k sum(output_k * upstream_k)`` in keras.ops."""
    total = 0.0
    for output, upstream in zip(_as_list(outputs), upstreams):
        upstream = keras.ops.convert_to_tensor(upstream, dtype=output.dtype)
        total = total + keras.ops.sum(output * upstream)
    return total


@float64_precision
def backprop_gradients(function, inputs, upstreams):
    """Gradients of ``sum(function(*inputs) * upstreams)`` by the backend's autodiff.

    Args:
        function: takes the inputs as positional tensors, returns a tensor or a tuple.
        inputs: list of numpy arrays.
        upstreams: list of numpy arrays, one per output of ``function``.

    Returns:
        list of numpy arrays, one gradient per input (zeros where unused).
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        tensors = [torch.tensor(np.asarray(x), requires_grad=True) for x in inputs]
        loss = _weighted_sum(function(*tensors), upstreams)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    elif backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(np.asarray(x)) for x in inputs]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = _weighted_sum(function(*tensors), upstreams)
        grads = tape.gradient(loss, tensors)
    elif backend == "jax":
        import jax

        def loss_function(*tensors):
            return _weighted_sum(function(*tensors), upstreams)

        grads = jax.grad(loss_function, argnums=tuple(range(len(inputs))))(
            *[np.asarray(x) for x in inputs]
        )
    else:
        raise ValueError(f"backend {backend!r} has no automatic differentiation")
    return [
        np.zeros(np.shape(x)) if g is None else keras.ops.convert_to_numpy(g)
        for x, g in zip(inputs, grads)
    ]


@float64_precision
def numerical_gradients(function, inputs, upstreams, epsilon=1e-3):
    """Central-difference gradients of ``sum(function(*inputs) * upstreams)``."""

    def loss(values):
        outputs = function(*[keras.ops.convert_to_tensor(v) for v in values])
        return float(keras.ops.convert_to_numpy(_weighted_sum(outputs, upstreams)))

    values = [np.array(x, copy=True) for x in inputs]
    gradients = []
    for value in values:
        gradient = np.zeros(value.shape, dtype="float64")
        for index in np.ndindex(value.shape):
            original = value[index]
            value[index] = original + epsilon
            loss_plus = loss(values)
            value[index] = original - epsilon
            loss_minus = loss(values)
            value[index] = original
            gradient[index] = (loss_plus - loss_minus) / (2.0 * epsilon)
        gradients.append(gradient)
    return gradients


def compare_with_reference(function, reference, inputs, seed=0):
    """Largest differences between a hand-written op and its autodiff reference.

    Runs both on the same inputs and the same random upstream gradient.

    Returns:
        (output_errors, gradient_errors): the largest absolute difference of each
        output, and of the gradient w.r.t. each input.
    """
    inputs = [np.asarray(x) for x in inputs]
    tensors = [keras.ops.convert_to_tensor(x) for x in inputs]
    outputs = _as_list(function(*tensors))
    reference_outputs = _as_list(reference(*tensors))
    if len(outputs) != len(reference_outputs):
        raise ValueError("function and reference return different numbers of outputs")
    rng = np.random.default_rng(seed)
    upstreams = [
        rng.standard_normal(tuple(output.shape)).astype(keras.backend.floatx())
        for output in outputs
    ]
    output_errors = [
        float(np.max(np.abs(keras.ops.convert_to_numpy(a - b)), initial=0.0))
        for a, b in zip(outputs, reference_outputs)
    ]
    gradients = backprop_gradients(function, inputs, upstreams)
    reference_gradients = backprop_gradients(reference, inputs, upstreams)
    gradient_errors = [
        float(np.max(np.abs(a - b), initial=0.0))
        for a, b in zip(gradients, reference_gradients)
    ]
    return output_errors, gradient_errors


@float64_precision
def check_gradients(
    function, inputs, epsilon=1e-3, atol=1e-4, rtol=1e-3, seed=0, dtype="float64"
):
    """Compare the backprop gradient of ``function`` with finite differences.

    Args:
        function: takes the inputs as positional tensors, returns a tensor or a tuple.
        inputs: list of arrays (keep them tiny: a few dozen elements).
        epsilon: finite-difference step.
        atol, rtol: tolerance, as in ``numpy.allclose``.
        seed: seed of the random upstream gradient.
        dtype: inputs are cast to it; float64 keeps the finite differences accurate.

    Returns:
        list of the largest absolute error, one per input.

    Raises:
        GradientCheckError: naming the input and the worst element when they disagree.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    inputs = [np.asarray(x, dtype=dtype) for x in inputs]
    outputs = _as_list(function(*[keras.ops.convert_to_tensor(x) for x in inputs]))
    rng = np.random.default_rng(seed)
    upstreams = [rng.standard_normal(tuple(output.shape)) for output in outputs]

    analytic = backprop_gradients(function, inputs, upstreams)
    numeric = numerical_gradients(function, inputs, upstreams, epsilon=epsilon)
    errors = []
    for position, (a, n) in enumerate(zip(analytic, numeric)):
        error = np.abs(a - n)
        errors.append(float(error.max()) if error.size else 0.0)
        if not np.allclose(a, n, atol=atol, rtol=rtol):
            worst = np.unravel_index(np.argmax(error), error.shape)
            raise GradientCheckError(
                f"input {position}: backprop and finite differences disagree; worst "
                f"element {tuple(int(i) for i in worst)}: backprop {a[worst]:.6g}, "
                f"finite difference {n[worst]:.6g} (atol={atol}, rtol={rtol})"
            )
    return errors
