"""Learnable Swish: forward, hand-written gradient, stability, training, saving."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels.gradcheck import (  # noqa: E402
    backprop_gradients,
    check_gradients,
    compare_with_reference,
)
from kernels.swish import LearnableSwish, reference_swish, swish  # noqa: E402

SHAPES = [(7,), (4, 5), (2, 3, 6)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_swish_matches_reference_forward_and_gradient(shape, seed, per_channel):
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal(shape)).astype("float32")
    beta_shape = (shape[-1],) if per_channel else ()
    beta = rng.uniform(0.2, 3.0, size=beta_shape).astype("float32")
    output_errors, gradient_errors = compare_with_reference(
        swish, reference_swish, [x, beta], seed=seed
    )
    assert max(output_errors) <= 1e-6
    assert max(gradient_errors) <= 1e-5, gradient_errors


def test_swish_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    check_gradients(swish, [rng.standard_normal((2, 3)), np.array(1.7)])
    check_gradients(swish, [rng.standard_normal((2, 3)), np.array([0.5, 1.0, 2.0])])


def test_swish_with_beta_one_is_silu():
    x = np.linspace(-5, 5, 11).astype("float32")
    expected = keras.ops.convert_to_numpy(keras.activations.silu(x))
    actual = keras.ops.convert_to_numpy(swish(x, 1.0))
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_swish_is_stable_for_huge_inputs():
    x = np.array([-1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30], dtype="float32")
    output = keras.ops.convert_to_numpy(swish(x, 2.0))
    assert np.all(np.isfinite(output))
    np.testing.assert_allclose(output[[0, 1, 2]], 0.0, atol=1e-30)
    np.testing.assert_allclose(output[[4, 5, 6]], x[[4, 5, 6]])
    grad_x, grad_beta = backprop_gradients(
        swish, [x, np.float32(2.0)], [np.ones_like(x)]
    )
    assert np.all(np.isfinite(grad_x)) and np.isfinite(grad_beta)


def test_swish_rejects_a_beta_of_the_wrong_shape():
    with pytest.raises(ValueError, match="beta"):
        swish(np.ones((2, 3), "float32"), np.ones(4, "float32"))


def _model(per_channel=False):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8)(inputs)
    hidden = LearnableSwish(
        beta_initializer=0.5, per_channel=per_channel, name="swish"
    )(hidden)
    outputs = keras.layers.Dense(1)(hidden)
    return keras.Model(inputs, outputs, name="swish_model")


@pytest.mark.parametrize("per_channel", [False, True])
def test_two_epoch_fit_changes_beta(per_channel):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True))
    model = _model(per_channel)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    beta_before = keras.ops.convert_to_numpy(model.get_layer("swish").beta).copy()
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    beta_after = keras.ops.convert_to_numpy(model.get_layer("swish").beta)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.abs(beta_after - beta_before) > 1e-4)


def test_save_and_reload_with_safe_mode(tmp_path):
    model = _model(per_channel=True)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype("float32")
    path = tmp_path / "swish.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.get_layer("swish"), LearnableSwish)
    assert reloaded.get_layer("swish").get_config()["per_channel"] is True
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


def test_reference_layer_gives_the_same_output():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    fast = LearnableSwish(beta_initializer=1.3)
    reference = LearnableSwish(beta_initializer=1.3, use_reference=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fast(x)),
        keras.ops.convert_to_numpy(reference(x)),
        atol=1e-6,
    )
