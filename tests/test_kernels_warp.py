"""The batched affine warp: same output and conventions as Keras, seeded, inert at
inference."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels.warp import (  # noqa: E402
    FILL_MODES,
    RandomAffineWarp,
    affine_transforms,
    reference_warp,
    warp,
)


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _smooth_images(batch=2, height=16, width=20):
    """Low-frequency images, so that resampling differences stay small."""
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack(
        [np.sin(columns / 3.0) + np.cos(rows / 4.0), columns / width, rows / height],
        axis=-1,
    )
    images = [image if i % 2 == 0 else image[::-1] for i in range(batch)]
    return np.stack(images).astype("float32")


def _random_transforms(batch, height, width, seed):
    rng = np.random.default_rng(seed)

    def uniform(low, high):
        return rng.uniform(low, high, batch).astype("float32")

    return _numpy(
        affine_transforms(
            height,
            width,
            angle=uniform(-1.0, 1.0),
            zoom_height=uniform(0.7, 1.3),
            zoom_width=uniform(0.7, 1.3),
            shift_height=uniform(-4, 4),
            shift_width=uniform(-4, 4),
            flip_horizontal=(rng.random(batch) < 0.5).astype("float32"),
            flip_vertical=(rng.random(batch) < 0.5).astype("float32"),
        )
    )


@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_warp_matches_keras_affine_transform(fill_mode, interpolation):
    rng = np.random.default_rng(0)
    images = rng.random((6, 9, 12, 3)).astype("float32")
    transforms = _random_transforms(6, 9, 12, seed=1)
    expected = _numpy(
        reference_warp(images, transforms, interpolation, fill_mode, fill_value=0.3)
    )
    actual = _numpy(warp(images, transforms, interpolation, fill_mode, fill_value=0.3))
    if interpolation == "bilinear":
        np.testing.assert_allclose(actual, expected, atol=1e-4)
    else:  # rounding ties may pick the other neighbour
        assert np.mean(np.abs(actual - expected) > 1e-4) < 0.01


def test_warp_handles_one_image_and_channels_first():
    images = np.random.default_rng(0).random((3, 8, 10, 2)).astype("float32")
    transforms = _random_transforms(3, 8, 10, seed=2)
    batched = _numpy(warp(images, transforms, fill_mode="reflect"))
    single = _numpy(warp(images[1], transforms[1], fill_mode="reflect"))
    np.testing.assert_allclose(single, batched[1], atol=1e-6)
    first = warp(
        np.transpose(images, (0, 3, 1, 2)),
        transforms,
        fill_mode="reflect",
        data_format="channels_first",
    )
    np.testing.assert_allclose(
        np.transpose(_numpy(first), (0, 2, 3, 1)), batched, atol=1e-6
    )


def test_integer_shift_and_flip_are_exact():
    images = np.random.default_rng(0).random((2, 5, 6, 1)).astype("float32")
    shift = _numpy(affine_transforms(5, 6, shift_height=2.0, shift_width=-1.0))
    shifted = _numpy(warp(images, shift, fill_mode="constant", fill_value=-1.0))
    expected = np.full_like(images, -1.0)
    expected[:, 2:, :5] = images[:, :3, 1:]  # content moves 2 down and 1 left
    np.testing.assert_allclose(shifted, expected, atol=1e-6)
    flip = _numpy(affine_transforms(5, 6, flip_horizontal=1.0))
    np.testing.assert_allclose(
        _numpy(warp(images, flip)), images[:, :, ::-1], atol=1e-6
    )


@pytest.mark.parametrize(
    "ours, keras_layer",
    [
        (
            {"rotation_factor": (0.07, 0.07), "fill_mode": "constant"},
            lambda: keras.layers.RandomRotation((0.07, 0.07), fill_mode="constant"),
        ),
        (
            {"zoom_height_factor": (0.3, 0.3), "zoom_width_factor": (-0.2, -0.2)},
            lambda: keras.layers.RandomZoom((0.3, 0.3), (-0.2, -0.2)),
        ),
        (
            {
                "translation_height_factor": (0.2, 0.2),
                "translation_width_factor": (-0.1, -0.1),
                "fill_mode": "wrap",
            },
            lambda: keras.layers.RandomTranslation(
                (0.2, 0.2), (-0.1, -0.1), fill_mode="wrap"
            ),
        ),
    ],
    ids=["rotation", "zoom", "translation"],
)
def test_parameters_mean_what_they_mean_in_keras_layers(ours, keras_layer):
    # A (v, v) factor pins the random draw to v, in both layers.
    images = _smooth_images()
    expected = _numpy(keras_layer()(images, training=True))
    actual = _numpy(RandomAffineWarp(**ours)(images, training=True))
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_one_warp_approximates_the_chained_keras_layers():
    images = _smooth_images()
    chain = keras.Sequential(
        [
            keras.layers.RandomTranslation((0.1, 0.1), (0.05, 0.05)),
            keras.layers.RandomRotation((0.03, 0.03)),
            keras.layers.RandomZoom((-0.2, -0.2)),
        ]
    )
    layer = RandomAffineWarp(
        rotation_factor=(0.03, 0.03),
        zoom_height_factor=(-0.2, -0.2),
        translation_height_factor=(0.1, 0.1),
        translation_width_factor=(0.05, 0.05),
    )
    difference = np.abs(_numpy(layer(images)) - _numpy(chain(images, training=True)))
    # Three resamplings blur a little more than one: compare away from the border.
    assert difference[:, 3:-3, 3:-3].max() < 0.05


def test_horizontal_flip_mirrors_about_half_the_images():
    images = np.random.default_rng(0).random((64, 4, 5, 1)).astype("float32")
    output = _numpy(RandomAffineWarp(flip_mode="horizontal", seed=3)(images))
    same = np.all(np.isclose(output, images, atol=1e-6), axis=(1, 2, 3))
    mirrored = np.all(np.isclose(output, images[:, :, ::-1], atol=1e-6), axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 16 <= mirrored.sum() <= 48


def test_the_same_seed_gives_the_same_warps_and_calls_differ():
    images = np.random.default_rng(0).random((8, 12, 12, 3)).astype("float32")
    options = {"rotation_factor": 0.2, "zoom_height_factor": 0.2, "seed": 42}
    first_layer, second_layer = RandomAffineWarp(**options), RandomAffineWarp(**options)
    first_call = _numpy(first_layer(images))
    np.testing.assert_array_equal(first_call, _numpy(second_layer(images)))
    np.testing.assert_array_equal(
        _numpy(first_layer(images)), _numpy(second_layer(images))
    )
    assert not np.allclose(first_call, _numpy(first_layer(images)))
    other_seed = RandomAffineWarp(**{**options, "seed": 7})
    assert not np.allclose(first_call, _numpy(other_seed(images)))
    assert not np.allclose(
        _numpy(first_layer(images)[0]), _numpy(first_layer(images)[1])
    )


def test_inference_returns_the_input_unchanged():
    images = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    layer = RandomAffineWarp(rotation_factor=0.3, flip_mode="horizontal", seed=0)
    np.testing.assert_array_equal(_numpy(layer(images, training=False)), images)
    model = keras.Sequential([keras.Input((8, 8, 3)), layer])
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)
    assert not np.allclose(_numpy(layer(images, training=True)), images)


def test_integer_images_come_out_as_floats():
    images = np.random.default_rng(0).integers(0, 255, (2, 6, 6, 3)).astype("uint8")
    output = RandomAffineWarp(rotation_factor=0.1, seed=1)(images)
    assert keras.backend.standardize_dtype(output.dtype) == "float32"
    assert tuple(output.shape) == (2, 6, 6, 3)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="fill_mode"):
        RandomAffineWarp(fill_mode="mirror")
    with pytest.raises(ValueError, match="interpolation"):
        RandomAffineWarp(interpolation="bicubic")
    with pytest.raises(ValueError, match="rotation_factor"):
        RandomAffineWarp(rotation_factor=1.5)
    with pytest.raises(ValueError, match="zoom_height_factor"):
        RandomAffineWarp(zoom_height_factor=(-1.0, 0.2))
    with pytest.raises(ValueError, match="flip_mode"):
        RandomAffineWarp(flip_mode="diagonal")


def _model():
    inputs = keras.Input((8, 8, 3))
    augmented = RandomAffineWarp(
        rotation_factor=0.1,
        zoom_height_factor=0.1,
        translation_height_factor=0.1,
        translation_width_factor=0.1,
        flip_mode="horizontal",
        seed=0,
        name="warp",
    )(inputs)
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(augmented)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(hidden))
    return keras.Model(inputs, outputs, name="warp_model")


def test_fit_trains_through_the_warp_and_the_model_reloads(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 2, 32)
    model = _model()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    path = tmp_path / "warp.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    layer = reloaded.get_layer("warp")
    assert isinstance(layer, RandomAffineWarp)
    assert layer.get_config()["flip_mode"] == "horizontal"
    np.testing.assert_allclose(
        reloaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), atol=1e-6
    )
