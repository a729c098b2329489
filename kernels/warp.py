"""A batched random affine warp: rotation, zoom, translation and flips in one pass.

Keras core geometric augmentation (``RandomTranslation``, ``RandomRotation``,
``RandomZoom``) calls ``keras.ops.image.affine_transform``, which on the torch
backend loops over the images in Python: about 50 images/s for 32x32x3 batches on a
2-core CPU. :class:`RandomAffineWarp` draws one affine matrix per image, composes
all four transforms, and resamples the whole batch once:

- torch backend: one batched sampling grid (the job of ``affine_grid``, done as a
  small einsum, several times faster on CPU) and one ``grid_sample`` call;
- other backends: ``keras.ops.image.affine_transform`` (batched on TensorFlow).

Conventions are those of ``keras.ops.image.affine_transform``: a transform is
``[a0, a1, a2, b0, b1, b2, c0, c1]`` and maps an *output* pixel ``(x, y)`` (x the
column, y the row, pixel centres at integers) to the *input* point
``(a0 x + a1 y + a2, b0 x + b1 y + b2)`` that is sampled. Only affine transforms
(``c0 = c1 = 0``) are supported by the fast path.

The random parameters, fill modes and interpolation follow ``keras.layers.RandomFlip``,
``RandomTranslation``, ``RandomRotation`` and ``RandomZoom``, applied in that order,
but resampled once instead of four times (sharper, and border filling happens once).
"""

import math

import keras
from keras import ops

from kernels._shared import standardize_data_format as _standardize_data_format

if keras.backend.backend() == "torch":
    import torch
    import torch.nn.functional as torch_functional

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("nearest", "bilinear")
FLIP_MODES = (None, "horizontal", "vertical", "horizontal_and_vertical")

# grid_sample's padding_mode for each Keras fill_mode ("wrap" pads circularly first).
_TORCH_PADDING = {"constant": "zeros", "nearest": "border", "reflect": "reflection"}


def _check_options(interpolation, fill_mode):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
        )
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")


def affine_transforms(
    height,
    width,
    angle=0.0,
    zoom_height=1.0,
    zoom_width=1.0,
    shift_height=0.0,
    shift_width=0.0,
    flip_horizontal=0.0,
    flip_vertical=0.0,
):
    """Compose per-image flip, translation, rotation and zoom: (batch, 8) transforms.

    All parameters are (batch,) tensors (or floats); the result is what chaining
    ``RandomFlip``, ``RandomTranslation``, ``RandomRotation`` and ``RandomZoom`` would
    apply, as one output-to-input map.

    Args:
        height, width: image size in pixels.
        angle: rotation in radians, counter-clockwise as in ``RandomRotation``.
        zoom_height, zoom_width: zoom factor, > 1 zooms out (``RandomZoom``).
        shift_height, shift_width: translation in pixels, positive moves the content
            down / right (``RandomTranslation``).
        flip_horizontal, flip_vertical: 1 to mirror, 0 not to.

    Every step is "about the image centre c", so the composite map is
    ``input = c + A (output - c) - F t`` with ``A = F R Z`` (2x2).
    """
    parameters = [
        ops.convert_to_tensor(value, dtype="float32")
        for value in (angle, zoom_height, zoom_width, shift_height, shift_width)
    ]
    angle, zoom_height, zoom_width, shift_height, shift_width = parameters
    flip_horizontal = ops.convert_to_tensor(flip_horizontal, dtype="float32")
    flip_vertical = ops.convert_to_tensor(flip_vertical, dtype="float32")
    center_x = (width - 1) / 2.0
    center_y = (height - 1) / 2.0
    sign_x = 1.0 - 2.0 * flip_horizontal
    sign_y = 1.0 - 2.0 * flip_vertical
    cos, sin = ops.cos(angle), ops.sin(angle)
    a0 = sign_x * cos * zoom_width
    a1 = -sign_x * sin * zoom_height
    b0 = sign_y * sin * zoom_width
    b1 = sign_y * cos * zoom_height
    a2 = center_x - a0 * center_x - a1 * center_y - sign_x * shift_width
    b2 = center_y - b0 * center_x - b1 * center_y - sign_y * shift_height
    rows = [a0, a1, a2, b0, b1, b2]
    batch_shape = ops.shape(a0 + a1 + a2 + b0 + b1 + b2)
    rows = [ops.broadcast_to(row, batch_shape) for row in rows]
    zeros = ops.zeros_like(rows[0])
    return ops.stack([*rows, zeros, zeros], axis=-1)


