"""common/transfer.py: weights resolution, the model, unfreezing, weights files."""

import keras
import numpy as np
import pytest

import common  # noqa: F401  (backend defaults)
from common import transfer
from common.cli import WorkbookError
from common.runs import seed_everything


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached ImageNet file and no network."""
    monkeypatch.setattr(
        transfer,
        "imagenet_cache_paths",
        lambda: [tmp_path / "keras-home" / "models" / transfer.IMAGENET_FILE],
    )
    monkeypatch.setattr(transfer, "_imagenet_reachable", lambda timeout=3.0: False)


@pytest.fixture(scope="module")
def digits_model():
    seed_everything(0)
    model, base, notice = transfer.build_transfer_model((8, 8, 1), 10, weights="none")
    return model, base, notice


def weights_of(layer):
    return {
        variable.path: keras.ops.convert_to_numpy(variable).copy()
        for variable in layer.weights
    }


# ------------------------------------------------------------ resolve_weights
def test_none_is_random_with_an_honest_notice():
    keras_weights, path, notice = transfer.resolve_weights("none")
    assert keras_weights is None and path is None
    assert "RANDOM" in notice and "poor" in notice


def test_auto_offline_falls_back_to_random_with_a_notice(offline):
    keras_weights, path, notice = transfer.resolve_weights("auto")
    assert (keras_weights, path) == (None, None)
    assert notice.startswith("notice:") and "RANDOM" in notice
    assert transfer.IMAGENET_FILE in notice


def test_imagenet_offline_is_an_error_with_remedies(offline):
    with pytest.raises(WorkbookError) as error:
        transfer.resolve_weights("imagenet")
    message = str(error.value)
    assert "--weights none" in message and "--weights PATH" in message


def test_a_corrupt_cached_file_does_not_count(offline, tmp_path):
    cached = transfer.imagenet_cache_paths()[0]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a partial download")
    assert transfer.cached_imagenet_file() is None
    with pytest.raises(WorkbookError):
        transfer.resolve_weights("imagenet")


def test_imagenet_when_cached_or_reachable(monkeypatch, tmp_path):
    keras_cache = transfer.imagenet_cache_paths()[0]
    monkeypatch.setattr(transfer, "cached_imagenet_file", lambda: keras_cache)
    assert transfer.resolve_weights("imagenet")[:2] == ("imagenet", None)
    # found where Keras itself would not look: loaded as a local file
    elsewhere = tmp_path / transfer.IMAGENET_FILE
    monkeypatch.setattr(transfer, "cached_imagenet_file", lambda: elsewhere)
    assert transfer.resolve_weights("auto")[:2] == (None, str(elsewhere))
    monkeypatch.setattr(transfer, "cached_imagenet_file", lambda: None)
    monkeypatch.setattr(transfer, "_imagenet_reachable", lambda timeout=3.0: True)
    keras_weights, _, notice = transfer.resolve_weights("auto")
    assert keras_weights == "imagenet" and "download" in notice


def test_paths_missing_not_hdf5_and_valid(tmp_path):
    with pytest.raises(WorkbookError, match="no such file"):
        transfer.resolve_weights(str(tmp_path / "missing.weights.h5"))
    text_file = tmp_path / "notes.weights.h5"
    text_file.write_text("not weights")
    with pytest.raises(WorkbookError, match="not a readable HDF5"):
        transfer.resolve_weights(str(text_file))
    import h5py

    good = tmp_path / "base.weights.h5"
    with h5py.File(good, "w"):
        pass
    assert transfer.resolve_weights(str(good))[:2] == (None, str(good))


# ---------------------------------------------------------------- the model
def test_model_structure_and_preprocessing(digits_model):
    model, base, _ = digits_model
    names = [layer.name for layer in model.layers]
    assert names[:6] == [
        "images",
        "resize_to_min_size",
        "grayscale_to_rgb",
        "to_0_255",
        "resnet_v2_preprocess",
        "resnet50v2",
    ]
    assert names[-3:] == ["pooling", "head_dropout", "predictions"]
    assert tuple(base.input.shape[1:]) == (32, 32, 3)
    assert model.output.shape[-1] == 10
    assert not base.trainable
    assert [v.path for v in model.trainable_weights] == [
        "predictions/kernel",
        "predictions/bias",
    ]
    prefix = keras.Model(model.input, model.get_layer("resnet_v2_preprocess").output)
    images = np.stack([np.zeros((8, 8, 1)), np.ones((8, 8, 1))]).astype("float32")
    scaled = keras.ops.convert_to_numpy(prefix(images))
    np.testing.assert_allclose(scaled[0], -1.0, atol=1e-6)
    np.testing.assert_allclose(scaled[1], 1.0, atol=1e-6)
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_rgb_input_at_min_size_has_no_resize_or_channel_layers():
    model, base, _ = transfer.build_transfer_model(
        (32, 40, 3), 4, weights="none", name="rgb"
    )
    names = [layer.name for layer in model.layers]
    assert "resize_to_min_size" not in names and "grayscale_to_rgb" not in names
    assert tuple(base.input.shape[1:]) == (32, 40, 3) and model.name == "rgb"
    with pytest.raises(ValueError):
        transfer.build_transfer_model((32, 32, 2), 4, weights="none")


def test_parameter_table_adds_up(digits_model):
    model, _, _ = digits_model
    table = transfer.parameter_table(model)
    assert table["trainable"] == 2048 * 10 + 10
    assert table["total"] == model.count_params()
    assert table["trainable_layers"] == 1


# --------------------------------------------------------------- unfreezing
def test_unfreeze_layers_blocks_and_batchnorm_stays_frozen():
    _, base, _ = transfer.build_transfer_model((32, 32, 3), 3, weights="none")
    batchnorms = [
        layer
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    names = transfer.unfreeze_top(base, 3, "layers")
    assert names == [
        "conv5_block3_1_conv",
        "conv5_block3_2_conv",
        "conv5_block3_3_conv",
    ]
    trainable = {
        layer.name for layer in base.layers if layer.trainable and layer.weights
    }
    assert trainable == set(names)
    assert not any(layer.trainable for layer in batchnorms)

    names = transfer.unfreeze_top(base, 2, "blocks")
    assert {name.split("_")[0] + "_" + name.split("_")[1] for name in names} == {
        "conv5_block2",
        "conv5_block3",
    }
    assert len(names) == 6
    assert not any(layer.trainable for layer in batchnorms)
    assert {
        layer.name for layer in base.layers if layer.trainable and layer.weights
    } == set(names)
    assert transfer.unfreeze_top(base, 0) == [] and not base.trainable_weights

    assert len(transfer.residual_blocks(base)) == 16
    assert len(transfer.weighted_layers(base)) == 53
    for count, unit in ((17, "blocks"), (54, "layers"), (-1, "layers"), (1, "stages")):
        with pytest.raises(ValueError):
            transfer.unfreeze_top(base, count, unit)


# ------------------------------------------------------------ weights files
def test_backbone_weights_file_loads_into_another_model(digits_model, tmp_path):
    _, base, _ = digits_model
    rng = np.random.default_rng(1)
    base.get_layer("conv1_conv").kernel.assign(
        rng.normal(size=base.get_layer("conv1_conv").kernel.shape).astype("float32")
    )
    path = tmp_path / "base.weights.h5"
    base.save_weights(path)
    # different input size, channels and classes: the backbone is the same
    _, other, notice = transfer.build_transfer_model((48, 48, 3), 5, weights=str(path))
    assert str(path) in notice
    expected, loaded = weights_of(base), weights_of(other)
    assert expected.keys() == loaded.keys()
    for key in expected:
        np.testing.assert_array_equal(expected[key], loaded[key])


def test_a_whole_model_weights_file_is_refused_clearly(digits_model, tmp_path):
    model, _, _ = digits_model
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    with pytest.raises(WorkbookError) as error:
        transfer.build_transfer_model((32, 32, 3), 5, weights=str(path))
    assert "base.weights.h5" in str(error.value)


def test_saved_model_reloads_in_safe_mode(digits_model, tmp_path):
    model, _, _ = digits_model
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)),
        atol=1e-6,
    )
