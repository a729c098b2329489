"""Figures for the lead: Sobel edge maps on digits, and RandomAffineWarp examples."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
import matplotlib

matplotlib.use("Agg")
import keras
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits, load_sample_images

from kernels.conv import SobelEdges
from kernels.warp import RandomAffineWarp

# Sobel on digits -------------------------------------------------------------
digits = load_digits()
picks = [np.flatnonzero(digits.target == d)[0] for d in range(6)]
small = digits.images[picks][..., None].astype("float32") / 16.0
framed = np.pad(small, ((0, 0), (1, 1), (1, 1), (0, 0)))  # strokes touch the 8x8 border
large = keras.ops.convert_to_numpy(
    keras.ops.image.resize(framed, (40, 40), interpolation="bilinear")
)
derivatives = keras.ops.convert_to_numpy(SobelEdges(output_mode="xy")(large))
magnitude = keras.ops.convert_to_numpy(SobelEdges()(large))
rows = [
    ("input (8x8, framed, resized 40x40)", large[..., 0], "gray", (0, 1)),
    ("Sobel x: d/dx (vertical edges)", derivatives[..., 0], "RdBu_r", None),
    ("Sobel y: d/dy (horizontal edges)", derivatives[..., 1], "RdBu_r", None),
    ("magnitude √(gx² + gy²)", magnitude[..., 0], "magma", None),
]
fig, axes = plt.subplots(4, 6, figsize=(12, 8.6), constrained_layout=True)
for row, (label, data, cmap, limits) in enumerate(rows):
    if limits is None:
        bound = np.abs(data).max()
        limits = (-bound, bound) if cmap == "RdBu_r" else (0, bound)
    for column in range(6):
        ax = axes[row, column]
        image = ax.imshow(data[column], cmap=cmap, vmin=limits[0], vmax=limits[1])
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
            ax.set_title(f"digit {digits.target[picks[column]]}")
        if column == 0:
            ax.set_ylabel(label, fontsize=9)
    fig.colorbar(image, ax=axes[row, :], shrink=0.9, label="intensity (a.u.)")
fig.suptitle(
    "kernels.conv.SobelEdges on scikit-learn digits "
    "(fixed 3x3 Sobel kernels, zero 'same' padding)"
)
fig.savefig("docs/kernels_sobel.png", dpi=110)
plt.close(fig)

# Warp examples ---------------------------------------------------------------
photos = load_sample_images().images
photo = keras.ops.convert_to_numpy(
    keras.ops.image.resize(np.stack(photos).astype("float32") / 255.0, (96, 128))
)
digit = keras.ops.convert_to_numpy(keras.ops.image.resize(framed[3:4], (96, 96)))
digit = np.repeat(digit, 3, axis=-1)
options = dict(
    rotation_factor=0.1,
    zoom_height_factor=0.2,
    translation_height_factor=0.1,
    translation_width_factor=0.1,
    flip_mode="horizontal",
)
settings = [
    ("china.jpg\nfill_mode='reflect'", photo[0], dict(fill_mode="reflect")),
    (
        "flower.jpg\nfill_mode='constant'\nfill_value=1",
        photo[1],
        dict(fill_mode="constant", fill_value=1.0),
    ),
    ("china.jpg\nfill_mode='wrap'", photo[0], dict(fill_mode="wrap")),
    (
        "digit 3 (framed)\nfill_mode='nearest'\ninterpolation='nearest'",
        digit[0],
        dict(fill_mode="nearest", interpolation="nearest"),
    ),
]
count = 6
fig, axes = plt.subplots(
    len(settings), count + 1, figsize=(14, 8.8), constrained_layout=True
)
for row, (label, image, extra) in enumerate(settings):
    layer = RandomAffineWarp(**options, **extra, seed=row)
    batch = np.repeat(image[None], count, axis=0)
    warped = np.clip(keras.ops.convert_to_numpy(layer(batch, training=True)), 0, 1)
    for column in range(count + 1):
        ax = axes[row, column]
        ax.imshow(image if column == 0 else warped[column - 1])
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
            ax.set_title("original" if column == 0 else f"random warp {column}")
        if column == 0:
            ax.set_ylabel(label, fontsize=9)
fig.suptitle(
    "kernels.warp.RandomAffineWarp(rotation_factor=0.1, zoom_height_factor=0.2, "
    "translation_*_factor=0.1, flip_mode='horizontal'): one batched resampling per row"
)
fig.savefig("docs/kernels_warp.png", dpi=110)
plt.close(fig)
print("written docs/kernels_sobel.png, docs/kernels_warp.png")
