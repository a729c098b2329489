"""The finite-difference gradient checker passes right gradients, catches wrong ones."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from kernels.gradcheck import (  # noqa: E402
    GradientCheckError,
    backprop_gradients,
    check_gradients,
    compare_with_reference,
    numerical_gradients,
)


@ops.custom_gradient
def _cube_with_wrong_gradient(x):
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return upstream * 2.0 * x * x  # should be 3 x**2

    return x * x * x, grad


def _cube(x):
    return x * x * x


def test_numerical_gradient_of_a_cube_is_three_x_squared():
    x = np.array([[-1.5, 0.5], [2.0, 3.0]])
    (gradient,) = numerical_gradients(_cube, [x], [np.ones_like(x)], epsilon=1e-4)
    np.testing.assert_allclose(gradient, 3.0 * x**2, rtol=1e-6)


def test_backprop_gradient_weights_the_output_by_upstream():
    x = np.array([1.0, -2.0, 0.5])
    upstream = np.array([2.0, 1.0, -1.0])
    (gradient,) = backprop_gradients(_cube, [x], [upstream])
    np.testing.assert_allclose(gradient, upstream * 3.0 * x**2, rtol=1e-6)


def test_check_gradients_passes_a_correct_op_with_two_outputs():
    def two_outputs(x, y):
        return ops.sin(x) * y, ops.exp(x)

    rng = np.random.default_rng(0)
    errors = check_gradients(two_outputs, [rng.normal(size=(2, 3)), rng.normal()])
    # central differences with epsilon 1e-3 in float64: 1e-7 on torch and TF, 1e-5
    # on JAX (its sin differs in the last bits); a wrong gradient is off by O(1)
    assert len(errors) == 2 and max(errors) < 5e-5


def test_check_gradients_catches_a_wrong_hand_written_gradient():
    with pytest.raises(GradientCheckError, match="input 0"):
        check_gradients(_cube_with_wrong_gradient, [np.array([0.5, -1.0, 2.0])])


def test_compare_with_reference_reports_the_gradient_difference():
    x = np.array([1.0, 2.0], dtype="float32")
    output_errors, gradient_errors = compare_with_reference(
        _cube_with_wrong_gradient, _cube, [x]
    )
    assert output_errors == [0.0]
    assert gradient_errors[0] > 0.5


def test_check_gradients_rejects_a_non_positive_epsilon():
    with pytest.raises(ValueError, match="epsilon"):
        check_gradients(_cube, [np.ones(2)], epsilon=0.0)


def test_backprop_gradients_differentiates_on_the_active_backend():
    x = np.array([[1.0, -2.0], [0.5, 3.0]], "float32")
    y = np.array([2.0, -1.0], "float32")
    upstream = np.array([[1.0, 2.0], [3.0, -1.0]], "float32")
    grad_x, grad_y = backprop_gradients(lambda a, b: a * a * b, [x, y], [upstream])
    np.testing.assert_allclose(grad_x, 2 * x * y * upstream, atol=1e-6)
    np.testing.assert_allclose(grad_y, (x * x * upstream).sum(axis=0), atol=1e-6)
