"""Lab 8: object detection, one stage against two: RetinaNet vs Faster R-CNN by mAP.

    python -m labs.lab8_detection                        # RetinaNet, generated shapes
    python -m labs.lab8_detection --arch faster-rcnn     # the two-stage detector
    python -m labs.lab8_detection --compare              # both, on the same data
    python -m labs.lab8_detection --dataset folder:.data/raccoon   # Pascal VOC layout
    python -m labs.lab8_detection --dataset voc/2007     # tensorflow-datasets

What it teaches: how a detector turns a feature map into boxes. Both share a
small ResNet (ImageNet weights from a keras-hub preset when reachable), anchors of
3 sizes x 3 shapes per cell, mirrored training images and a cosine schedule.
RetinaNet (keras-hub) is one stage: a feature pyramid, a focal-loss classifier and
a box regressor on every anchor, then non-max suppression. Faster R-CNN, written
here, is two: a region proposal network scores anchors as object or not, the best
proposals are cut out of the feature map with ROI-Align (kernels/roi_align.py,
hand-written gradient) and a second head classifies and refines each. Both are
scored the Pascal VOC way, AP per class at IoU 0.5 and their mean (mAP), against
a detector that puts each class's mean box on every image. Both detectors train,
evaluate and save on PyTorch (default), TensorFlow and JAX (the tests run both on
each). Measured results: the README's results table (lab 8 rows).
"""

import json
import sys

import keras
import numpy as np
from keras import ops

from common import cli, detection, experiment
from common.detection import decode, encode, gather_rows, masked_mean, match, smooth_l1
from kernels.roi_align import ROIAlign

HYPERPARAMETERS = {
    "epochs": 20,  # maximum; EarlyStopping on the validation loss
    "batch_size": 16,  # images per step
    "learning_rate": 1e-3,  # Adam's first step size; a cosine takes it to 5 %
    "patience": 5,  # epochs without val_loss improvement before stopping
    "train_images": 1200,  # generated set; 200 more each for validation and test
    "image_size": None,  # pixels per side: 64 for shapes, 128 for photographs
    "proposals": 64,  # Faster R-CNN: RPN proposals per image kept after NMS
}
EVAL_IMAGES = 200  # generated validation and test images
ASPECT_RATIOS = [0.5, 1.0, 2.0]
FPN_WIDTH = 64  # Faster R-CNN: channels of its feature pyramid and RPN
PRE_NMS = 300  # Faster R-CNN: best-scoring anchors that go into the proposal NMS
SCORE_THRESHOLD = 0.05  # detections scoring less are dropped (VOC keeps the rest)


# ----------------------------------------------------------------------------
# Data: images, and y = {"boxes": (N, M, 4) xyxy pixels, "labels": (N, M)}
# ----------------------------------------------------------------------------
def load_data(args):
    size, seed = args.image_size, args.seed
    if args.dataset == "shapes":
        train = LAB.quick_sizes["train"] if args.quick else args.train_images
        evaluation = LAB.quick_sizes["val"] if args.quick else EVAL_IMAGES
        parts = detection.shapes_parts(train, evaluation, size, seed)
        names = list(detection.SHAPE_CLASSES)
    else:
        parts, names = detection.read_dataset(args.dataset, size, seed)
    if args.test_dataset:  # every image of it
        parts["test"] = detection.read_dataset(args.test_dataset, size, seed, names)[0]
    splits = detection.to_splits(parts, names, args.dataset, args.test_dataset, size)
    return splits  # --quick: the runner takes a seeded subset


# ----------------------------------------------------------------------------
# Builders: a shared ResNet, RetinaNet from keras-hub, Faster R-CNN written here
# ----------------------------------------------------------------------------
def anchor_generator(size):  # 3 sizes x 3 shapes per cell of the stride-8 and 16
    from keras_hub.layers import AnchorGenerator  # maps (12-19 and 24-38 px at 1.5)

    return AnchorGenerator("xyxy", 3, 4, 3, ASPECT_RATIOS, size)