def _batch_transforms(images, transforms):
    """Transforms as float32 (batch, 8); a single transform applies to every image."""
    transforms = ops.convert_to_tensor(transforms, dtype="float32")
    if len(images.shape) == 4:
        batch_size = ops.shape(images)[0]
        transforms = ops.broadcast_to(ops.reshape(transforms, (-1, 8)), (batch_size, 8))
    return transforms


def reference_warp(
    images,
    transforms,
    interpolation="bilinear",
    fill_mode="constant",
    fill_value=0.0,
    data_format=None,
):
    """``keras.ops.image.affine_transform``: the per-image reference.

    Same arguments as :func:`warp`.
    """
    _check_options(interpolation, fill_mode)
    images = ops.convert_to_tensor(images)
    # Copy: the torch implementation edits the transform tensor in place.
    transforms = ops.copy(_batch_transforms(images, transforms))
    return ops.image.affine_transform(
        images,
        transforms,
        interpolation=interpolation,
        fill_mode=fill_mode,
        fill_value=fill_value,
        data_format=data_format,
    )


def _torch_warp(images, transforms, interpolation, fill_mode, fill_value, data_format):
    """Batched warp with one grid computation and one grid_sample call."""
    if transforms.ndim == 1:
        transforms = transforms.unsqueeze(0)
    if bool(torch.any(transforms[:, 6:] != 0)):
        raise ValueError(
            "the torch fast path supports affine transforms only (c0=c1=0)"
        )
    if data_format == "channels_last":
        images = images.permute(0, 3, 1, 2)  # a view: grid_sample reads any strides
    height, width = images.shape[-2:]
    options = {"dtype": images.dtype, "device": images.device}

    # Sampling points in input pixels for every output pixel (x, y, 1): one small
    # matrix product. (torch's affine_grid does the same with a bmm of inner size 3,
    # which is several times slower on CPU.)
    pixel_grid = torch.stack(
        torch.meshgrid(
            torch.arange(width, **options),
            torch.arange(height, **options),
            indexing="xy",
        )
        + (torch.ones(height, width, **options),),
        dim=-1,
    )
    matrices = transforms[:, :6].reshape(-1, 2, 3).to(**options)
    size = torch.tensor([width, height], **options)

    if fill_mode == "wrap":
        # Wrap the points into the image, and pad it by one pixel circularly so that
        # bilinear interpolation between the last and the first pixel works.
        points = torch.einsum("hwk,bjk->bhwj", pixel_grid, matrices)
        points = torch.remainder(points, size) + 1.0
        images = torch_functional.pad(images, (1, 1, 1, 1), mode="circular")
        grid = (2.0 * points + 1.0) / (size + 2.0) - 1.0
        padding_mode = "border"
    else:
        # grid_sample's coordinates with align_corners=False: -1 and 1 are the outer
        # edges of the border pixels, so pixel x sits at (2 x + 1) / width - 1.
        # That map is affine too: fold it into the matrices.
        offset = torch.zeros(2, 3, **options)
        offset[:, 2] = 1.0 / size - 1.0
        matrices = matrices * (2.0 / size)[:, None] + offset
        grid = torch.einsum("hwk,bjk->bhwj", pixel_grid, matrices)
        padding_mode = _TORCH_PADDING[fill_mode]

    # grid_sample fills with 0: sample (image - v) and add v back to fill with v.
    shift = fill_value if fill_mode == "constant" else 0.0
    output = torch_functional.grid_sample(
        images - shift if shift else images,
        grid,
        mode=interpolation,
        padding_mode=padding_mode,
        align_corners=False,
    )
    if shift:
        output = output + shift
    if data_format == "channels_last":
        output = output.permute(0, 2, 3, 1)
    return output


