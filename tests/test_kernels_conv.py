"""Weight-standardized Conv2D and the Sobel filter: forward, gradients, fit, saving."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels.conv import (  # noqa: E402
    SobelEdges,
    WSConv2D,
    reference_sobel,
    reference_weight_standardize,
    sobel,
    weight_standardize,
)
from kernels.gradcheck import (  # noqa: E402
    backprop_gradients,
    check_gradients,
    compare_with_reference,
)

KERNEL_SHAPES = [(3, 3, 1, 4), (1, 1, 8, 2), (5, 3, 3, 6)]
IMAGE_SHAPES = [(1, 5, 5, 1), (2, 6, 9, 3), (3, 8, 4, 2)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", KERNEL_SHAPES)
def test_weight_standardize_matches_reference(shape, seed):
    kernel = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    output_errors, gradient_errors = compare_with_reference(
        weight_standardize, reference_weight_standardize, [kernel], seed=seed
    )
    assert max(output_errors) <= 1e-5
    assert max(gradient_errors) <= 1e-5, gradient_errors


def test_weight_standardize_gives_zero_mean_unit_variance_filters():
    kernel = 5.0 + 3.0 * np.random.default_rng(0).standard_normal((3, 3, 4, 6))
    standardized = keras.ops.convert_to_numpy(weight_standardize(kernel, 1e-8))
    np.testing.assert_allclose(standardized.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(standardized.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_weight_standardize_gradient_matches_finite_differences():
    kernel = np.random.default_rng(2).standard_normal((2, 2, 2, 3))
    check_gradients(weight_standardize, [kernel], epsilon=1e-5)


def test_weight_standardize_is_stable_for_constant_and_huge_kernels():
    for kernel in (np.full((3, 3, 2, 2), 7.0), 1e15 * np.eye(4).reshape(2, 2, 2, 2)):
        kernel = kernel.astype("float32")
        output = keras.ops.convert_to_numpy(weight_standardize(kernel))
        (gradient,) = backprop_gradients(
            weight_standardize, [kernel], [np.ones_like(kernel)]
        )
        assert np.all(np.isfinite(output)) and np.all(np.isfinite(gradient))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_sobel_matches_reference(shape, seed):
    images = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    output_errors, gradient_errors = compare_with_reference(
        sobel, reference_sobel, [images], seed=seed
    )
    assert max(output_errors) <= 1e-5
    assert max(gradient_errors) <= 1e-5, gradient_errors


def test_sobel_gradient_matches_finite_differences():
    images = np.random.default_rng(3).standard_normal((1, 4, 4, 1))
    check_gradients(sobel, [images])


def test_sobel_finds_a_vertical_edge_with_known_values():
    images = np.zeros((1, 5, 6, 1), "float32")
    images[:, :, 3:] = 1.0
    derivatives = keras.ops.convert_to_numpy(sobel(images))[0]
    gx, gy = derivatives[..., 0], derivatives[..., 1]
    np.testing.assert_allclose(gx[1:-1, 2], 4.0)  # the column left of the edge
    np.testing.assert_allclose(gx[1:-1, 3], 4.0)
    np.testing.assert_allclose(gx[1:-1, [0, 1, 4]], 0.0)
    np.testing.assert_allclose(gy[1:-1, :5], 0.0)


def test_sobel_is_stable_for_huge_inputs():
    images = np.random.default_rng(0).uniform(-1e15, 1e15, (1, 6, 6, 1))
    layer = SobelEdges()
    output = keras.ops.convert_to_numpy(layer(images.astype("float32")))
    assert np.all(np.isfinite(output))
    (gradient,) = backprop_gradients(
        layer, [images.astype("float32")], [np.ones((1, 6, 6, 1), "float32")]
    )
    assert np.all(np.isfinite(gradient))


def test_sobel_layer_has_no_trainable_weights_and_both_output_modes():
    images = np.random.default_rng(0).random((2, 6, 7, 3)).astype("float32")
    magnitude = SobelEdges()(images)
    derivatives = SobelEdges(output_mode="xy")(images)
    assert tuple(magnitude.shape) == (2, 6, 7, 3)
    assert tuple(derivatives.shape) == (2, 6, 7, 6)
    pairs = keras.ops.convert_to_numpy(derivatives).reshape(2, 6, 7, 3, 2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(magnitude),
        np.sqrt((pairs**2).sum(axis=-1)),
        atol=1e-5,
    )
    assert SobelEdges().trainable_weights == []
    with pytest.raises(ValueError, match="output_mode"):
        SobelEdges(output_mode="angle")


def _model():
    inputs = keras.Input((8, 8, 1))
    hidden = WSConv2D(4, 3, padding="same", name="ws_conv")(inputs)
    hidden = SobelEdges(name="sobel")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(1)(hidden)
    return keras.Model(inputs, outputs, name="ws_sobel_model")


def test_two_epoch_fit_changes_the_standardized_kernel_through_sobel():
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    y = x.std(axis=(1, 2, 3))[:, None]
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    kernel_before = keras.ops.convert_to_numpy(model.get_layer("ws_conv").kernel).copy()
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    kernel_after = keras.ops.convert_to_numpy(model.get_layer("ws_conv").kernel)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(kernel_after - kernel_before).max() > 1e-3
    assert model.get_layer("sobel").weights == []


def test_ws_conv_equals_conv2d_with_a_standardized_kernel():
    layer = WSConv2D(3, 3, padding="same", use_bias=False)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 2)).astype("float32")
    output = keras.ops.convert_to_numpy(layer(x))
    standardized = reference_weight_standardize(layer.kernel, 1e-5)
    expected = keras.ops.conv(x, standardized, padding="same")
    np.testing.assert_allclose(output, keras.ops.convert_to_numpy(expected), atol=1e-5)


def test_save_and_reload_with_safe_mode(tmp_path):
    model = _model()
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    path = tmp_path / "ws_sobel.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.get_layer("ws_conv"), WSConv2D)
    assert reloaded.get_layer("ws_conv").epsilon == 1e-5
    assert isinstance(reloaded.get_layer("sobel"), SobelEdges)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