def suppression(from_logits, overlap, confidence, count):  # NMS: at most count
    from keras_hub.layers import NonMaxSuppression  # boxes, none overlapping more

    return NonMaxSuppression("xyxy", from_logits, overlap, confidence, count)


def build_retinanet(args, splits):
    """keras-hub's RetinaNet on the ResNet's stride-8 and stride-16 maps."""
    import keras_hub

    encoder = detection.resnet_encoder(args.image_size, args.weights)
    backbone = keras_hub.models.RetinaNetBackbone(
        encoder, 3, 4, use_p5=False, image_shape=encoder.image_shape
    )
    # An anchor learns a box it overlaps by 0.5 (background below 0.4), as in the
    # paper: a box no anchor overlaps that much is never learnt (keras-hub's
    # option to force a match breaks on padded boxes). Faster R-CNN forces one.
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone,
        splits.num_classes,
        bounding_box_format="xyxy",
        anchor_generator=anchor_generator(args.anchor_size),
        pre_logits_num_conv_layers=1,
        prediction_decoder=suppression(True, 0.5, SCORE_THRESHOLD, 100),
        name="retinanet",
    )
    # keras-hub 0.32 starts the box head, not the class head, at the focal-loss
    # prior (every anchor 1 % likely an object): put it where the paper does.
    for head, prior in ((model.classification_head, 0.01), (model.box_head, 0.5)):
        bias = head.prediction_layer.bias
        bias.assign(ops.full(bias.shape, -np.log((1 - prior) / prior)))
    # the box loss as detectron2's: smooth L1 (beta 0.1) summed over the four
    # deltas; Keras's Huber(0.1) averages them and is 0.1 times as steep
    model.compile(
        optimizer=optimizer(args, splits),
        box_loss=keras.losses.Huber(0.1, reduction="sum"),
        loss_weights={"bbox_regression": 40.0, "cls_logits": 1.0},
    )
    return model


