"""LP pooling: forward, hand-written gradient, stability, training, saving."""

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
from kernels.lp_pooling import (  # noqa: E402
    LPPooling2D,
    lp_pooling,
    reference_lp_pooling,
)

CASES = [
    ((2, 4, 4, 3), 2),
    ((1, 7, 5, 2), 2),
    ((3, 6, 9, 1), (3, 2)),
    ((2, 8, 8, 4), 4),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape, pool_size", CASES)
def test_lp_pooling_matches_reference_forward_and_gradient(shape, pool_size, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype("float32")
    power = np.float32(rng.uniform(1.2, 6.0))

    def pool(x, power):
        return lp_pooling(x, power, pool_size)

    def reference(x, power):
        return reference_lp_pooling(x, power, pool_size)

    output_errors, gradient_errors = compare_with_reference(
        pool, reference, [x, power], seed=seed
    )
    assert max(output_errors) <= 1e-5
    assert max(gradient_errors) <= 1e-5, gradient_errors


def test_lp_pooling_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 4, 5, 2))
    check_gradients(lp_pooling, [x, np.array(2.5)], epsilon=1e-5)


def test_power_one_is_average_of_magnitudes_and_large_power_nears_max():
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype("float32")
    windows = np.abs(x).reshape(2, 2, 2, 2, 2, 3)
    average = keras.ops.convert_to_numpy(lp_pooling(x, 1.0))
    np.testing.assert_allclose(average, windows.mean(axis=(2, 4)), atol=1e-5)
    near_max = keras.ops.convert_to_numpy(lp_pooling(x, 200.0))
    np.testing.assert_allclose(near_max, windows.max(axis=(2, 4)), rtol=1e-2)


def test_lp_pooling_is_stable_for_huge_inputs_and_large_powers():
    x = np.full((1, 4, 4, 1), 1e30, dtype="float32")
    x[0, 0, 0, 0] = -3e30
    x[0, 2:, 2:, 0] = 0.0
    output = keras.ops.convert_to_numpy(lp_pooling(x, 20.0))
    assert np.all(np.isfinite(output))
    grad_x, grad_power = backprop_gradients(
        lp_pooling, [x, np.float32(20.0)], [np.ones((1, 2, 2, 1), "float32")]
    )
    assert np.all(np.isfinite(grad_x)) and np.isfinite(grad_power)


def test_lp_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pool_size"):
        lp_pooling(np.ones((1, 4, 4, 1), "float32"), 2.0, pool_size=0)
    with pytest.raises(ValueError, match="larger than the input"):
        lp_pooling(np.ones((1, 2, 2, 1), "float32"), 2.0, pool_size=3)
    with pytest.raises(ValueError, match="initial_power"):
        LPPooling2D(initial_power=0.5)


def _model():
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    hidden = LPPooling2D(2, initial_power=3.0, name="lp_pool")(hidden)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(hidden))
    return keras.Model(inputs, outputs, name="lp_pool_model")


def test_layer_starts_at_initial_power_and_has_the_pooled_shape():
    layer = LPPooling2D((2, 4), initial_power=2.5)
    output = layer(np.ones((2, 6, 9, 3), "float32"))
    assert tuple(output.shape) == (2, 3, 2, 3)
    assert layer.compute_output_shape((None, 6, 9, 3)) == (None, 3, 2, 3)
    assert abs(float(keras.ops.convert_to_numpy(layer.power)) - 2.5) < 1e-5


def test_two_epoch_fit_changes_the_power():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 1)).astype("float32")
    y = np.abs(x).max(axis=(1, 2, 3))[:, None]
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    rho_before = float(keras.ops.convert_to_numpy(model.get_layer("lp_pool").rho))
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    rho_after = float(keras.ops.convert_to_numpy(model.get_layer("lp_pool").rho))
    assert np.all(np.isfinite(history.history["loss"]))
    assert abs(rho_after - rho_before) > 1e-4


def test_save_and_reload_with_safe_mode(tmp_path):
    model = _model()
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype("float32")
    path = tmp_path / "lp_pool.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    layer = reloaded.get_layer("lp_pool")
    assert isinstance(layer, LPPooling2D) and layer.pool_size == (2, 2)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


def test_channels_first_matches_channels_last():
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 3)).astype("float32")
    last = LPPooling2D(2, data_format="channels_last")(x)
    first = LPPooling2D(2, data_format="channels_first")(np.transpose(x, (0, 3, 1, 2)))
    np.testing.assert_allclose(
        np.transpose(keras.ops.convert_to_numpy(first), (0, 2, 3, 1)),
        keras.ops.convert_to_numpy(last),
        atol=1e-6,
    )
