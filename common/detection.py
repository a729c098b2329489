"""The object-detection toolkit: mAP in numpy, detection data, shared parts, plots.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the (resized) image, continuous
coordinates: a box covering pixel columns 3 to 9 is ``x1 = 3, x2 = 10``. A set of
images comes as padded arrays: ``boxes`` (N, M, 4) float32 and ``classes`` (N, M)
int32, where class ``-1`` (and box ``-1``) marks padding; ``difficult`` (N, M)
bool marks Pascal VOC's "difficult" objects, which the metric neither counts nor
penalises. Anchors, the RetinaNet's matching and NMS come from keras-hub.

1. **Mean average precision** (own code: neither Keras nor keras-hub has one):
   :func:`evaluate_detections`, VOC's AP per class at an IoU threshold (every
   point of the precision envelope, as VOC 2010+; or COCO's 101 recall points,
   which the tests check against pycocotools) and their mean, mAP.
2. **Box coding** on tensors for the Faster R-CNN's losses: anchor deltas
   (``keras.utils.bounding_boxes``), smooth L1, matching boxes by IoU.
3. **Data**, as {"train" | "val" | "test": (images, boxes, classes, difficult)}:
   :func:`make_shapes`, the generated set (circles, squares, triangles and
   crosses of different sizes on cluttered backgrounds), deterministic from the
   seed; :func:`read_voc_folder`, a Pascal VOC folder checked on load;
   :func:`load_voc_tfds`, ``voc/2007`` through tensorflow-datasets;
   :func:`to_splits` and :func:`stream` hand them to Keras.
4. **Shared by the detectors**: the ResNet backbone, the anchor size, batched
   inference (:func:`detect`), its timing, and the validation-mAP callback.
5. **Plots**: detections drawn on images, precision-recall curves, mAP per epoch.
"""

import json
import re
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import keras
import numpy as np

from common import plots
from common.cli import WorkbookError

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
PRESET = "resnet_18_imagenet"  # keras-hub's ImageNet ResNet-18
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOC_FOLDERS = {
    "images": ("JPEGImages", "images"),
    "xml": ("Annotations", "annotations"),
}


# ----------------------------------------------------------------------------
# 1. Mean average precision
# ----------------------------------------------------------------------------
def box_iou(first, second):
    """IoU of every box in ``first`` (n, 4) with every box in ``second`` (m, 4)."""
    first, second = np.asarray(first, "float64"), np.asarray(second, "float64")
    low = np.maximum(first[:, None, :2], second[None, :, :2])
    high = np.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = np.prod(np.clip(high - low, 0, None), axis=-1)
    union = _area(first)[:, None] + _area(second)[None, :] - intersection
    return intersection / np.maximum(union, 1e-12)


def _area(boxes):
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)


def average_precision(recall, precision, points=None):
    """Area under the precision envelope (at each recall, the best precision at
    that recall or beyond).

    ``points=None``: every point, as VOC 2010+ and the workbook's mAP do;
    ``points=101``: the envelope's mean at recall 0, 0.01, ..., 1, as COCO does.
    """
    envelope = np.maximum.accumulate(np.asarray(precision, "float64")[::-1])[::-1]
    if points:
        where = np.searchsorted(recall, np.linspace(0, 1, points), side="left")
        return float(np.sum(envelope[where[where < len(envelope)]]) / points)
    recall = np.concatenate([[0.0], recall])
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps]))


