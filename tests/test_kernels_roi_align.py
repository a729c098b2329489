"""ROI-Align: forward against a plain loop, hand-written gradient against autodiff
and finite differences, edge cases, a fit, saving."""

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
from kernels.roi_align import ROIAlign, reference_roi_align, roi_align  # noqa: E402


def loop_roi_align(features, boxes, pool_size, sampling_ratio, spatial_scale):
    """torchvision's roi_align(aligned=True) CPU loop, transliterated to numpy."""
    batch, height, width, channels = features.shape
    output = np.zeros((batch, boxes.shape[1], pool_size, pool_size, channels))
    for b in range(batch):
        for r, (x1, y1, x2, y2) in enumerate(boxes[b]):
            start_x, start_y = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
            bin_w = (x2 - x1) * spatial_scale / pool_size
            bin_h = (y2 - y1) * spatial_scale / pool_size
            for p in range(pool_size):
                for q in range(pool_size):
                    total = np.zeros(channels)
                    for iy in range(sampling_ratio):
                        y = start_y + (p + (iy + 0.5) / sampling_ratio) * bin_h
                        for ix in range(sampling_ratio):
                            x = start_x + (q + (ix + 0.5) / sampling_ratio) * bin_w
                            total += bilinear(features[b], y, x)
                    output[b, r, p, q] = total / sampling_ratio**2
    return output


