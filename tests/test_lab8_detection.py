"""Lab 8 (detection): the VOC mAP against a hand count and pycocotools, the
generated set, the Pascal VOC reader and its errors, and both detectors end to
end on every backend."""

import contextlib
import io
import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from common import cli, detection  # noqa: E402
from common.cli import WorkbookError  # noqa: E402

TF_LOG_MARKERS = ("absl::", "oneDNN", "cudart", "cuda_platform", "cpu_feature_guard")


# ----------------------------------------------------------------------------
# mAP
# ----------------------------------------------------------------------------
def _one_class(predicted, scores, true, difficult=None):
    """Arrays for one image per row, one class (0), from plain lists."""
    predictions = (
        np.asarray(predicted, "float32"),
        np.asarray(scores, "float32"),
        np.zeros(np.shape(scores), "int32"),
    )
    classes = np.zeros(np.shape(true)[:2], "int32")
    flags = np.zeros(classes.shape, bool) if difficult is None else difficult
    return predictions, (np.asarray(true, "float32"), classes, np.asarray(flags))


def test_average_precision_by_hand():
    # image 0: a hit (0.9) and a miss (0.8); image 1: a hit (0.7).
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP = 1/2 * 1 + 1/2 * 2/3
    predictions, truths = _one_class(
        [[[0, 0, 10, 10], [50, 50, 60, 60]], [[20, 20, 30, 31], [-1, -1, -1, -1]]],
        [[0.9, 0.8], [0.7, 0.0]],
        [[[0, 0, 10, 10]], [[20, 20, 30, 30]]],
    )
    predictions[2][1, 1] = -1  # padding
    result = detection.evaluate_detections(predictions, truths, 1)
    assert result["ap"][0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result["positives"] == [2]


def test_duplicates_count_once_and_difficult_boxes_are_ignored():
    box = [0, 0, 10, 10]
    predictions, truths = _one_class([[box, box]], [[0.9, 0.8]], [[box]])
    assert detection.evaluate_detections(predictions, truths, 1)["ap"][0] == 1.0
    recall, precision = detection.evaluate_detections(predictions, truths, 1)["curves"][
        0
    ]
    np.testing.assert_allclose(precision, [1.0, 0.5])  # the duplicate is wrong
    flagged = np.array([[False, True]])
    predictions, truths = _one_class(
        [[box, [40, 40, 50, 50]]], [[0.9, 0.8]], [[box, [40, 40, 50, 50]]], flagged
    )
    result = detection.evaluate_detections(predictions, truths, 1)
    assert result["positives"] == [1] and result["ap"][0] == 1.0


def test_a_class_without_true_boxes_is_left_out_of_the_mean():
    predictions, truths = _one_class([[[0, 0, 10, 10]]], [[0.9]], [[[0, 0, 10, 10]]])
    result = detection.evaluate_detections(predictions, truths, 2)
    assert result["ap"] == [1.0, None]
    assert result["map"] == 1.0


def _scenario(seed, count=40, classes=3):
    """Random, well separated true boxes; jittered, mislabelled and spurious
    detections with distinct scores."""
    rng = np.random.default_rng(seed)
    true_boxes = np.full((count, 4, 4), -1.0, "float32")
    true_classes = np.full((count, 4), -1, "int32")
    boxes = np.full((count, 8, 4), -1.0, "float32")
    scores = np.zeros((count, 8), "float32")
    labels = np.full((count, 8), -1, "int32")
    for image in range(count):
        slots = 0
        for cell in rng.permutation(4)[: rng.integers(0, 5)]:
            corner = np.array([cell % 2, cell // 2]) * 50 + rng.uniform(0, 10, 2)
            true = np.concatenate([corner, corner + rng.uniform(15, 35, 2)])
            index = int(np.sum(true_classes[image] >= 0))
            true_boxes[image, index], true_classes[image, index] = true, rng.integers(3)
            if rng.uniform() < 0.8:
                jittered = true + rng.normal(0, 4, 4)  # corners kept in order:
                boxes[image, slots] = np.concatenate(  # COCO scores a box whose
                    [np.minimum(jittered[:2], jittered[2:] - 1), jittered[2:]]
                )  # corners crossed with a negative area, the workbook as empty
                keep = rng.uniform() < 0.85
                labels[image, slots] = true_classes[image, index] if keep else 0
                scores[image, slots] = rng.uniform()
                slots += 1
        for _ in range(rng.integers(0, 3)):
            corner = rng.uniform(0, 80, 2)
            boxes[image, slots] = np.concatenate([corner, corner + 20])
            labels[image, slots], scores[image, slots] = rng.integers(3), rng.uniform()
            slots += 1
    return (boxes, scores, labels), (true_boxes, true_classes), classes


def _coco_ap50(predictions, truths, classes):
    """pycocotools' AP at IoU 0.5 per class (101 recall points)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        return [
            float(box[0]),
            float(box[1]),
            float(box[2] - box[0]),
            float(box[3] - box[1]),
        ]

    annotations = []
    for image in range(len(truths[0])):
        for box, label in zip(truths[0][image], truths[1][image]):
            if label >= 0:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image + 1,
                        "category_id": int(label) + 1,
                        "bbox": xywh(box),
                        "area": float(np.prod(box[2:] - box[:2])),
                        "iscrowd": 0,
                    }
                )
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": image + 1} for image in range(len(truths[0]))],
        "annotations": annotations,
        "categories": [{"id": label + 1} for label in range(classes)],
    }
    detections = [
        {"image_id": image + 1, "category_id": int(label) + 1, "bbox": xywh(box),
         "score": float(score)}
        for image in range(len(predictions[0]))
        for box, score, label in zip(*(part[image] for part in predictions))
        if label >= 0
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # recall x class
    return [float(np.mean(precision[:, label])) for label in range(classes)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_agrees_with_pycocotools(seed):
    predictions, truths, classes = _scenario(seed)
    coco = _coco_ap50(predictions, truths, classes)
    sampled = detection.evaluate_detections(predictions, truths, classes, points=101)
    np.testing.assert_allclose(sampled["ap"], coco, atol=1e-9)
    # the workbook's every-point AP differs from COCO's 101 samples by little
    every = detection.evaluate_detections(predictions, truths, classes)
    np.testing.assert_allclose(every["ap"], coco, atol=0.02)
    assert 0.1 < every["map"] < 0.9


def test_mean_box_baseline_scores_little():
    images, boxes, classes = detection.make_shapes(60, 64, seed=0)
    guess = detection.mean_box_baseline(boxes[:40], classes[:40], 20, 4)
    result = detection.evaluate_detections(guess, (boxes[40:], classes[40:]), 4)
    assert 0.0 <= result["map"] < 0.1


# ----------------------------------------------------------------------------
# The generated set
# ----------------------------------------------------------------------------
def test_shapes_are_deterministic_and_boxes_are_tight():
    images, boxes, classes = detection.make_shapes(20, 64, seed=5)
    again = detection.make_shapes(20, 64, seed=5)
    other = detection.make_shapes(20, 64, seed=6)
    for first, second in zip((images, boxes, classes), again):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(images, other[0])
    assert images.dtype == np.float32 and 0.0 <= images.min() <= images.max() <= 1.0
    valid = classes >= 0
    assert valid.any(axis=1).all() and set(np.unique(classes[valid])) <= {0, 1, 2, 3}
    chosen = boxes[valid]
    assert np.all(chosen[:, :2] >= 0) and np.all(chosen[:, 2:] <= 64)
    sides = chosen[:, 2:] - chosen[:, :2]
    assert sides.min() >= 0.16 * 64 - 1 and sides.max() <= 0.47 * 64 + 1
    np.testing.assert_array_equal(boxes[~valid], -1.0)


# ----------------------------------------------------------------------------
# Pascal VOC folders
# ----------------------------------------------------------------------------
def _voc_folder(root, count=6, names=("cat", "dog"), box=(11, 21, 40, 50)):
    from PIL import Image

    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for index in range(count):
        Image.new("RGB", (80, 60), (index * 30, 80, 120)).save(
            root / "JPEGImages" / f"{index:03d}.jpg"
        )
        name = names[index % len(names)]
        difficult = int(index % 3 == 2)
        objects = f"""<object><name>{name}</name><difficult>{difficult}</difficult>
          <bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax>
          <ymax>{box[3]}</ymax></bndbox></object>"""
        (root / "Annotations" / f"{index:03d}.xml").write_text(
            f"<annotation><size><width>80</width><height>60</height></size>"
            f"{objects}</annotation>"
        )
    return root


def test_voc_folder_reads_images_boxes_and_classes(tmp_path):
    parts, names = detection.read_voc_folder(_voc_folder(tmp_path / "voc"), 32, seed=0)
    assert names == ["cat", "dog"]
    assert sum(len(part[0]) for part in parts.values()) == 6
    images, boxes, classes, difficult = parts["train"]
    assert images.shape[1:] == (32, 32, 3) and images.max() <= 1.0
    # VOC pixel 11..40 of 80 wide is [10, 40) -> x 4 to 16 at 32 px
    np.testing.assert_allclose(boxes[0, 0], [4.0, 20 * 32 / 60, 16.0, 50 * 32 / 60])
    assert set(classes[:, 0]) <= {0, 1} and difficult.dtype == bool


def test_voc_folder_uses_imagesets_splits(tmp_path):
    root = _voc_folder(tmp_path / "voc")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000\n001\n002\n003\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("004\n005\n")
    parts, _ = detection.read_voc_folder(root, 32)
    assert [len(parts[p][0]) for p in ("train", "val", "test")] == [3, 1, 2]


def test_voc_folder_as_a_test_set_takes_every_image(tmp_path):
    root = _voc_folder(tmp_path / "voc")
    test, names = detection.read_dataset(f"folder:{root}", 32, 0, ["cat", "dog"])
    assert names == ["cat", "dog"] and len(test[0]) == 6 and len(test) == 4
    with pytest.raises(WorkbookError, match="unknown class name 'dog'"):
        detection.read_dataset(f"folder:{root}", 32, 0, ["cat"])


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "has no annotation"),
        ("outside", "outside its 80x60 image"),
        ("unknown", "unknown class name 'dog'"),
    ],
)
def test_voc_folder_errors_name_the_file(tmp_path, breakage, message):
    root = _voc_folder(
        tmp_path / "voc",
        box=(11, 21, 95, 50) if breakage == "outside" else (11, 21, 40, 50),
    )
    if breakage == "missing":
        (root / "Annotations" / "003.xml").unlink()
    if breakage == "unknown":
        (root / "classes.txt").write_text("cat\n")
    with pytest.raises(WorkbookError, match=message) as error:
        detection.read_voc_folder(root, 32)
    assert "00" in str(error.value)  # names the image or annotation


def test_voc_2007_through_tfds_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        parts, names = detection.load_voc_tfds(32)
    assert len(names) == 20 and "person" in names
    images, boxes, classes, difficult = parts["test"]
    assert images.shape == (4, 32, 32, 3) and images.max() <= 1.0
    assert boxes.shape[-1] == 4 and boxes.shape[:2] == classes.shape == difficult.shape


# ----------------------------------------------------------------------------
# The lab
# ----------------------------------------------------------------------------
def _run(argv):
    from labs import lab8_detection

    return lab8_detection.main(argv)


@pytest.mark.parametrize("arch", ["retinanet", "faster-rcnn"])
def test_quick_run_writes_a_complete_run(tmp_path, arch):
    import labs.lab8_detection  # noqa: F401  (registers FasterRCNN for reloading)
    from common.runs import load_model

    out = tmp_path / "run"
    metrics = _run(["--arch", arch, "--quick", "--weights", "none", "--out", str(out)])
    assert metrics["status"] in ("completed", "early_stopped")
    for key in (
        "map50",
        "mean_box_map50",
        *(f"ap50_{n}" for n in detection.SHAPE_CLASSES),
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["inference_ms_per_image"] > 0 and metrics["seconds_per_epoch"] > 0
    saved = json.loads((out / "metrics.json").read_text())
    with np.load(out / "detections.npz") as data:
        predictions = (data["pred_boxes"], data["pred_scores"], data["pred_classes"])
        truths = (data["true_boxes"], data["true_classes"], data["true_difficult"])
    result = detection.evaluate_detections(predictions, truths, 4)
    assert saved["map50"] == pytest.approx(result["map"])
    for plot in (
        "learning_curves",
        "test_detections",
        "precision_recall",
        "validation_map",
    ):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 10_000, plot
    rows = json.loads((out / "history.json").read_text())
    assert len(rows) == 2 and all(np.isfinite(row["loss"]) for row in rows)
    if arch == "faster-rcnn":
        assert {"rpn_objectness_loss", "roi_class_loss", "val_roi_box_loss"} <= set(
            rows[0]
        )
    assert "Average precision per class" in (out / "report.md").read_text()
    # the reloaded model finds what the trained one found on the same test images
    test_images = detection.make_shapes(64 + 2 * 16, 64, seed=0)[0][-16:]
    reloaded = detection.detect(load_model(out / "model.keras"), test_images)
    with np.load(out / "detections.npz") as saved_detections:
        np.testing.assert_array_equal(reloaded[2], saved_detections["pred_classes"])
        np.testing.assert_allclose(
            reloaded[1], saved_detections["pred_scores"], atol=1e-4
        )
        np.testing.assert_allclose(
            reloaded[0], saved_detections["pred_boxes"], atol=1e-2
        )


def _cli(argv, capsys):
    from labs import lab8_detection

    code = cli.run(lab8_detection.main, argv)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--image-size", "50"], "multiple of 16"),
        (["--test-dataset", "voc/2007"], "folder:PATH"),
        (["--arch", "yolo"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        _cli([*argv, "--out", str(tmp_path / "run")], capsys)
    assert stop.value.code == 2
    assert expected in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("missing annotation", ["error: the image", "002.xml"]),
        ("not a VOC folder", ["is not a Pascal VOC folder", "Annotations/"]),
        ("unknown dataset", ["unknown dataset 'mnist'", "folder:PATH"]),
        ("voc/2007 offline", ["not available offline", "--dataset shapes"]),
    ],
)
def test_bad_data_is_one_paragraph_and_exit_1(
    tmp_path, capsys, monkeypatch, breakage, expected
):
    root = _voc_folder(tmp_path / "voc")
    dataset = f"folder:{root}"
    if breakage == "missing annotation":
        (root / "Annotations" / "002.xml").unlink()
    if breakage == "not a VOC folder":
        (root / "Annotations").rename(root / "labels")
    if breakage == "unknown dataset":
        dataset = "mnist"
    if breakage == "voc/2007 offline":
        import common.data

        monkeypatch.setattr(common.data, "network_reachable", lambda *a, **k: False)
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
        dataset = "voc/2007"
    argv = ["--dataset", dataset, "--quick", "--out", str(tmp_path / "run")]
    code, output = _cli(argv, capsys)
    assert code == 1
    assert all(part in output for part in expected), output
    assert "Traceback" not in output and output.count("error:") == 1


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code, output = _cli(["--quick", "--out", str(out)], capsys)
    assert code == 1 and "already holds files" in output
    assert (out / "metrics.json").read_text() == "{}"


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_both_detectors_on_other_backends(run_lab, tmp_path, backend):
    argv = ["--compare", "--quick", "--weights", "none", "--image-size", "32"]
    code, output, metrics = run_lab(
        "lab8_detection", [*argv, "--out", tmp_path / "run"], backend
    )
    assert code == 0, output[-3000:]
    for arch in ("retinanet", "faster-rcnn"):
        assert 0.0 <= metrics[f"{arch}_map50"] <= 1.0
    run = tmp_path / "run"
    assert (run / "faster-rcnn" / "model.keras").is_file()
    assert (run / "plots" / "comparison_ap.png").stat().st_size > 10_000
    assert "Detectors side by side" in (run / "report.md").read_text()
    assert not [marker for marker in TF_LOG_MARKERS if marker in output]
