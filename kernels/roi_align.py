"""ROI-Align: a fixed-size feature grid for every box, by bilinear sampling.

A two-stage detector (Faster R-CNN) crops each proposed box out of a feature map
and resizes the crop to ``pool_size x pool_size`` cells, so that one small head
classifies boxes of any size. ROI-Align (He et al., 2017, "Mask R-CNN") does it
without rounding: each cell averages ``sampling_ratio x sampling_ratio`` points,
each read by bilinear interpolation, so the output moves smoothly with the box.
Conventions are torchvision's ``roi_align(..., aligned=True)``: a box ``(x1, y1,
x2, y2)`` in input pixels maps to ``x * spatial_scale - 0.5`` on the feature map
(pixel centres at integers); a point more than one cell outside the map reads 0,
a point just outside reads the border.

Bilinear weights are separable, and so is the average over a cell's points, so
for one box the whole op is two small matrix products:

    output[p, q, c] = sum_h sum_w  Ay[p, h] * Ax[q, w] * features[h, w, c]

where ``Ay[p, h]`` is the mean over the cell's sample rows ``y`` of the tent
``max(0, 1 - |clip(y, 0, H - 1) - h|)`` (0 when ``y`` is outside [-1, H]), and
``Ax`` likewise for columns. :func:`roi_align` computes it that way and writes
the backward pass by hand. With ``G`` the upstream gradient and
``T = features x Ax`` (summed over columns):

    d features[h, w, c] = sum_{r, p, q} Ay[p, h] Ax[q, w] G[p, q, c]
    d Ay[p, h]          = sum_{q, w, c} G[p, q, c] Ax[q, w] features[h, w, c]
    d Ax[q, w]          = sum_{p, c}    G[p, q, c] T[p, w, c]

and a sample row ``y = y1' + t (y2' - y1')`` (``t`` fixed per sample) moves the
tent by ``d/dy = sign(h - y)`` where it is not clipped, so the box coordinates
get ``d y1 = spatial_scale * sum (1 - t) d y`` and ``d y2 = spatial_scale * sum t
d y``. :func:`reference_roi_align` is the textbook algorithm instead (sample
points, four gathered neighbours each, average), differentiated by Keras.
"""

import functools

import keras
from keras import ops

from kernels._shared import as_tensor as _tensor


def _sample_positions(pool_size, sampling_ratio):
    """Where each sample lies along a box side, as a fraction ``t`` of its length:
    ``(p + (i + 0.5) / sampling_ratio) / pool_size``, shape (pool_size * ratio,)."""
    steps = ops.arange(pool_size * sampling_ratio, dtype="float32")
    return (steps + 0.5) / (pool_size * sampling_ratio)


def _sample_coordinates(boxes, pool_size, sampling_ratio, spatial_scale):
    """Sample rows ``ys`` and columns ``xs`` (batch, rois, pool_size * ratio) on the
    feature map, and the fractions ``t`` they were made from."""
    fractions = ops.cast(_sample_positions(pool_size, sampling_ratio), boxes.dtype)
    start = boxes[..., :2] * spatial_scale - 0.5  # (x1, y1) on the feature map
    end = boxes[..., 2:] * spatial_scale - 0.5
    points = start[..., None] + fractions * (end - start)[..., None]
    return points[..., 1, :], points[..., 0, :], fractions


def _tent(coordinates, size):
    """Bilinear weights of samples on ``size`` grid lines, and their slope.

    Returns (weights, slope), each (..., samples, size): ``weights`` as in the
    module docstring; ``slope`` is d weights / d coordinate.
    """
    lines = ops.arange(size, dtype=coordinates.dtype)
    valid = ops.logical_and(coordinates >= -1.0, coordinates <= size)
    clipped = ops.clip(coordinates, 0.0, size - 1.0)
    distance = clipped[..., None] - lines
    near = ops.abs(distance) < 1.0
    weights = ops.where(
        ops.logical_and(near, valid[..., None]), 1.0 - ops.abs(distance), 0.0
    )
    free = ops.logical_and(
        valid, ops.logical_and(coordinates > 0, coordinates < size - 1)
    )
    slope = ops.where(ops.logical_and(near, free[..., None]), -ops.sign(distance), 0.0)
    return weights, slope