def bilinear(image, y, x):
    height, width = image.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(image.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    return (
        (1 - ly) * (1 - lx) * image[y_low, x_low]
        + (1 - ly) * lx * image[y_low, x_high]
        + ly * (1 - lx) * image[y_high, x_low]
        + ly * lx * image[y_high, x_high]
    )


def _inputs(seed, batch=2, height=6, width=7, channels=3, rois=4, stride=8):
    """Features and boxes in input pixels, some reaching past the map's edges."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((batch, height, width, channels))
    corner = rng.uniform(-2 * stride, stride * max(height, width), (batch, rois, 2))
    size = rng.uniform(0.3 * stride, 4 * stride, (batch, rois, 2))
    boxes = np.concatenate([corner, corner + size], axis=-1)
    return features.astype("float32"), boxes.astype("float32")


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


@pytest.mark.parametrize("function", [roi_align, reference_roi_align])
@pytest.mark.parametrize(
    "pool_size, sampling_ratio, scale", [(7, 2, 1 / 8), (3, 1, 1.0), (2, 3, 0.25)]
)
def test_forward_matches_the_torchvision_loop(
    function, pool_size, sampling_ratio, scale
):
    features, boxes = _inputs(0, stride=1 / scale)
    expected = loop_roi_align(features, boxes, pool_size, sampling_ratio, scale)
    actual = _numpy(function(features, boxes, pool_size, sampling_ratio, scale))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=2e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hand_written_gradient_matches_autodiff(seed):
    features, boxes = _inputs(seed)

    def hand_written(features, boxes):
        return roi_align(features, boxes, 3, 2, 1 / 8)

    def reference(features, boxes):
        return reference_roi_align(features, boxes, 3, 2, 1 / 8)

    output_errors, gradient_errors = compare_with_reference(
        hand_written, reference, [features, boxes], seed=seed
    )
    assert max(output_errors) <= 1e-5
    assert max(gradient_errors) <= 1e-5, gradient_errors


def test_gradient_matches_finite_differences():
    features, boxes = _inputs(3, batch=1, height=4, width=5, channels=2, rois=2)

    def op(features, boxes):
        return roi_align(features, boxes, 2, 2, 1 / 8)

    # epsilon 1e-2: JAX computes in float32 (no x64), where a smaller step drowns
    # in rounding; the op is piecewise linear in the box, so the step is harmless
    check_gradients(op, [features, boxes], epsilon=1e-2)


def test_gradient_reaches_the_boxes():
    """A box moved towards brighter features gets a gradient pointing there."""
    features = np.tile(np.arange(8, dtype="float32")[None, None, :, None], (1, 8, 1, 1))
    boxes = np.array([[[8.0, 8.0, 24.0, 24.0]]], "float32")  # 1/8: cells 1 to 3
    upstream = [np.ones((1, 1, 2, 2, 1), "float32")]
    grad_features, grad_boxes = backprop_gradients(
        lambda f, b: roi_align(f, b, 2, 2, 1 / 8), [features, boxes], upstream
    )
    # the output grows with x: moving either x edge right raises it; y does nothing
    assert grad_boxes[0, 0, 0] > 0 and grad_boxes[0, 0, 2] > 0
    np.testing.assert_allclose(grad_boxes[0, 0, [1, 3]], 0.0, atol=1e-6)
    assert grad_features.sum() == pytest.approx(4.0, rel=1e-5)  # weights sum to 1


def test_edge_cases_are_finite():
    features, _ = _inputs(4, batch=1)
    boxes = np.array(
        [
            [
                [1e3, 1e3, 2e3, 2e3],  # far outside: reads zeros
                [10.0, 10.0, 10.0, 10.0],  # a point
                [-1e4, -1e4, 1e4, 1e4],  # huge
                [30.0, 20.0, 10.0, 5.0],  # reversed corners
            ]
        ],
        "float32",
    )
    output = _numpy(roi_align(features, boxes))
    assert np.all(np.isfinite(output))
    np.testing.assert_array_equal(output[0, 0], 0.0)
    expected = loop_roi_align(features, boxes, 7, 2, 1.0)
    np.testing.assert_allclose(output, expected, atol=2e-5)
    upstream = [np.ones(output.shape, "float32")]
    gradients = backprop_gradients(roi_align, [features, boxes], upstream)
    assert all(np.all(np.isfinite(gradient)) for gradient in gradients)


def test_bad_shapes_and_settings_are_refused():
    features, boxes = _inputs(0)
    with pytest.raises(ValueError, match="boxes"):
        roi_align(features, boxes[..., :3])
    with pytest.raises(ValueError, match="pool_size"):
        roi_align(features, boxes, pool_size=0)


def _model(use_reference=False):
    image = keras.Input((16, 16, 3), name="image")
    boxes = keras.Input((3, 4), name="boxes")
    features = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv")(image)
    crops = ROIAlign(
        pool_size=3, spatial_scale=0.5, use_reference=use_reference, name="roi_align"
    )(features, boxes)
    outputs = keras.layers.Dense(1, name="score")(keras.layers.Flatten()(crops))
    return keras.Model([image, boxes], outputs, name="roi_model")


def _data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(count, 16, 16, 3)).astype("float32")
    corner = rng.uniform(0, 8, (count, 3, 2))
    boxes = np.concatenate([corner, corner + 6], axis=-1).astype("float32")
    target = images.mean(axis=(1, 2, 3)).reshape(-1, 1)
    return images, boxes, np.repeat(target[:, None], 3, axis=1)


def test_two_epoch_fit_changes_the_weights_below_the_op():
    images, boxes, target = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    before = _numpy(model.get_layer("conv").kernel).copy()
    history = model.fit([images, boxes], target, epochs=2, batch_size=8, verbose=0)
    after = _numpy(model.get_layer("conv").kernel)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(after - before).max() > 1e-4


def test_save_and_reload_with_safe_mode(tmp_path):
    images, boxes, _ = _data(4)
    model = _model()
    path = tmp_path / "roi.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    layer = reloaded.get_layer("roi_align")
    assert isinstance(layer, ROIAlign)
    assert layer.get_config()["spatial_scale"] == 0.5
    np.testing.assert_allclose(
        reloaded.predict([images, boxes], verbose=0),
        model.predict([images, boxes], verbose=0),
        atol=1e-6,
    )


def test_reference_layer_gives_the_same_output():
    images, boxes, _ = _data(4)
    model, reference = _model(), _model(use_reference=True)
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(
        reference.predict([images, boxes], verbose=0),
        model.predict([images, boxes], verbose=0),
        atol=1e-5,
    )
