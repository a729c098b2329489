"""Lab 6: U-Net segmentation. Smoke runs, scenes, paired augmentation, IoU, folder
errors, tfds (mocked), and --compare on TensorFlow and JAX in subprocesses."""

import argparse
import json

import numpy as np
import pytest

from common import cli
from common.runs import load_model
from labs import lab6_unet

SMALL = ["--image-size", "32", "--width", "4", "--quick"]


def quick(tmp_path, *flags, name="run"):
    out = tmp_path / name
    return out, lab6_unet.main([*SMALL, *flags, "--out", str(out)])


def check_figures(metrics, classes):
    assert 0.0 <= metrics["pixel_accuracy"] <= 1.0
    assert 0.0 <= metrics["mean_iou"] <= 1.0
    assert 0.0 < metrics["majority_baseline"] < 1.0
    for name in classes:
        assert 0.0 <= metrics[f"iou_{name}"] <= 1.0


def make_pairs(root, count=12, size=(40, 30), classes=("sky", "road", "car")):
    """A folder of RGB JPEGs with one-channel PNG masks of class indices."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        mask = rng.integers(0, len(classes), (size[1], size[0])).astype("uint8")
        image = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
        Image.fromarray(image).save(root / "images" / f"photo{index}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"photo{index}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_compare_quick_writes_both_variants_and_a_reloadable_model(tmp_path):
    out, metrics = quick(tmp_path, "--compare")
    for variant in ("unet", "no-skip"):
        check_figures(
            {
                k[len(variant) + 1 :]: v
                for k, v in metrics.items()
                if k.startswith(variant)
            },
            lab6_unet.SCENE_CLASSES,
        )
        sub = out / variant
        for name in ("config.json", "history.json", "metrics.json", "model.keras"):
            assert (sub / name).is_file(), (variant, name)
        for plot in ("learning_curves", "segmentation_examples", "class_iou"):
            assert (sub / "plots" / f"{plot}.png").stat().st_size > 5000
        assert (sub / "plots" / "augmentation.png").is_file()
        report = (sub / "report.md").read_text()
        assert "Per-class IoU" in report and "| border |" in report
    assert metrics["unet_params"] > metrics["no-skip_params"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_variant"] in ("unet", "no-skip")
    assert {"unet_pixel_accuracy", "no-skip_mean_iou"} <= set(saved)
    history = json.loads((out / "unet" / "history.json").read_text())
    assert {"loss", "pixel_accuracy", "val_pixel_accuracy"} <= set(history[0])

    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["data"]["embedded"] and config["data"]["task"] == "segmentation"
    args = argparse.Namespace(
        dataset="scenes", test_dataset=None, image_size=32, quick=True, seed=0,
        num_scenes=64, augment="none", batch_size=16,
    )  # fmt: skip
    images = lab6_unet.load_data(args).x_test[:4]
    model, again = load_model(out / "model.keras"), load_model(out / "model.keras")
    logits = model.predict(images, verbose=0)
    assert logits.shape == (4, 32, 32, len(lab6_unet.SCENE_CLASSES))
    np.testing.assert_allclose(logits, again.predict(images, verbose=0), atol=1e-5)


def test_scenes_are_deterministic_with_every_class_and_a_low_baseline():
    images, masks = lab6_unet.make_scenes(60, 64, seed=3)
    again, same = lab6_unet.make_scenes(60, 64, seed=3)
    other, _ = lab6_unet.make_scenes(60, 64, seed=4)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(masks, same)
    assert not np.array_equal(images, other)
    assert images.dtype == np.float32 and 0.0 <= images.min() <= images.max() <= 1.0
    shares = np.bincount(masks.ravel(), minlength=5) / masks.size
    assert shares.min() > 0.03  # every class is there
    assert shares.max() < 0.75  # the majority baseline is far from 88 %
    # a thin border separates every two regions: no two classes touch directly
    for a, b in ((masks[:, 1:], masks[:, :-1]), (masks[:, :, 1:], masks[:, :, :-1])):
        touching = (a != b) & (a != 1) & (b != 1)
        assert not touching.any()
    assert 0.05 < shares[1] < 0.3


def test_flip_moves_image_and_mask_together_exactly():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 5, (6, 16, 16)).astype("uint8")
    images = np.repeat(masks[..., None] / 4.0, 3, axis=-1).astype("float32")
    flipped, flipped_masks = lab6_unet.augment_pairs(images, masks, rng, "flip")
    np.testing.assert_allclose(flipped[..., 0] * 4.0, flipped_masks, atol=1e-5)
    assert not np.array_equal(flipped_masks, masks)  # some were flipped
    for image, mask in zip(flipped_masks, masks):
        assert np.array_equal(image, mask) or np.array_equal(image, mask[:, ::-1])


def test_warp_keeps_mask_classes_and_follows_the_image():
    _, masks = lab6_unet.make_scenes(8, 32, seed=0)
    images = np.repeat(masks[..., None] / 4.0, 3, axis=-1).astype("float32")
    warped, warped_masks = lab6_unet.augment_pairs(
        images, masks, np.random.default_rng(1), "warp"
    )
    assert warped_masks.dtype == np.uint8 and set(np.unique(warped_masks)) <= set(
        range(5)
    )  # nearest-neighbour: no in-between classes
    assert not np.array_equal(warped_masks, masks)
    agreement = np.mean(np.rint(warped[..., 0] * 4.0) == warped_masks)
    assert agreement > 0.9  # bilinear image and nearest mask differ only at edges


def test_augmented_batches_depend_only_on_seed_epoch_and_index():
    images, masks = lab6_unet.make_scenes(20, 32, seed=0)
    splits = argparse.Namespace(x_train=images, y_train=masks)
    batches = lab6_unet.PairedAugmentation(splits, 8, seed=5, augment="warp")
    assert len(batches) == 3 and len(batches[2][0]) == 4
    first = batches[1]
    np.testing.assert_array_equal(first[1], batches[1][1])
    batches.epoch = 1
    assert not np.array_equal(first[0], batches[1][0])


def test_iou_matches_scikit_learn():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (5, 8, 8))
    predicted = np.where(
        rng.random((5, 8, 8)) < 0.6, truth, rng.integers(0, 4, (5, 8, 8))
    )
    confusion = lab6_unet.confusion_counts(truth, predicted, 4)
    assert confusion.shape == (5, 4, 4) and confusion.sum() == truth.size
    iou = lab6_unet.intersection_over_union(confusion.sum(axis=0))
    expected = jaccard_score(truth.ravel(), predicted.ravel(), average=None)
    np.testing.assert_allclose(iou, expected)
    absent = lab6_unet.intersection_over_union(np.diag([3, 0, 2]))
    assert np.isnan(absent[1]) and absent[0] == 1.0


def test_folder_of_images_and_masks_trains(tmp_path):
    root = make_pairs(tmp_path / "pairs", count=14)
    out, metrics = quick(
        tmp_path, "--dataset", f"folder:{root}", "--augment", "none", "--epochs", "1"
    )
    check_figures(metrics, ("sky", "road", "car"))
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["num_classes"] == 3
    assert sum(config["data"][f"num_{part}"] for part in ("train", "val", "test")) == 14
    assert not (out / "plots" / "augmentation.png").exists()


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            "missing",
            "1 of 12 images in images/ have no mask in masks/ (e.g. photo3.jpg)",
        ),
        ("size", "photo3.png is (20, 30) pixels but its image is (40, 30)"),
        ("value", "photo3.png holds the class index 7, but there are 3 classes"),
        ("colour", "photo3.png is a RGB image, not one class index per pixel"),
    ],
)
def test_folder_errors_name_the_file_and_write_nothing(
    tmp_path, capsys, damage, expected
):
    from PIL import Image

    root = make_pairs(tmp_path / "pairs")
    mask = root / "masks" / "photo3.png"
    if damage == "missing":
        mask.unlink()
    elif damage == "size":
        Image.fromarray(np.zeros((30, 20), "uint8")).save(mask)
    elif damage == "value":
        Image.fromarray(np.full((30, 40), 7, "uint8")).save(mask)
    else:
        Image.fromarray(np.zeros((30, 40, 3), "uint8")).save(mask)
    out = tmp_path / "run"
    code = cli.run(lab6_unet.main, ["--dataset", f"folder:{root}", "--out", str(out)])
    error = " ".join(capsys.readouterr().err.split())
    assert code == 1 and expected in error and "Traceback" not in error
    assert not out.exists()


def test_unreadable_images_are_skipped_and_counted(tmp_path, capsys):
    root = make_pairs(tmp_path / "pairs")
    (root / "images" / "photo5.jpg").write_bytes(b"not a jpeg")
    images, masks, names = lab6_unet.read_mask_folder(root, 32)
    assert images.shape == (11, 32, 32, 3) and masks.shape == (11, 32, 32)
    assert names == ["sky", "road", "car"]
    assert "skipped 1 unreadable" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--image-size", "40"], ["--depth", "3", "--image-size", "8"], ["--augment", "x"]],
)
def test_usage_errors_exit_2(tmp_path, argv):
    with pytest.raises(SystemExit) as raised:
        lab6_unet.main([*argv, "--out", str(tmp_path / "run")])
    assert raised.value.code == 2 and not (tmp_path / "run").exists()


def test_unknown_dataset_is_a_runtime_error(capsys):
    assert cli.run(lab6_unet.main, ["--dataset", "voc"]) == 1
    assert "unknown dataset 'voc'" in capsys.readouterr().err


def test_oxford_pets_through_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    def as_dataset(self, split, **kwargs):
        count = 12 if split == "train" else 6
        rng = np.random.default_rng(0)
        masks = rng.integers(1, 4, (count, 40, 50, 1)).astype("uint8")
        images = rng.integers(0, 256, (count, 40, 50, 3)).astype("uint8")
        return tf.data.Dataset.from_tensor_slices(
            {"image": images, "segmentation_mask": masks}
        )

    args = argparse.Namespace(
        dataset="oxford_iiit_pet", test_dataset=None, image_size=32, quick=False,
        seed=0, num_scenes=0, augment="none", batch_size=4,
    )  # fmt: skip
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        splits = lab6_unet.load_data(args)
    assert splits.class_names == ["pet", "background", "border"]
    assert splits.x_train.shape[1:] == (32, 32, 3) and splits.x_test.shape[0] == 6
    assert len(splits.x_train) + len(splits.x_val) == 12
    assert set(np.unique(splits.y_train)) <= {0, 1, 2}
    assert 0.0 <= splits.x_train.min() <= splits.x_train.max() <= 1.0


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_compare_quick_on_other_backends(tmp_path, run_lab, backend):
    argv = [*SMALL, "--depth", "2", "--compare", "--out", tmp_path / "run"]
    code, output, metrics = run_lab("lab6_unet", argv, backend)  # XLA compiles less
    assert code == 0, output[-3000:]
    assert "unet_pixel_accuracy" in metrics and "no-skip_mean_iou" in metrics
    assert (
        json.loads((tmp_path / "run" / "unet" / "config.json").read_text())["backend"]
        == backend
    )


def test_test_dataset_is_used_whole_and_must_share_the_classes(tmp_path):
    train = make_pairs(tmp_path / "train", count=20)
    test = make_pairs(tmp_path / "test", count=5)
    args = argparse.Namespace(
        dataset=f"folder:{train}", test_dataset=f"folder:{test}", image_size=32,
        quick=False, seed=0, num_scenes=0, augment="none", batch_size=4,
    )  # fmt: skip
    splits = lab6_unet.load_data(args)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (18, 2, 5)
    (test / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(cli.WorkbookError, match="same classes"):
        lab6_unet.load_data(args)