def evaluate_detections(predictions, truths, num_classes, iou=0.5, points=None):
    """VOC-style AP per class and mAP.

    Args:
        predictions: (boxes (N, D, 4), scores (N, D), classes (N, D)), -1 padding.
        truths: (boxes (N, M, 4), classes (N, M)[, difficult (N, M)]).
        points: None for every-point AP (VOC), 101 for COCO's sampled AP.

    Detections of a class are taken by falling score; each is a true positive
    when its best-overlapping true box of that class (IoU >= ``iou``) is not
    taken yet, and ignored when that box is difficult. Classes without a
    (non-difficult) true box get AP None and are left out of the mean.

    Returns {"map": float, "ap": [per class], "curves": [(recall, precision)],
    "positives": [per class]}.
    """
    pred_boxes, pred_scores, pred_classes = (np.asarray(a) for a in predictions)
    true_boxes, true_classes = np.asarray(truths[0]), np.asarray(truths[1])
    difficult = np.zeros(true_classes.shape, bool)
    if len(truths) > 2:
        difficult = np.asarray(truths[2], bool)
    result = {"ap": [], "curves": [], "positives": []}
    for label in range(num_classes):
        image, slot = np.nonzero(pred_classes == label)
        order = np.argsort(-pred_scores[image, slot], kind="stable")
        wanted = true_classes == label
        taken = np.zeros(true_classes.shape, bool)
        hits, counted = np.zeros(len(order)), np.ones(len(order), bool)
        for rank, (i, d) in enumerate(zip(image[order], slot[order])):
            candidates = np.flatnonzero(wanted[i])
            if len(candidates) == 0:
                continue
            overlaps = box_iou(pred_boxes[i, d][None], true_boxes[i, candidates])[0]
            best = candidates[np.argmax(overlaps)]
            if overlaps.max() < iou:
                continue
            if difficult[i, best]:
                counted[rank] = False
            elif not taken[i, best]:
                taken[i, best], hits[rank] = True, 1.0
        hits = hits[counted]
        positives = int(np.sum(wanted & ~difficult))
        true_positives, false_positives = np.cumsum(hits), np.cumsum(1.0 - hits)
        recall = true_positives / max(positives, 1)
        precision = true_positives / np.maximum(true_positives + false_positives, 1e-12)
        result["positives"].append(positives)
        result["curves"].append((recall, precision))
        result["ap"].append(
            average_precision(recall, precision, points) if positives else None
        )
    scored = [ap for ap in result["ap"] if ap is not None]
    result["map"] = float(np.mean(scored)) if scored else 0.0
    return result


def mean_box_baseline(train_boxes, train_classes, count, num_classes):
    """What a detector that knows no image scores: for every class, the training
    set's mean box of that class, on every one of ``count`` images, scored by
    the class's share of the training boxes."""
    valid = train_classes >= 0
    boxes = np.full((count, num_classes, 4), -1.0, "float32")
    scores = np.zeros((count, num_classes), "float32")
    for label in range(num_classes):
        mine = train_classes == label
        if mine.any():
            boxes[:, label] = train_boxes[mine].mean(axis=0)
            scores[:, label] = mine.sum() / valid.sum()
    classes = np.tile(np.arange(num_classes, dtype="int32"), (count, 1))
    return boxes, scores, np.where(scores > 0, classes, -1)


def ap_key(class_name):
    """The metrics.json key of a class's AP: ``ap50_<name>``."""
    return "ap50_" + re.sub(r"\W+", "_", str(class_name)).strip("_").lower()


def ap_table(result, class_names):
    """A markdown table: true boxes and AP per class."""
    lines = ["| class | true boxes (test) | AP@0.5 |", "|---|---|---|"]
    for name, count, ap in zip(class_names, result["positives"], result["ap"]):
        lines.append(f"| {name} | {count} | {'-' if ap is None else f'{ap:.4f}'} |")
    return "\n".join(lines)


def save_detections(path, predictions, truths, class_names):
    """Every test image's predicted and true boxes, to recompute the mAP from."""
    np.savez_compressed(
        path,
        pred_boxes=np.asarray(predictions[0], "float32"),
        pred_scores=np.asarray(predictions[1], "float32"),
        pred_classes=np.asarray(predictions[2], "int32"),
        true_boxes=np.asarray(truths[0], "float32"),
        true_classes=np.asarray(truths[1], "int32"),
        true_difficult=np.asarray(truths[2], "bool"),
        class_names=np.asarray(class_names, dtype=str),
    )


# ----------------------------------------------------------------------------
# 2. Box coding and matching on tensors (keras.ops; Faster R-CNN's losses)
# ----------------------------------------------------------------------------
BOX_VARIANCE = [0.1, 0.1, 0.2, 0.2]  # box deltas are divided by these


def encode(anchors, boxes):
    """The deltas that move ``anchors`` onto ``boxes`` (centre shift over the
    anchor's side, log of the side ratio, each over ``BOX_VARIANCE``)."""
    return keras.utils.bounding_boxes.encode_box_to_deltas(
        anchors, boxes, "xyxy", "xyxy", "center_xywh", BOX_VARIANCE
    )


def decode(anchors, deltas, image_size):
    """The boxes that ``deltas`` make of ``anchors``, clipped to the image."""
    deltas = keras.ops.clip(deltas, -20.0, 20.0)
    boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors, deltas, "xyxy", "xyxy", "center_xywh", BOX_VARIANCE
    )
    return keras.ops.clip(boxes, 0.0, float(image_size))


def smooth_l1(difference):
    """Smooth L1 (Huber with delta 1) summed over the last axis."""
    absolute = keras.ops.abs(difference)
    quadratic = keras.ops.where(absolute < 1.0, 0.5 * difference**2, absolute - 0.5)
    return keras.ops.sum(quadratic, axis=-1)


