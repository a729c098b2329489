"""ResNet50V2 transfer learning: weights, the frozen-backbone model, unfreezing.

Used by lab 4 (``labs/lab4_finetune.py``) and lab 1's ``--arch transfer``.

API
---
``resolve_weights(weights) -> (keras_weights, local_path, notice)``
    Turn a ``--weights`` value into what to build with. ``weights`` is one of

    - ``"imagenet"``: Keras's ImageNet backbone. Available when the file is in the
      Keras cache (``~/.keras/models/`` + :data:`IMAGENET_FILE`, or ``$KERAS_HOME``)
      with the right checksum, or when the download host answers a quick probe
      (Keras's own download retries for minutes offline, so it is never started
      blind). Unavailable -> :class:`WorkbookError` with the remedies.
    - ``"auto"``: ImageNet when available, else random weights and a notice.
    - ``"none"``: random initialisation.
    - a PATH: a backbone-only weights file, i.e. the ``base.weights.h5`` a lab 4 run
      writes (``base.save_weights``), or Keras's
      ``resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5``. A missing or
      non-HDF5 file -> :class:`WorkbookError`. A whole model's weights
      (``model.weights.h5``, ``model.keras``) is refused when it is loaded: its
      head depends on the number of classes, the backbone does not.

    ``keras_weights`` is ``"imagenet"`` or None (what ``ResNet50V2(weights=...)``
    takes); ``local_path`` is the PATH to load afterwards, or None; ``notice`` is one
    line to print.

``build_transfer_model(input_shape, num_classes, weights="auto", dropout=0.2,
name="resnet50v2_transfer", min_size=32, train_base=False) -> (model, base, notice)``
    A functional model::

        Input(input_shape), float32 in [0, 1]
        -> Resizing (only if a side is below min_size; aspect kept)
        -> Concatenate([x, x, x]) (only for 1-channel images: grayscale to RGB)
        -> Rescaling(255) -> ResNetV2Preprocess (resnet_v2.preprocess_input: [-1, 1])
        -> ResNet50V2(include_top=False), called with training=False, frozen
        -> GlobalAveragePooling2D -> Dropout(dropout) -> Dense(num_classes, softmax)

    ``train_base=True`` is training from scratch: the backbone is trainable and is
    called in the normal (training-aware) mode, so its BatchNorm layers learn too.

``unfreeze_top(base, count, unit="layers") -> [names]``
    Make the top ``count`` layers that hold weights (``unit="layers"``; BatchNorm
    layers are not counted) or the top ``count`` residual blocks (``"blocks"``,
    e.g. ``conv5_block3``) trainable; everything below stays frozen and every
    BatchNormalization layer stays frozen (its statistics stay those of the
    pretraining data). Returns the names of the layers made trainable. Recompile
    the model afterwards.

``weighted_layers(base)``, ``residual_blocks(base)``
    What ``unfreeze_top`` counts: layers holding weights (BatchNorm excluded) and
    block names (``conv2_block1`` ... ``conv5_block3``), bottom to top.

``parameter_table(model) -> {"trainable": int, "non_trainable": int, "total": int,
"trainable_layers": int}``
    Parameter counts for a per-phase table. ``non_trainable`` includes frozen
    weights and BatchNorm moving statistics.

Without ImageNet weights (offline, nothing cached), the backbone is random: its
features are weak (small and unnormalised, since the frozen BatchNorm layers hold
their initial statistics), so a head trained on it learns slowly and accuracy is
poor. The notice says so.
"""

import hashlib
import math
import os
import re
from pathlib import Path

import keras

from common.cli import WorkbookError

IMAGENET_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Keras's published MD5 of that file (keras/src/applications/resnet.py).
IMAGENET_MD5 = "fac2f116257151a9d068a22e544a4917"
IMAGENET_HOST = "storage.googleapis.com"
MIN_INPUT_SIZE = 32
BLOCK_PATTERN = re.compile(r"^(conv\d+_block\d+)_")
RANDOM_BACKBONE_NOTICE = (
    "the backbone is RANDOM (not pretrained), so its features are weak and accuracy "
    "is poor in every mode (a head on a frozen random backbone learns slowly): the "
    "run shows the mechanics of transfer learning, not its result"
)

_probe_results = {}