def _cell_average(values, pool_size, sampling_ratio):
    """Mean over each cell's samples: (B, R, P * s, n) -> (B, R, P, n). (A sum
    and a division: Keras 3.15's ``ops.mean`` on torch loses float64 precision.)"""
    shape = ops.shape(values)
    grouped = ops.reshape(
        values, (shape[0], shape[1], pool_size, sampling_ratio, shape[-1])
    )
    return ops.sum(grouped, axis=3) / sampling_ratio


@functools.lru_cache(maxsize=None)
def _roi_align_op(pool_size, sampling_ratio, spatial_scale):
    """The op for one setting: ``keras.ops.custom_gradient`` takes tensors only."""

    @ops.custom_gradient
    def op(features, boxes):
        height, width = features.shape[1], features.shape[2]
        ys, xs, fractions = _sample_coordinates(
            boxes, pool_size, sampling_ratio, spatial_scale
        )
        weights_y, slope_y = _tent(ys, height)
        weights_x, slope_x = _tent(xs, width)
        rows = _cell_average(weights_y, pool_size, sampling_ratio)  # (B, R, P, H)
        columns = _cell_average(weights_x, pool_size, sampling_ratio)  # (B, R, Q, W)
        by_rows = ops.einsum("brph,bhwc->brpwc", rows, features)
        output = ops.einsum("brqw,brpwc->brpqc", columns, by_rows)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream_rows = ops.einsum("brpqc,brqw->brpwc", upstream, columns)
            grad_features = ops.einsum("brph,brpwc->bhwc", rows, upstream_rows)
            grad_rows = ops.einsum("brpwc,bhwc->brph", upstream_rows, features)
            grad_columns = ops.einsum("brpqc,brpwc->brqw", upstream, by_rows)
            grad_boxes = []
            for grad_cells, slope in ((grad_columns, slope_x), (grad_rows, slope_y)):
                # each sample's share of its cell's gradient, moved along the tent
                per_sample = ops.repeat(grad_cells, sampling_ratio, axis=2)
                along = ops.sum(per_sample * slope, axis=-1) / sampling_ratio
                grad_boxes.append(
                    (
                        ops.sum(along * (1.0 - fractions), axis=-1) * spatial_scale,
                        ops.sum(along * fractions, axis=-1) * spatial_scale,
                    )
                )
            (x1, x2), (y1, y2) = grad_boxes
            return grad_features, ops.stack([x1, y1, x2, y2], axis=-1)

        return output, grad

    return op


def _check(features, boxes, pool_size, sampling_ratio, spatial_scale):
    features = _tensor(features)
    boxes = _tensor(boxes, features.dtype)
    if len(features.shape) != 4 or len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ValueError(
            "roi_align needs features (batch, height, width, channels) and boxes "
            f"(batch, rois, 4); got {tuple(features.shape)} and {tuple(boxes.shape)}"
        )
    if features.shape[1] is None or features.shape[2] is None:
        raise ValueError(
            "roi_align needs a feature map of known height and width, got "
            f"{tuple(features.shape)}; give the model's Input a fixed image size"
        )
    if int(pool_size) < 1 or int(sampling_ratio) < 1 or not spatial_scale > 0:
        raise ValueError(
            "pool_size and sampling_ratio must be >= 1 and spatial_scale > 0, got "
            f"{pool_size}, {sampling_ratio}, {spatial_scale}"
        )
    return features, boxes


def roi_align(features, boxes, pool_size=7, sampling_ratio=2, spatial_scale=1.0):
    """ROI-Align with the hand-written gradient (w.r.t. features and boxes).

    Args:
        features: (batch, height, width, channels), channels last.
        boxes: (batch, rois, 4) as ``(x1, y1, x2, y2)`` in input pixels.
        pool_size: output cells per side.
        sampling_ratio: sample points per cell side (torchvision's fixed ratio).
        spatial_scale: feature-map cells per input pixel (1 / stride).

    Returns:
        (batch, rois, pool_size, pool_size, channels).
    """
    features, boxes = _check(features, boxes, pool_size, sampling_ratio, spatial_scale)
    op = _roi_align_op(int(pool_size), int(sampling_ratio), float(spatial_scale))
    return op(features, boxes)