@keras.saving.register_keras_serializable(package="workbook")
class FasterRCNN(keras.Model):
    """Faster R-CNN (Ren et al., 2015) with a two-level feature pyramid.

    ``call`` gives the stride-8 features and the RPN's outputs, and outside
    training the detections (boxes, confidence, labels, num_detections, as
    keras-hub's detectors); ``compute_loss`` adds the second stage on proposals
    and true boxes, matched, ROI-Aligned and classified.
    """

    LOSSES = ("rpn_objectness_loss", "rpn_box_loss", "roi_class_loss", "roi_box_loss")

    def __init__(self, encoder, num_classes, proposals=64, anchor_size=1.5, **kwargs):
        super().__init__(**{"name": "faster_rcnn", **kwargs})
        if isinstance(encoder, dict):
            encoder = keras.layers.deserialize(encoder)
        self.encoder_config = keras.layers.serialize(encoder)
        self.num_classes, self.proposals, width = num_classes, proposals, FPN_WIDTH
        self.image_size = encoder.image_shape[0]
        self.pyramid = keras.Model(
            encoder.inputs, [encoder.pyramid_outputs[f"P{i}"] for i in (3, 4)]
        )
        conv = keras.layers.Conv2D
        self.lateral = [conv(width, 1, name=f"lateral{i}") for i in (3, 4)]
        self.smooth = [conv(width, 3, padding="same", name=f"out{i}") for i in (3, 4)]
        self.upsample = keras.layers.UpSampling2D(2)
        self.anchors = anchor_generator(anchor_size)
        per_cell = self.anchors.num_base_anchors
        self.rpn_hidden = conv(width, 3, padding="same", activation="relu")
        self.rpn_objectness = conv(per_cell, 1, name="rpn_objectness")
        self.rpn_deltas = conv(4 * per_cell, 1, name="rpn_deltas")
        self.roi_align = ROIAlign(7, 2, spatial_scale=1 / 8)
        self.head = [keras.layers.Dense(256, activation="relu") for _ in range(2)]
        self.class_logits = keras.layers.Dense(num_classes + 1, name="class_logits")
        self.box_deltas = keras.layers.Dense(4, name="box_deltas")
        self.proposal_nms = suppression(True, 0.7, 0.0, proposals)
        self.detection_nms = suppression(False, 0.5, SCORE_THRESHOLD, 100)
        self.trackers = [keras.metrics.Mean(name=name) for name in self.LOSSES]
        self.build((None, self.image_size, self.image_size, 3))

    def build(self, input_shape):
        if not self.built:  # creates every weight, the second stage's too
            self.call(ops.zeros((1, *input_shape[1:])), training=False)
        self.built = True

    def call(self, images, training=None):
        level3, level4 = self.pyramid(images, training=training)
        level4 = self.lateral[1](level4)
        level3 = self.lateral[0](level3) + self.upsample(level4)
        features = self.smooth[0](level3)
        logits, deltas = [], []
        for level in (features, self.smooth[1](level4)):
            hidden = self.rpn_hidden(level)
            count = level.shape[1] * level.shape[2] * self.anchors.num_base_anchors
            logits.append(ops.reshape(self.rpn_objectness(hidden), (-1, count)))
            deltas.append(ops.reshape(self.rpn_deltas(hidden), (-1, count, 4)))
        outputs = {
            "features": features,
            "rpn_logits": ops.concatenate(logits, axis=1),
            "rpn_deltas": ops.concatenate(deltas, axis=1),
        }
        if training:  # compute_loss runs the second stage, on the true boxes too
            return outputs
        rois = self.propose(self.anchor_boxes(images), outputs)
        logits, deltas = self.second_stage(features, rois)
        scores = ops.softmax(logits)[..., 1:] * ops.cast(
            ops.max(rois, axis=-1, keepdims=True) > 0, "float32"
        )
        boxes = decode(rois, deltas, self.image_size)
        return {**outputs, **self.detection_nms(boxes, scores)}

    def anchor_boxes(self, images):
        return ops.concatenate(list(self.anchors(images).values()), axis=0)

    def propose(self, anchors, outputs):
        """The RPN's best boxes after NMS, (B, proposals, 4); -1 rows are empty."""
        scores, index = ops.top_k(outputs["rpn_logits"], min(PRE_NMS, anchors.shape[0]))
        boxes = decode(anchors, outputs["rpn_deltas"], self.image_size)
        boxes = ops.take_along_axis(boxes, index[..., None], axis=1)
        chosen = self.proposal_nms(boxes, scores[..., None])
        return ops.stop_gradient(ops.cast(chosen["boxes"], "float32"))

    def second_stage(self, features, rois):
        crops = self.roi_align(features, rois)
        hidden = ops.reshape(crops, (-1, rois.shape[1], int(np.prod(crops.shape[2:]))))
        for layer in self.head:
            hidden = layer(hidden)
        return self.class_logits(hidden), self.box_deltas(hidden)

    def compute_loss(self, x, y, y_pred, sample_weight=None, training=True):
        anchors = self.anchor_boxes(x)
        truth_boxes = ops.cast(y["boxes"], "float32")
        truth_labels = ops.cast(y["labels"], "int32")
        valid = truth_labels >= 0
        # Stage 1: an anchor is an object if it overlaps a true box by 0.6, or is
        # some true box's best anchor; background below 0.3; the rest is ignored.
        iou, matched, best = match(anchors, truth_boxes, valid)
        best_for_truth = ops.max(iou, axis=1, keepdims=True)
        forced = ops.any((iou >= best_for_truth - 1e-6) & (best_for_truth > 0), -1)
        positive = (best >= 0.6) | forced
        negative = (best < 0.3) & ~positive
        objectness = ops.binary_crossentropy(
            ops.cast(positive, "float32"), y_pred["rpn_logits"], from_logits=True
        )
        background = masked_mean(objectness, negative)
        losses = [0.5 * masked_mean(objectness, positive) + 0.5 * background]
        targets = encode(anchors, gather_rows(truth_boxes, matched, valid.shape[1]))
        losses.append(masked_mean(smooth_l1(y_pred["rpn_deltas"] - targets), positive))
        # Stage 2 on the proposals plus the true boxes: a region is its best true
        # box's class when they overlap by 0.5, background otherwise.
        rois = ops.concatenate([self.propose(anchors, y_pred), truth_boxes], axis=1)
        roi_valid = ops.max(rois, axis=-1) > 0
        _, matched, best = match(rois, truth_boxes, valid)
        foreground = best >= 0.5
        labels = ops.take_along_axis(truth_labels, matched, axis=1) + 1
        logits, deltas = self.second_stage(y_pred["features"], rois)
        classes = ops.sparse_categorical_crossentropy(
            ops.where(foreground, labels, 0), logits, from_logits=True
        )
        losses.append(masked_mean(classes, roi_valid))
        targets = encode(rois, gather_rows(truth_boxes, matched, valid.shape[1]))
        losses.append(masked_mean(smooth_l1(deltas - targets), foreground & roi_valid))
        for tracker, value in zip(self.trackers, losses):
            tracker.update_state(value)
        return losses[0] + losses[1] + losses[2] + losses[3]

    def predict_step(self, *args):  # the detections only (JAX passes state first)
        outputs = super().predict_step(*args)
        keys = ("boxes", "confidence", "labels", "num_detections")
        if isinstance(outputs, tuple):
            return {key: outputs[0][key] for key in keys}, outputs[1]
        return {key: outputs[key] for key in keys}

    def get_config(self):
        return {
            "name": self.name,
            "encoder": self.encoder_config,
            "num_classes": self.num_classes,
            "proposals": self.proposals,
            "anchor_size": self.anchors.anchor_size,
        }