def warp(
    images,
    transforms,
    interpolation="bilinear",
    fill_mode="constant",
    fill_value=0.0,
    data_format=None,
):
    """Warp a batch of images, each by its own affine transform, in one batched call.

    Args:
        images: (batch, height, width, channels) or one (height, width, channels)
            image; channels first if ``data_format="channels_first"``.
        transforms: (batch, 8), as in ``keras.ops.image.affine_transform``; or one
            (8,) transform for every image.
        interpolation: "bilinear" or "nearest".
        fill_mode: "constant", "reflect", "wrap" or "nearest", filling points
            outside the image as ``keras.ops.image.affine_transform`` does.
        fill_value: the value outside the image when ``fill_mode="constant"``.
        data_format: "channels_last" or "channels_first" (default: Keras config).

    Returns:
        the warped images; integer images come back as float32 on torch.
    """
    _check_options(interpolation, fill_mode)
    data_format = _standardize_data_format(data_format)
    if keras.backend.backend() != "torch":
        return reference_warp(
            images, transforms, interpolation, fill_mode, fill_value, data_format
        )
    images = ops.convert_to_tensor(images)
    if not keras.backend.is_float_dtype(images.dtype):
        images = ops.cast(images, "float32")
    transforms = _batch_transforms(images, transforms)
    unbatched = images.ndim == 3
    if unbatched:
        images = images.unsqueeze(0)
    output = _torch_warp(
        images, transforms, interpolation, fill_mode, float(fill_value), data_format
    )
    return output.squeeze(0) if unbatched else output


def _factor_range(factor, name, minus_one_allowed=True):
    """(lower, upper) from a float or a pair, as Keras preprocessing layers do."""
    if isinstance(factor, (tuple, list)) and len(factor) == 2:
        lower, upper = sorted(float(value) for value in factor)
    elif isinstance(factor, (int, float)):
        lower, upper = -abs(float(factor)), abs(float(factor))
    else:
        raise ValueError(f"{name} must be a float or a pair, got {factor!r}")
    if lower < -1.0 or upper > 1.0 or (lower == -1.0 and not minus_one_allowed):
        interval = "[-1, 1]" if minus_one_allowed else "(-1, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {factor!r}")
    return lower, upper