def _gather(features, rows, columns):
    """features[b, rows[b, ...], columns[b, ...]] -> (*rows.shape, channels)."""
    batch, height, width, channels = ops.shape(features)
    flat = ops.reshape(features, (-1, channels))
    offsets = ops.reshape(ops.arange(batch) * (height * width), (-1, 1, 1, 1))
    return ops.take(flat, offsets + rows * width + columns, axis=0)


def reference_roi_align(
    features, boxes, pool_size=7, sampling_ratio=2, spatial_scale=1.0
):
    """ROI-Align as torchvision's C++ loop does it, in keras.ops; Keras
    differentiates it. Same arguments as :func:`roi_align`."""
    features, boxes = _check(features, boxes, pool_size, sampling_ratio, spatial_scale)
    height, width = features.shape[1], features.shape[2]
    ys, xs, _ = _sample_coordinates(boxes, pool_size, sampling_ratio, spatial_scale)
    samples = ys.shape[-1]
    y = ops.repeat(ys[..., :, None], samples, axis=-1)  # (B, R, Sy, Sx)
    x = ops.repeat(xs[..., None, :], samples, axis=-2)
    valid = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y, x = ops.maximum(y, 0.0), ops.maximum(x, 0.0)
    y_low = ops.minimum(ops.floor(y), height - 1.0)
    x_low = ops.minimum(ops.floor(x), width - 1.0)
    y = ops.where(y_low >= height - 1.0, y_low, y)  # the last row: no neighbour
    x = ops.where(x_low >= width - 1.0, x_low, x)
    y_high = ops.minimum(y_low + 1.0, height - 1.0)
    x_high = ops.minimum(x_low + 1.0, width - 1.0)
    low_y, low_x = y - y_low, x - x_low
    value = 0.0
    for row, row_weight in ((y_low, 1.0 - low_y), (y_high, low_y)):
        for column, column_weight in ((x_low, 1.0 - low_x), (x_high, low_x)):
            neighbour = _gather(
                features, ops.cast(row, "int32"), ops.cast(column, "int32")
            )
            value = value + (row_weight * column_weight)[..., None] * neighbour
    value = value * ops.cast(valid, value.dtype)[..., None]
    shape = ops.shape(value)
    cells = ops.reshape(
        value,
        (shape[0], shape[1], pool_size, sampling_ratio, pool_size, sampling_ratio, -1),
    )
    return ops.sum(cells, axis=(3, 5)) / sampling_ratio**2


@keras.saving.register_keras_serializable(package="kernels")
class ROIAlign(keras.layers.Layer):
    """ROI-Align as a layer: ``ROIAlign(...)(features, boxes)``.

    Args:
        pool_size: output cells per side (7 in Faster R-CNN).
        sampling_ratio: sample points per cell side.
        spatial_scale: feature-map cells per input pixel (1 / the map's stride).
        use_reference: use the autodiff reference instead of the hand-written
            gradient.
    """

    def __init__(
        self,
        pool_size=7,
        sampling_ratio=2,
        spatial_scale=1.0,
        use_reference=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.sampling_ratio = int(sampling_ratio)
        self.spatial_scale = float(spatial_scale)
        self.use_reference = bool(use_reference)

    def call(self, features, boxes):
        function = reference_roi_align if self.use_reference else roi_align
        boxes = ops.cast(boxes, features.dtype)
        return function(
            features, boxes, self.pool_size, self.sampling_ratio, self.spatial_scale
        )

    def compute_output_shape(self, features_shape, boxes_shape):
        return (
            features_shape[0],
            boxes_shape[1],
            self.pool_size,
            self.pool_size,
            features_shape[-1],
        )

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "sampling_ratio": self.sampling_ratio,
            "spatial_scale": self.spatial_scale,
            "use_reference": self.use_reference,
        }