def build_faster_rcnn(args, splits):
    encoder = detection.resnet_encoder(args.image_size, args.weights)
    model = FasterRCNN(encoder, splits.num_classes, args.proposals, args.anchor_size)
    model.compile(optimizer=optimizer(args, splits))  # compute_loss has the losses
    return model


ARCHITECTURES = {"retinanet": build_retinanet, "faster-rcnn": build_faster_rcnn}


def optimizer(args, splits):
    steps = args.epochs * -(-len(splits.x_train) // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps, 0.05)
    return keras.optimizers.Adam(schedule, clipnorm=10.0)


def build_model(args, splits):
    # keras-hub's fit turns arrays into a pipeline that never shuffles: give each
    # detector its own tf.data pipeline, reshuffled every epoch
    batch, seed = args.batch_size, args.seed
    splits.train = detection.stream(splits.x_train, splits.y_train, batch, seed)
    splits.validation = detection.stream(splits.x_val, splits.y_val, batch)
    # anchors sized (1 to 6 x stride) to suit the most training boxes
    args.anchor_size = detection.fit_anchors(splits, anchor_generator)
    return ARCHITECTURES[args.arch](args, splits)


# ----------------------------------------------------------------------------
# Evaluation: detections, VOC mAP, plots
# ----------------------------------------------------------------------------
def fit_kwargs(args, splits, run):
    # the tf.data pipeline shuffles itself (see stream); Keras would only warn
    callback = detection.ValidationMAP(splits, run.path, run.resumed)
    return {"callbacks": [callback], "shuffle": False}


def evaluate(model, splits, run, args):
    names, label = splits.class_names, title(args)
    test, train = detection.truths(splits.y_test), detection.truths(splits.y_train)
    predictions = detection.detect(model, splits.x_test)
    result = detection.evaluate_detections(predictions, test, len(names))
    guess = detection.mean_box_baseline(train[0], train[1], len(test[0]), len(names))
    baseline = detection.evaluate_detections(guess, test, len(names))["map"]
    history = json.loads((run.path / "history.json").read_text())
    figures = {
        "map50": result["map"],
        **{detection.ap_key(name): ap for name, ap in zip(names, result["ap"])},
        "mean_box_map50": baseline,
        "seconds_per_epoch": float(np.mean([row["epoch_seconds"] for row in history])),
        "inference_ms_per_image": detection.ms_per_image(model, splits.x_test[:64]),
        "test_images": len(test[0]),
        "anchor_size": args.anchor_size,
    }
    path = run.path / "detections.npz"
    detection.save_detections(path, predictions, test, names)
    path = run.plots / "test_detections.png"
    shown = splits.x_test[:12]  # and their predicted and true boxes
    detection.detection_grid(shown, predictions, test, names, path, f"{label}: test")
    detection.precision_recall_plot(
        result, names, run.plots / "precision_recall.png", label
    )
    detection.validation_map_plot(run.path, baseline, label)
    run.add_section(
        "Average precision per class (test set)", detection.ap_table(result, names)
    )
    return figures


def conclude(results, run, args):
    """After ``--compare``: mAP, AP per class, size and speed side by side."""
    done = {k: m for k, m in results.items() if m.get("status") in experiment.FINISHED}
    if not done:
        return {}
    classes = [key for key in next(iter(done.values())) if key.startswith("ap50_")]
    keys = {"mAP@0.5": "map50", **{f"AP {key[5:]}": key for key in classes[:8]}}
    keys.update(
        {"s per epoch": "seconds_per_epoch", "ms per image": "inference_ms_per_image"}
    )
    rows = {name: {c: m.get(k) for c, k in keys.items()} for name, m in done.items()}
    table = [
        {"detector": n, **r, "parameters": done[n]["params"]} for n, r in rows.items()
    ]
    section = experiment.markdown_table(table)
    run.add_section("Detectors side by side (test set)", section)
    path = run.plots / "comparison_ap.png"
    detection.comparison_plot(rows, path, f"Lab 8 on {args.dataset}: detectors")
    return {}


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument(
        "--weights",
        choices=("auto", "imagenet", "none"),
        default="auto",
        help="backbone: ImageNet ResNet-18 (keras-hub preset, from Kaggle) or a "
        "small random ResNet; auto uses ImageNet when it can be had",
    )
    parser.add_argument(
        "--image-size",
        type=cli.positive_int,
        default=None,
        help="pixels per side, a multiple of 16 (default 64 for shapes, else 128)",
    )
    parser.add_argument(
        "--train-images",
        type=cli.positive_int,
        default=HYPERPARAMETERS["train_images"],
        help="shapes: generated training images",
    )
    parser.add_argument(
        "--proposals",
        type=cli.positive_int,
        default=HYPERPARAMETERS["proposals"],
        help="faster-rcnn: region proposals per image after NMS",
    )


def check_arguments(args, parser):
    if args.image_size is None:
        args.image_size = 64 if args.dataset == "shapes" else 128
    if args.image_size % 16 or args.image_size < 32:
        parser.error(
            f"--image-size {args.image_size}: give a multiple of 16 of at least 32 "
            "(the feature pyramid halves the image four times)"
        )
    if args.test_dataset and not args.test_dataset.startswith("folder:"):
        parser.error("--test-dataset takes folder:PATH (a Pascal VOC folder)")


def title(args):
    return f"Lab 8 {args.arch} on {args.dataset}"


def summary(metrics):
    return (
        f"test mAP@0.5 {metrics['map50']:.4f} (mean-box baseline "
        f"{metrics['mean_box_map50']:.4f}), {metrics['seconds_per_epoch']:.0f} s an "
        f"epoch, {metrics['inference_ms_per_image']:.1f} ms an image"
    )


LAB = experiment.Lab(
    name="lab8_detection",
    description="Lab 8: object detection, RetinaNet vs Faster R-CNN, by mAP@0.5.",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="retinanet",
    datasets="shapes (generated, default), voc/2007 (tfds), folder:PATH (Pascal VOC)",
    default_dataset="shapes",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    headline=("map50", "max"),
    fit_kwargs=fit_kwargs,
    summary=summary,
    conclude=conclude,
    title=title,
    quick_sizes={"train": 64, "val": 16, "test": 16},
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