@keras.saving.register_keras_serializable(package="kernels")
class RandomAffineWarp(keras.layers.Layer):
    """Random rotation, zoom, translation and flip of a batch, resampled once.

    Active only in training (``training=True``, the default when called directly,
    and inside ``fit``); at inference it returns its input unchanged. Each image of
    the batch gets its own random transform, drawn from a ``SeedGenerator(seed)``.

    Args:
        rotation_factor: as ``RandomRotation(factor)``: a fraction of 2 pi, a float
            ``f`` for ``[-f, f]`` or a pair ``(lower, upper)``.
        zoom_height_factor: as ``RandomZoom(height_factor)``: the zoom is
            ``1 + U(lower, upper)``; positive zooms out. In (-1, 1].
        zoom_width_factor: as ``RandomZoom(width_factor)``; None keeps the aspect
            ratio (the width uses the height's zoom).
        translation_height_factor, translation_width_factor: as
            ``RandomTranslation``: a fraction of the height / width, in [-1, 1].
        flip_mode: None, "horizontal", "vertical" or "horizontal_and_vertical",
            each flip with probability 1/2, as ``RandomFlip(mode)``.
        fill_mode: "reflect" (default), "wrap", "constant" or "nearest".
        interpolation: "bilinear" (default) or "nearest".
        fill_value: the value outside the image when ``fill_mode="constant"``.
        seed: integer seed of the layer's ``keras.random.SeedGenerator``.
        data_format: "channels_last" or "channels_first" (default: Keras config).
    """

    def __init__(
        self,
        rotation_factor=0.0,
        zoom_height_factor=0.0,
        zoom_width_factor=None,
        translation_height_factor=0.0,
        translation_width_factor=0.0,
        flip_mode=None,
        fill_mode="reflect",
        interpolation="bilinear",
        fill_value=0.0,
        seed=None,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rotation_range = _factor_range(rotation_factor, "rotation_factor")
        self.zoom_height_range = _factor_range(
            zoom_height_factor, "zoom_height_factor", minus_one_allowed=False
        )
        self.zoom_width_range = (
            None
            if zoom_width_factor is None
            else _factor_range(
                zoom_width_factor, "zoom_width_factor", minus_one_allowed=False
            )
        )
        self.translation_height_range = _factor_range(
            translation_height_factor, "translation_height_factor"
        )
        self.translation_width_range = _factor_range(
            translation_width_factor, "translation_width_factor"
        )
        if flip_mode not in FLIP_MODES:
            raise ValueError(
                f"flip_mode must be one of {FLIP_MODES}, got {flip_mode!r}"
            )
        _check_options(interpolation, fill_mode)
        self.rotation_factor = rotation_factor
        self.zoom_height_factor = zoom_height_factor
        self.zoom_width_factor = zoom_width_factor
        self.translation_height_factor = translation_height_factor
        self.translation_width_factor = translation_width_factor
        self.flip_mode = flip_mode
        self.fill_mode = fill_mode
        self.interpolation = interpolation
        self.fill_value = float(fill_value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.data_format = _standardize_data_format(data_format)
        self.supports_jit = False

    def random_transforms(self, batch_size, height, width):
        """Draw (batch_size, 8) transforms from the layer's seed generator."""
        uniform = keras.random.uniform(
            (batch_size, 7), dtype="float32", seed=self.seed_generator
        )

        def between(column, value_range):
            lower, upper = value_range
            return lower + (upper - lower) * uniform[:, column]

        zoom_height = 1.0 + between(1, self.zoom_height_range)
        zoom_width = (
            zoom_height
            if self.zoom_width_range is None
            else 1.0 + between(2, self.zoom_width_range)
        )
        flip_horizontal = self.flip_mode in ("horizontal", "horizontal_and_vertical")
        flip_vertical = self.flip_mode in ("vertical", "horizontal_and_vertical")
        no_flip = ops.zeros_like(uniform[:, 5])
        return affine_transforms(
            height,
            width,
            angle=between(0, self.rotation_range) * (2.0 * math.pi),
            zoom_height=zoom_height,
            zoom_width=zoom_width,
            shift_height=between(3, self.translation_height_range) * height,
            shift_width=between(4, self.translation_width_range) * width,
            flip_horizontal=(
                ops.cast(uniform[:, 5] < 0.5, "float32") if flip_horizontal else no_flip
            ),
            flip_vertical=(
                ops.cast(uniform[:, 6] < 0.5, "float32") if flip_vertical else no_flip
            ),
        )

    def call(self, inputs, training=True):
        if not training:
            return inputs
        images = ops.convert_to_tensor(inputs)
        if not keras.backend.is_float_dtype(images.dtype):
            images = ops.cast(images, self.compute_dtype)
        unbatched = len(images.shape) == 3
        if unbatched:
            images = ops.expand_dims(images, 0)
        shape = ops.shape(images)
        if self.data_format == "channels_last":
            height, width = images.shape[1], images.shape[2]
        else:
            height, width = images.shape[2], images.shape[3]
        if height is None or width is None:
            raise ValueError(
                f"image height and width must be known, got {images.shape}"
            )
        transforms = self.random_transforms(shape[0], height, width)
        outputs = warp(
            images,
            transforms,
            interpolation=self.interpolation,
            fill_mode=self.fill_mode,
            fill_value=self.fill_value,
            data_format=self.data_format,
        )
        return ops.squeeze(outputs, 0) if unbatched else outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rotation_factor": self.rotation_factor,
            "zoom_height_factor": self.zoom_height_factor,
            "zoom_width_factor": self.zoom_width_factor,
            "translation_height_factor": self.translation_height_factor,
            "translation_width_factor": self.translation_width_factor,
            "flip_mode": self.flip_mode,
            "fill_mode": self.fill_mode,
            "interpolation": self.interpolation,
            "fill_value": self.fill_value,
            "seed": self.seed,
            "data_format": self.data_format,
        }