def gather_rows(boxes, index, count):
    """boxes (B, M, 4) at index (B, R) -> (B, R, 4), through a one-hot product."""
    return keras.ops.einsum("brm,bmk->brk", keras.ops.one_hot(index, count), boxes)


def match(boxes, truth_boxes, truth_valid):
    """IoU of each box, (R, 4) or (B, R, 4), with each true box (B, M, 4):
    (iou, the best true box's index, its IoU); -1 where an image has none."""
    iou = keras.utils.bounding_boxes.compute_iou(boxes, truth_boxes, "xyxy")
    iou = keras.ops.where(truth_valid[:, None, :], iou, -1.0)
    return iou, keras.ops.argmax(iou, axis=-1), keras.ops.max(iou, axis=-1)


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` holds (0 when it holds nowhere)."""
    mask = keras.ops.cast(mask, values.dtype)
    total = keras.ops.sum(keras.ops.where(mask > 0, values, 0.0))
    return total / keras.ops.maximum(keras.ops.sum(mask), 1.0)


# ----------------------------------------------------------------------------
# 3. Data: the generated set
# ----------------------------------------------------------------------------
def _shape_mask(kind, centre_x, centre_y, size, xs, ys):
    dx, dy, half = xs - centre_x, ys - centre_y, size / 2
    if kind == 0:  # circle
        return dx**2 + dy**2 <= half**2
    if kind == 1:  # square
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if kind == 2:  # triangle, apex up
        depth = (dy + half) / size
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * half)
    bar = size / 6  # cross
    vertical = (np.abs(dx) <= bar) & (np.abs(dy) <= half)
    return vertical | ((np.abs(dy) <= bar) & (np.abs(dx) <= half))


def _background(rng, size, xs, ys):
    """A muted colour gradient, noise, thin lines and small dots (clutter)."""
    start, end = rng.uniform(0.1, 0.6, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xs + np.sin(angle) * ys
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    image = start + ramp[..., None] * (end - start)
    image += rng.normal(0, 0.04, image.shape)
    for _ in range(rng.integers(3, 7)):  # lines 1-2 px wide
        (x1, y1), (x2, y2) = rng.uniform(0, size, (2, 2))
        length = max(np.hypot(x2 - x1, y2 - y1), 1e-6)
        along = ((xs - x1) * (x2 - x1) + (ys - y1) * (y2 - y1)) / length**2
        along = np.clip(along, 0, 1)
        distance = np.hypot(xs - x1 - along * (x2 - x1), ys - y1 - along * (y2 - y1))
        image[distance <= rng.uniform(0.5, 1.0)] = rng.uniform(0, 1, 3)
    for _ in range(rng.integers(5, 11)):  # dots far smaller than any object
        x, y = rng.uniform(0, size, 2)
        image[np.hypot(xs - x, ys - y) <= rng.uniform(1, 2.5)] = rng.uniform(0, 1, 3)
    return image


def _covered(box, other):
    """The share of the smaller of two boxes that the other covers."""
    low, high = np.maximum(box[:2], other[:2]), np.minimum(box[2:], other[2:])
    inside = np.prod(np.clip(high - low, 0, None))
    return inside / min(np.prod(box[2:] - box[:2]), np.prod(other[2:] - other[:2]))


def make_shapes(count, image_size=64, seed=0, max_objects=4, sizes=(0.16, 0.47)):
    """``count`` images with 1 to ``max_objects`` shapes each.

    Shapes are ``sizes`` of the image side across (10 to 30 pixels at 64),
    filled with a random colour that stands out from the background behind them,
    and overlap little; boxes are the tight bounds of the drawn pixels.

    Returns:
        (images (N, S, S, 3) float32 in [0, 1], boxes (N, M, 4), classes (N, M)).
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5  # pixel centres
    images = np.empty((count, image_size, image_size, 3), "float32")
    boxes = np.full((count, max_objects, 4), -1.0, "float32")
    classes = np.full((count, max_objects), -1, "int32")
    for index in range(count):
        image, placed = _background(rng, image_size, xs, ys), []
        for _ in range(rng.integers(1, max_objects + 1)):
            for _ in range(30):  # a place that overlaps little with the others
                size = rng.uniform(*sizes) * image_size
                x, y = rng.uniform(size / 2, image_size - size / 2, 2)
                box = np.array([x - size / 2, y - size / 2, x + size / 2, y + size / 2])
                if all(_covered(box, other) < 0.2 for other in placed):
                    break
            else:
                continue
            kind = int(rng.integers(len(SHAPE_CLASSES)))
            mask = _shape_mask(kind, x, y, size, xs, ys)
            behind = image[mask].mean(axis=0)
            for _ in range(20):  # a colour that stands out from what is behind
                colour = rng.uniform(0, 1, 3)
                if np.linalg.norm(colour - behind) > 0.4:
                    break
            image[mask] = colour + rng.normal(0, 0.03, (mask.sum(), 3))
            rows, columns = np.nonzero(mask)
            slot = len(placed)
            placed.append(box)
            tight = [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]
            boxes[index, slot], classes[index, slot] = tight, kind
        images[index] = np.clip(image, 0, 1)
    return images, boxes, classes


def shapes_parts(train, evaluation, image_size, seed):
    """The generated set as :func:`read_dataset` returns it: ``train`` training
    images and ``evaluation`` each for validation and test."""
    images, boxes, classes = make_shapes(train + 2 * evaluation, image_size, seed)
    cuts = np.cumsum([0, train, evaluation, evaluation])
    difficult = np.zeros(classes.shape, bool)
    return {
        part: (images[a:b], boxes[a:b], classes[a:b], difficult[a:b])
        for part, a, b in zip(("train", "val", "test"), cuts, cuts[1:])
    }


# ----------------------------------------------------------------------------
# 3. Data: Pascal VOC folders and voc/2007
# ----------------------------------------------------------------------------
def _padded(rows, width, fill, dtype):
    """A list of per-image lists as one (N, max(length, 1)[, width]) array."""
    longest = max([len(row) for row in rows] + [1])
    array = np.full((len(rows), longest) + ((width,) if width else ()), fill, dtype)
    for index, row in enumerate(rows):
        if len(row):
            array[index, : len(row)] = row
    return array


def _as_part(images, boxes, classes, difficult):
    """Per-image lists as one padded (images, boxes, classes, difficult) tuple."""
    return (
        np.stack(images).astype("float32"),
        _padded(boxes, 4, -1.0, "float32"),
        _padded(classes, 0, -1, "int32"),
        _padded(difficult, 0, False, "bool"),
    )


def _voc_subfolder(root, kind):
    for name in VOC_FOLDERS[kind]:
        if (root / name).is_dir():
            return root / name
    raise WorkbookError(
        f"{root} is not a Pascal VOC folder: it has no "
        f"{' or '.join(VOC_FOLDERS[kind])}/ sub-folder. A detection folder holds "
        "JPEGImages/ (the images) and Annotations/ (one VOC .xml per image, same "
        "name), as VOCdevkit/VOC2007 does."
    )


def _read_annotation(xml, width, height, class_names):
    """(boxes in pixels, class names, difficult flags) of one VOC .xml file."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise WorkbookError(f"cannot read the annotation {xml} ({error}).") from None
    boxes, names, difficult = [], [], []
    for number, node in enumerate(root.iter("object"), start=1):
        name = (node.findtext("name") or "").strip()
        if class_names is not None and name not in class_names:
            raise WorkbookError(
                f"{xml}: object {number} has the unknown class name {name!r}; the "
                f"classes are {', '.join(class_names)}. Fix the name, or list the "
                "class in the folder's classes.txt (one name per line)."
            )
        try:
            box = [
                float(node.findtext(f"bndbox/{tag}"))
                for tag in "xmin ymin xmax ymax".split()
            ]
        except (TypeError, ValueError):
            raise WorkbookError(
                f"{xml}: object {number} ({name}) has no numeric <bndbox> with "
                "xmin, ymin, xmax and ymax in pixels. Correct it, or remove the object."
            ) from None
        # VOC counts pixels from 1 and includes xmax: pixels xmin..xmax are
        # [xmin - 1, xmax) here; files that count from 0 have xmin = 0.
        x1, y1, x2, y2 = max(box[0] - 1, 0.0), max(box[1] - 1, 0.0), box[2], box[3]
        if box[0] < 0 or box[1] < 0 or x2 > width + 1 or y2 > height + 1:
            raise WorkbookError(
                f"{xml}: object {number} ({name}) has the box xmin={box[0]:g}, "
                f"ymin={box[1]:g}, xmax={box[2]:g}, ymax={box[3]:g} outside its "
                f"{width}x{height} image. Correct the box, or remove the object."
            )
        if x2 <= x1 or y2 <= y1:
            raise WorkbookError(
                f"{xml}: object {number} ({name}) has an empty box (xmax <= xmin or "
                "ymax <= ymin). Correct the box, or remove the object."
            )
        boxes.append([x1, y1, min(x2, width), min(y2, height)])
        names.append(name)
        difficult.append(node.findtext("difficult", "0").strip() == "1")
    return boxes, names, difficult


def _split_names(root, names, seed):
    """{"train", "val", "test"} -> image names: ImageSets/Main's train (or
    trainval), val and test lists when there are train and test lists (a tenth
    of train for validation when val is missing or overlaps it), else a seeded
    70/15/15 split."""
    main, lists = root / "ImageSets" / "Main", {}
    for part, files in (
        ("train", ("train", "trainval")),
        ("val", ("val",)),
        ("test", ("test",)),
    ):
        found = [
            main / f"{name}.txt" for name in files if (main / f"{name}.txt").is_file()
        ]
        if found:
            lists[part] = found[0].read_text().split()
    rng = np.random.default_rng(seed)
    if "train" not in lists or "test" not in lists:
        order = [names[i] for i in rng.permutation(len(names))]
        cut_val, cut_test = int(0.7 * len(order)), int(0.85 * len(order))
        return {
            "train": order[:cut_val],
            "val": order[cut_val:cut_test],
            "test": order[cut_test:],
        }
    unknown = sorted(set(sum(lists.values(), [])) - set(names))
    if unknown:
        raise WorkbookError(
            f"{main} lists {len(unknown)} image(s) that have no image file, e.g. "
            f"{unknown[0]!r}. Fix the lists, or delete ImageSets/ to split at random."
        )
    if "val" not in lists or set(lists["val"]) & set(lists["train"]):
        rest = [name for name in lists["train"] if name not in lists.get("val", [])]
        rest = [rest[i] for i in rng.permutation(len(rest))]
        cut = max(1, len(rest) // 10)
        lists["val"], lists["train"] = rest[:cut], rest[cut:]
    return lists


def read_voc_folder(path, image_size, seed=0, class_names=None):
    """A Pascal VOC folder, every image resized to ``image_size`` square.

    The folder holds JPEGImages/ (or images/) and Annotations/ (or
    annotations/), one .xml per image; optional ``classes.txt`` (one name a
    line) and ``ImageSets/Main/{train,val,test}.txt``. Returns {"train" | "val"
    | "test": (images, boxes, classes, difficult)} and the class names
    (``classes.txt``, else every name found, sorted). With ``class_names`` (a
    training folder's) every image is one test set and other names are refused.
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise WorkbookError(
            f"no folder at {root}. Give --dataset folder:PATH with a Pascal VOC "
            "folder (JPEGImages/ and Annotations/)."
        )
    image_folder, xml_folder = (
        _voc_subfolder(root, "images"),
        _voc_subfolder(root, "xml"),
    )
    files = {
        f.stem: f
        for f in sorted(image_folder.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    }
    if not files:
        raise WorkbookError(f"{image_folder} holds no .jpg or .png images.")
    test_only = class_names is not None
    if class_names is None and (root / "classes.txt").is_file():
        class_names = (root / "classes.txt").read_text().split()
    records = {}
    for stem, file in files.items():
        xml = xml_folder / f"{stem}.xml"
        if not xml.is_file():
            raise WorkbookError(
                f"the image {file} has no annotation {xml}. Every image needs a VOC "
                ".xml of the same name (an image with no objects needs one without "
                "<object>); add it, or move the image out of the folder."
            )
        try:
            with Image.open(file) as image:
                width, height = image.size
                pixels = image.convert("RGB").resize((image_size, image_size))
        except OSError as error:
            raise WorkbookError(f"cannot read the image {file} ({error}).") from None
        boxes, names, difficult = _read_annotation(xml, width, height, class_names)
        scale = np.array([image_size / width, image_size / height] * 2)
        boxes = np.reshape(boxes, (-1, 4)) * scale
        records[stem] = (np.asarray(pixels) / 255.0, boxes, names, difficult)
    if class_names is None:
        class_names = sorted(
            {name for record in records.values() for name in record[2]}
        )
    if not class_names:
        raise WorkbookError(
            f"{xml_folder} holds no <object> at all: nothing to detect."
        )
    chosen = (
        {"test": sorted(files)}
        if test_only
        else _split_names(root, sorted(files), seed)
    )
    parts = {}
    for part, stems in chosen.items():
        rows = [records[stem] for stem in stems]
        labels = [[class_names.index(name) for name in row[2]] for row in rows]
        parts[part] = _as_part(
            [r[0] for r in rows], [r[1] for r in rows], labels, [r[3] for r in rows]
        )
    return (parts["test"] if test_only else parts), list(class_names)


def load_voc_tfds(image_size, name="voc/2007"):
    """``voc/2007`` (train, validation, test) through tensorflow-datasets, resized;
    the same as :func:`read_voc_folder` returns."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from common.data import load_tfds

    def resize(example):
        image = tf.image.resize(example["image"], (image_size, image_size)) / 255.0
        ymin, xmin, ymax, xmax = tf.unstack(example["objects"]["bbox"], axis=-1)
        boxes = tf.stack([xmin, ymin, xmax, ymax], axis=-1) * image_size
        objects = example["objects"]
        return image, boxes, objects["label"], objects["is_difficult"]

    parts = {}
    for part, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        dataset, info = load_tfds(name, split, as_supervised=False, with_info=True)
        rows = list(tfds.as_numpy(dataset.map(resize)))
        # one label and flag per box; tfds's mock data draws the three lengths
        # independently, so keep the objects that have all three
        count = [min(len(row[1]), len(row[2]), len(row[3])) for row in rows]
        objects = [[row[k][:n] for row, n in zip(rows, count)] for k in (1, 2, 3)]
        parts[part] = _as_part([row[0] for row in rows], *objects)
    return parts, list(info.features["objects"]["label"].names)


def read_dataset(spec, image_size, seed=0, class_names=None):
    """``voc/2007`` or ``folder:PATH``, as {"train" | "val" | "test": (images,
    boxes, classes, difficult)} and the class names.

    With ``class_names`` (a training set's, for ``--test-dataset``) the result is
    the test data only: a folder's every image, or voc/2007's test split.
    """
    if spec == "voc/2007":
        parts, names = load_voc_tfds(image_size)
        return (parts["test"], names) if class_names else (parts, names)
    if spec.startswith("folder:"):
        return read_voc_folder(spec[len("folder:") :], image_size, seed, class_names)
    raise WorkbookError(
        f"unknown dataset {spec!r} for detection. Use shapes (generated), "
        "voc/2007 (tensorflow-datasets) or folder:PATH (Pascal VOC layout)."
    )


def to_splits(parts, class_names, name, test_name, image_size):
    """A ``Splits`` whose ``y`` are {"boxes", "labels"} (float32, as keras-hub's
    detectors take them); the test ``y`` also holds "difficult"."""
    from common.data import Splits

    y = {
        part: {"boxes": p[1], "labels": p[2].astype("float32")}
        for part, p in parts.items()
    }
    y["test"]["difficult"] = parts["test"][3].astype("bool")
    objects = parts["train"][2] >= 0
    source = "generated shapes" if name == "shapes" else name
    source += f"; test: {test_name}" if test_name else ""
    per_class = np.bincount(parts["train"][2][objects], minlength=len(class_names))
    return Splits(
        name=name,
        source=f"{source}, {image_size}x{image_size} px",
        x_train=parts["train"][0],
        y_train=y["train"],
        x_val=parts["val"][0],
        y_val=y["val"],
        x_test=parts["test"][0],
        y_test=y["test"],
        task="detection",
        class_names=list(class_names),
        embedded=name == "shapes",
        notes={
            "objects_per_training_image": round(float(objects.sum(1).mean()), 2),
            "training_objects_per_class": per_class.tolist(),
        },
    )


def truths(y):
    """(boxes, classes, difficult) of a split's ``y``."""
    labels = np.asarray(y["labels"]).astype("int32")
    difficult = y.get("difficult", np.zeros(labels.shape, bool))
    return np.asarray(y["boxes"]), labels, difficult


def stream(images, y, batch_size, seed=None):
    """A batched tf.data pipeline; Keras's fit takes it as is on every backend.

    With ``seed`` (training) it is reshuffled every epoch and half the images,
    drawn anew each epoch, are mirrored left to right with their boxes.
    """
    import tensorflow as tf

    def mirror(element, coin):
        image, target = element
        boxes, width = target["boxes"], tf.cast(tf.shape(image)[1], "float32")
        flipped = tf.stack(
            [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1
        )
        flipped = tf.where(target["labels"][:, None] >= 0, flipped, boxes)
        flip = coin % 2 == 1
        target = {**target, "boxes": tf.where(flip, flipped, boxes)}
        return tf.where(flip, image[:, ::-1], image), target

    data = tf.data.Dataset.from_tensor_slices((images, y))
    if seed is not None:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        data = tf.data.Dataset.zip((data, coins)).map(mirror)
    # equal batches (a shuffled remainder is dropped): see detect
    return data.batch(min(batch_size, len(images)), drop_remainder=True).prefetch(2)


# ----------------------------------------------------------------------------
# 4. Shared by the detectors
# ----------------------------------------------------------------------------
def resnet_encoder(image_size, weights="auto"):
    """keras-hub's ResNet for both detectors: ImageNet ResNet-18 from the
    keras-hub preset when it can be had (``weights`` "auto" or "imagenet"), else a
    small random one (64, 96, 128 filters, one basic block per stage)."""
    import keras_hub

    from common.data import network_reachable

    shape = (image_size, image_size, 3)
    cache = Path.home() / ".cache/kagglehub/models/keras/resnetv1/keras" / PRESET
    if weights != "none" and (cache.is_dir() or network_reachable("www.kaggle.com")):
        print(f"weights: ImageNet {PRESET} backbone (keras-hub preset)")
        return keras_hub.models.ResNetBackbone.from_preset(PRESET, image_shape=shape)
    if weights == "imagenet":
        raise WorkbookError(
            f"--weights imagenet needs the keras-hub preset {PRESET}, which comes "
            "from Kaggle: it is not in ~/.cache/kagglehub and www.kaggle.com does "
            "not answer. Run once with network access, or use --weights none."
        )
    if weights == "auto":
        print(
            "notice: no ImageNet backbone here (offline, preset not cached): the "
            "ResNet starts from RANDOM weights and is trained from scratch"
        )
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 96, 128],
        stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2],
        block_type="basic_block",
        image_shape=shape,
    )


def fit_anchors(splits, generator, candidates=(1, 1.5, 2, 3, 4, 6)):
    """The anchor size (anchor side over the feature map's stride) under which
    most training boxes have an anchor at IoU 0.5 or more; printed with that
    share. ``generator(size)`` makes keras-hub's AnchorGenerator."""
    boxes, classes, _ = truths(splits.y_train)
    boxes = boxes[classes >= 0][:2000]
    image = np.zeros((1, *splits.input_shape), "float32")
    shares = []
    for size in candidates:
        anchors = [
            keras.ops.convert_to_numpy(a) for a in generator(size)(image).values()
        ]
        overlap = box_iou(boxes, np.concatenate(anchors)).max(axis=1)
        shares.append(np.mean(overlap >= 0.5))
    best = int(np.argmax(shares))
    print(
        f"anchors: size {candidates[best]:g} x stride, an anchor at IoU >= 0.5 for "
        f"{shares[best]:.1%} of the training boxes"
    )
    return candidates[best]


def detect(model, images, batch_size=32):
    """A detector's (boxes, scores, classes) as numpy arrays, class -1 for empty
    slots; ``model.predict`` returns keras-hub's dict (boxes, confidence, labels,
    num_detections).

    Batches are all the same size (the last one padded): keras-hub's NMS needs a
    known batch size, which TensorFlow's graphs have only that way.
    """
    import tensorflow as tf

    count, size = len(images), max(1, min(batch_size, len(images)))
    padding = np.zeros((-count % size, *images.shape[1:]), images.dtype)
    data = tf.data.Dataset.from_tensor_slices(np.concatenate([images, padding]))
    output = model.predict(data.batch(size, drop_remainder=True), verbose=0)
    output = {key: np.asarray(value)[:count] for key, value in output.items()}
    kept = np.arange(output["labels"].shape[1]) < output["num_detections"].reshape(
        -1, 1
    )
    classes = np.where(kept, output["labels"], -1).astype("int32")
    return output["boxes"], output["confidence"], classes


def ms_per_image(model, images, batch_size=32, repeats=3):
    """Median wall time of :func:`detect` over ``images``, in ms per image."""
    detect(model, images, batch_size)  # compiles, traces
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detect(model, images, batch_size)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) / max(len(images), 1)


class ValidationMAP(keras.callbacks.Callback):
    """mAP@0.5 on the validation split after every epoch: printed, put in the
    epoch's logs as ``val_map50`` and kept in RUN_DIR/validation_map.json
    (continued on ``--resume``)."""

    def __init__(self, splits, run_path, resumed=False):
        super().__init__()
        self.splits, self.path = splits, Path(run_path) / "validation_map.json"
        self.rows = (
            json.loads(self.path.read_text()) if resumed and self.path.is_file() else []
        )

    def on_epoch_end(self, epoch, logs=None):
        predictions = detect(self.model, self.splits.x_val)
        truth = truths(self.splits.y_val)
        value = evaluate_detections(predictions, truth, self.splits.num_classes)["map"]
        self.rows = [row for row in self.rows if row["epoch"] <= epoch]
        self.rows.append({"epoch": epoch + 1, "val_map50": value})
        self.path.write_text(json.dumps(self.rows))
        print(f"epoch {epoch + 1}: validation mAP@0.5 {value:.4f}")
        if logs is not None:
            logs["val_map50"] = value


# ----------------------------------------------------------------------------
# 5. Plots
# ----------------------------------------------------------------------------
def detection_grid(
    images, predictions, truths, class_names, path, title, threshold=0.5
):
    """Images with their true boxes (dashed white) and the predicted boxes scoring
    at least ``threshold`` (solid, coloured by class, with the score); the
    predictions and truths may cover more images than ``images`` shows."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    columns = 4
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3.0 * columns, 3.2 * rows + 1.0), squeeze=False
    )
    colors = plt.get_cmap("tab10")

    def outline(axis, box, **style):
        corner, sides = box[:2], box[2:] - box[:2]
        axis.add_patch(Rectangle(corner, *sides, fill=False, linewidth=1.5, **style))

    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(images):
            continue
        axis.imshow(np.clip(images[index], 0, 1))
        for box, label in zip(truths[0][index], truths[1][index]):
            if label >= 0:
                outline(axis, box, edgecolor="white", linestyle="--")
        shown = 0
        for box, score, label in zip(*(part[index] for part in predictions)):
            if label < 0 or score < threshold:
                continue
            shown += 1
            color = colors(int(label) % 10)
            outline(axis, box, edgecolor=color)
            axis.text(
                box[0],
                box[1],
                f"{class_names[label]} {score:.2f}",
                color="white",
                fontsize=7,
                va="top",
                clip_on=True,
                bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
            )
        true_count = int(np.sum(truths[1][index] >= 0))
        axis.set_title(f"{true_count} true, {shown} predicted", fontsize=8)
    handles = [
        Line2D([], [], color="black", linestyle="--", label="true box (white, dashed)")
    ]
    handles += [
        Line2D([], [], color=colors(i % 10), label=f"predicted {name}")
        for i, name in enumerate(class_names[:10])
    ]
    figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8
    )
    figure.suptitle(f"{title}\n(predictions with score >= {threshold:g})")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=plots.DPI)
    plt.close(figure)
    return path


def precision_recall_plot(result, class_names, path, title, iou=0.5):
    """One precision-recall curve (its envelope) per class, AP in the legend."""
    series = {}
    for name, (recall, precision), ap in zip(
        class_names, result["curves"], result["ap"]
    ):
        if ap is not None:
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            series[f"{name} (AP {ap:.3f})"] = (
                np.concatenate([[0.0], recall]),
                np.concatenate([[1.0], envelope]),
            )
    return plots.curves(
        series,
        path,
        f"{title}\nprecision-recall on the test set, IoU >= {iou:g} "
        f"(mAP {result['map']:.3f})",
        "recall (share of true boxes found)",
        "precision (share of detections that are right)",
        style="-",
    )


def validation_map_plot(run_path, baseline, title):
    """plots/validation_map.png from RUN_DIR/validation_map.json."""
    rows = json.loads((Path(run_path) / "validation_map.json").read_text())
    epochs, values = [r["epoch"] for r in rows], [r["val_map50"] for r in rows]
    return plots.curves(
        {"validation mAP@0.5": (epochs, values)},
        Path(run_path) / "plots" / "validation_map.png",
        f"{title}: validation mAP per epoch",
        "epoch",
        "mAP at IoU 0.5 (0 to 1)",
        markers=[(baseline, "mean-box baseline (test)")],
    )


def comparison_plot(rows, path, title):
    """``--compare``: mAP and AP per class of every detector as grouped bars on
    one 0-to-1 axis, and their seconds per epoch and ms per image beside it.
    ``rows`` is {detector: {"mAP@0.5": x, "AP <class>": x, ..., "s per epoch":
    x, "ms per image": x}}."""
    import matplotlib.pyplot as plt

    groups = [
        ["mAP@0.5"] + [k for k in next(iter(rows.values())) if k.startswith("AP ")],
        ["s per epoch", "ms per image"],
    ]
    figure, axes = plt.subplots(
        1,
        2,
        figsize=(4 + 0.9 * len(groups[0]), 4.2),
        width_ratios=(len(groups[0]), 2.5),
    )
    width = 0.8 / len(rows)
    for axis, keys in zip(axes, groups):
        for index, (name, row) in enumerate(rows.items()):
            where = np.arange(len(keys)) + (index - (len(rows) - 1) / 2) * width
            bars = axis.bar(
                where, [float(row[k] or 0) for k in keys], width, label=name
            )
            axis.bar_label(bars, fmt="%.3g", fontsize=7)
        axis.set_xticks(np.arange(len(keys)), [k.replace("AP ", "") for k in keys])
        axis.grid(axis="y", alpha=0.3)
        axis.margins(y=0.15)
    axes[0].set(
        ylim=(0, 1.05),
        ylabel="average precision at IoU 0.5 (0 to 1)",
        title="mAP and AP per class (test set)",
    )
    axes[1].set(ylabel="seconds (per epoch) or ms (per image)", title="time")
    axes[0].legend()
    figure.suptitle(title)
    return plots.save(figure, path)