@keras.saving.register_keras_serializable(package="workbook")
class ResNetV2Preprocess(keras.layers.Layer):
    """``keras.applications.resnet_v2.preprocess_input``: pixels in [0, 255] to
    [-1, 1], inside the model so that every caller feeds the same [0, 1] images."""

    def call(self, inputs):
        # preprocess_input divides in place: give it a copy, not our input tensor.
        return keras.applications.resnet_v2.preprocess_input(keras.ops.copy(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape


def imagenet_cache_paths():
    """Where Keras keeps (or would keep) the ImageNet backbone file."""
    homes = [
        os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"),
        "/tmp/.keras",
    ]
    return [Path(home) / "models" / IMAGENET_FILE for home in homes]


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_imagenet_file():
    """The cached ImageNet file if present and intact, else None."""
    for path in imagenet_cache_paths():
        if path.is_file() and _md5(path) == IMAGENET_MD5:
            return path
    return None


def _imagenet_reachable(timeout=3.0):
    """Whether the weights' download host answers; probed once per process."""
    if "imagenet" not in _probe_results:
        from common.data import network_reachable

        _probe_results["imagenet"] = network_reachable(IMAGENET_HOST, timeout)
    return _probe_results["imagenet"]


def resolve_weights(weights):
    """``(keras_weights, local_path, notice)`` for a --weights value; see the module
    docstring."""
    text = str(weights).strip()
    choice = text.lower()
    if choice == "none":
        return (
            None,
            None,
            (f"weights: none (random initialisation): {RANDOM_BACKBONE_NOTICE}."),
        )
    if choice in ("imagenet", "auto"):
        cached = cached_imagenet_file()
        if cached is not None:
            notice = f"weights: ImageNet, from the Keras cache {cached}"
            if cached == imagenet_cache_paths()[0]:
                return "imagenet", None, notice
            return None, str(cached), notice  # a cache Keras itself would not look in
        if _imagenet_reachable():
            return (
                "imagenet",
                None,
                (
                    "weights: ImageNet, downloading the 94 MB backbone file once into "
                    f"{imagenet_cache_paths()[0].parent}."
                ),
            )
        if choice == "imagenet":
            raise WorkbookError(
                "--weights imagenet: the ImageNet weights are not in the Keras cache "
                f"({imagenet_cache_paths()[0]}) and cannot be downloaded (no network). "
                "Either run with --weights none (random backbone: poor accuracy for a "
                "frozen-backbone head), pass --weights PATH with a local weights file "
                "(a lab 4 run's base.weights.h5, or the Keras file "
                f"{IMAGENET_FILE} copied into ~/.keras/models/ from a machine with "
                "network access), or run once with network access."
            )
        return (
            None,
            None,
            (
                "notice: no ImageNet weights here (offline, and not in the Keras cache "
                f"{imagenet_cache_paths()[0].parent}), so --weights auto falls back to "
                f"random weights: {RANDOM_BACKBONE_NOTICE}. Copy {IMAGENET_FILE} into "
                "that folder, or run once online, for real transfer learning."
            ),
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise WorkbookError(
            f"--weights {text}: no such file. Give imagenet, auto, none, or the path "
            "of a backbone weights file, e.g. the base.weights.h5 that a lab 4 run "
            "writes into its run directory."
        )
    import h5py

    try:
        readable = h5py.is_hdf5(path)
    except OSError:
        readable = False
    if not readable:
        raise WorkbookError(
            f"--weights {text}: not a readable HDF5 weights file. Give the "
            "base.weights.h5 that a lab 4 run writes (or --weights none / imagenet)."
        )
    return None, str(path), f"weights: backbone weights from {path}."


def _load_backbone_weights(base, path):
    import warnings

    try:
        with warnings.catch_warnings():  # Keras warns once per layer before failing
            warnings.simplefilter("ignore")
            base.load_weights(path)
    except Exception as error:  # Keras raises ValueError, KeyError, OSError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise WorkbookError(
            f"--weights {path}: the file does not fit ResNet50V2's backbone "
            f"({type(error).__name__}: {first}). --weights PATH takes a backbone "
            "weights file: the base.weights.h5 of a lab 4 run, or Keras's "
            f"{IMAGENET_FILE}; a whole model's model.weights.h5 or model.keras is "
            "not one."
        ) from error


def _build_base(input_shape, keras_weights, local_path):
    base = keras.applications.ResNet50V2(
        include_top=False, weights=keras_weights, input_shape=input_shape
    )
    if local_path is not None:
        _load_backbone_weights(base, local_path)
    return base


def build_transfer_model(
    input_shape,
    num_classes,
    weights="auto",
    dropout=0.2,
    name="resnet50v2_transfer",
    min_size=MIN_INPUT_SIZE,
    train_base=False,
):
    """``(model, base, notice)``: ResNet50V2 backbone plus a new head; see the
    module docstring for the layers."""
    height, width, channels = (int(size) for size in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels, got input_shape {input_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if min_size < MIN_INPUT_SIZE:
        raise ValueError(
            f"ResNet50V2 needs at least {MIN_INPUT_SIZE} pixels a side, "
            f"got min_size={min_size}"
        )
    keras_weights, local_path, notice = resolve_weights(weights)
    inputs = keras.Input(shape=(height, width, channels), name="images")
    x = inputs
    if min(height, width) < min_size:
        scale = min_size / min(height, width)
        height, width = math.ceil(height * scale), math.ceil(width * scale)
        x = keras.layers.Resizing(height, width, name="resize_to_min_size")(x)
    if channels == 1:
        x = keras.layers.Concatenate(axis=-1, name="grayscale_to_rgb")([x, x, x])
    x = keras.layers.Rescaling(255.0, name="to_0_255")(x)
    x = ResNetV2Preprocess(name="resnet_v2_preprocess")(x)
    base_shape = (height, width, 3)
    try:
        base = _build_base(base_shape, keras_weights, local_path)
    except WorkbookError:
        raise
    except Exception as error:  # the ImageNet download failed after the probe
        if keras_weights != "imagenet":
            raise
        if str(weights).strip().lower() == "imagenet":
            raise WorkbookError(
                f"--weights imagenet: downloading the ImageNet weights failed "
                f"({type(error).__name__}: {error}). Retry with network access, or "
                "use --weights none or --weights PATH (a local weights file)."
            ) from error
        base = _build_base(base_shape, None, None)
        notice = (
            f"notice: the ImageNet download failed ({type(error).__name__}), "
            f"so --weights auto uses random weights: {RANDOM_BACKBONE_NOTICE}."
        )
    if train_base:
        base.trainable = True
        x = base(x)
    else:
        base.trainable = False
        x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pooling")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(
        x
    )
    return keras.Model(inputs, outputs, name=name), base, notice


def weighted_layers(base):
    """Layers with weights, bottom to top, BatchNorm excluded."""
    return [
        layer
        for layer in base.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]


def residual_blocks(base):
    """Names of the residual blocks (``conv5_block3``, ...), bottom to top."""
    blocks = []
    for layer in base.layers:
        match = BLOCK_PATTERN.match(layer.name)
        if match and match.group(1) not in blocks:
            blocks.append(match.group(1))
    return blocks


def unfreeze_top(base, count, unit="layers"):
    """Unfreeze the top ``count`` layers or blocks, BatchNorm kept frozen; returns
    the names of the layers made trainable."""
    if unit not in ("layers", "blocks"):
        raise ValueError(f"unit must be 'layers' or 'blocks', got {unit!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a whole number >= 0, got {count!r}")
    weighted = weighted_layers(base)
    if unit == "layers":
        if count > len(weighted):
            raise ValueError(
                f"{base.name} has {len(weighted)} layers with weights "
                f"(BatchNorm not counted); cannot unfreeze {count}"
            )
        chosen = weighted[len(weighted) - count :]
    else:
        blocks = residual_blocks(base)
        if count > len(blocks):
            raise ValueError(
                f"{base.name} has {len(blocks)} residual blocks; cannot "
                f"unfreeze {count}"
            )
        wanted = set(blocks[len(blocks) - count :])
        chosen = [
            layer
            for layer in weighted
            if (match := BLOCK_PATTERN.match(layer.name)) and match.group(1) in wanted
        ]
    chosen_ids = {id(layer) for layer in chosen}
    base.trainable = True
    for layer in base.layers:
        layer.trainable = id(layer) in chosen_ids
    return [layer.name for layer in chosen]


def _count(variables):
    return int(sum(math.prod(variable.shape) for variable in variables))


def _leaf_layers(model):
    for layer in model.layers:
        if getattr(layer, "layers", None):
            yield from _leaf_layers(layer)
        else:
            yield layer


def parameter_table(model):
    """Trainable and non-trainable parameter counts of ``model``."""
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    layers = [layer for layer in _leaf_layers(model) if layer.trainable_weights]
    return {
        "trainable": trainable,
        "non_trainable": non_trainable,
        "total": trainable + non_trainable,
        "trainable_layers": len(layers),
    }
