"""Geometric augmentation throughput: our batched warp against the alternatives.

    python -m bench.augment            # about a minute on a 2-core CPU

Measures images/s on random 32x32x3 float32 batches of 128, for the same random
rotation (0.1 of 2 pi), zoom (0.1) and translation (0.1) with reflect fill and
bilinear interpolation:

- ``kernels.warp.RandomAffineWarp``: one batched resampling (ours);
- Keras core ``RandomTranslation`` + ``RandomRotation`` + ``RandomZoom`` chained;
- a plain torch loop: random matrices, ``affine_grid`` + ``grid_sample``;
- keras-cv's RandomTranslation + RandomRotation + RandomZoom, when installed.

Each row is the median over repeats of (images / seconds) for a few batches, after
one warm-up call; the repeats of ours and plain torch alternate, so that load from
other processes hits both alike. The Keras core path loops over the images in
Python (about 50 img/s per layer), so it gets fewer batches. This is a benchmark,
not a test: it prints one table and asserts nothing.
"""

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as torch_functional  # noqa: E402

from kernels.warp import RandomAffineWarp  # noqa: E402

BATCH_SIZE = 128
IMAGE_SHAPE = (32, 32, 3)
ROTATION = 0.1  # fraction of 2 pi
ZOOM = 0.1
TRANSLATION = 0.1  # fraction of the height / width
COMMAND = "python -m bench.augment"


def images_per_second(candidates, batches, repeats):
    """Median images/s of each ``(augment, images)`` candidate, after a warm-up.

    Repeats interleave the candidates, so that a busy machine slows all of them alike.
    """
    for augment, images in candidates:
        augment(images[:8])
    rates = [[] for _ in candidates]
    for _ in range(repeats):
        for rate, (augment, images) in zip(rates, candidates):
            start = time.perf_counter()
            for _ in range(batches):
                augment(images)
            rate.append(batches * len(images) / (time.perf_counter() - start))
    return [statistics.median(rate) for rate in rates]


def ours():
    layer = RandomAffineWarp(
        rotation_factor=ROTATION,
        zoom_height_factor=ZOOM,
        translation_height_factor=TRANSLATION,
        translation_width_factor=TRANSLATION,
        fill_mode="reflect",
        seed=0,
    )
    return lambda images: layer(images, training=True)


def keras_core(module=keras.layers):
    layers = [
        module.RandomTranslation(TRANSLATION, TRANSLATION, fill_mode="reflect", seed=0),
        module.RandomRotation(ROTATION, fill_mode="reflect", seed=1),
        module.RandomZoom(ZOOM, fill_mode="reflect", seed=2),
    ]

    def augment(images):
        for layer in layers:
            images = layer(images, training=True)
        return images

    return augment


def plain_torch():
    """What a torch user writes: random matrices, then affine_grid + grid_sample."""
    generator = torch.Generator().manual_seed(0)

    def augment(images_nchw):
        batch = images_nchw.shape[0]
        random = torch.rand(batch, 4, generator=generator) * 2.0 - 1.0
        angle = random[:, 0] * ROTATION * 2.0 * math.pi
        zoom = 1.0 + random[:, 1] * ZOOM
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack(
            [
                torch.stack([cos, -sin, random[:, 2] * TRANSLATION * 2.0], dim=-1),
                torch.stack([sin, cos, random[:, 3] * TRANSLATION * 2.0], dim=-1),
            ],
            dim=1,
        )
        grid = torch_functional.affine_grid(
            theta, list(images_nchw.shape), align_corners=False
        )
        return torch_functional.grid_sample(
            images_nchw, grid, padding_mode="reflection", align_corners=False
        )

    return augment


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--batches", type=int, default=20, help="batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--keras-batches", type=int, default=1, help="batches per repeat, Keras core"
    )
    parser.add_argument("--keras-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    for name in ("batches", "repeats", "keras_batches", "keras_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    images = rng.random((BATCH_SIZE, *IMAGE_SHAPE), dtype=np.float32)
    backend_images = keras.ops.convert_to_tensor(images)
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    ours_rate, torch_rate = images_per_second(
        [(ours(), backend_images), (plain_torch(), torch_images)],
        args.batches,
        args.repeats,
    )
    (keras_rate,) = images_per_second(
        [(keras_core(), backend_images)], args.keras_batches, args.keras_repeats
    )
    rows = [
        ("kernels.warp.RandomAffineWarp (ours)", ours_rate),
        ("keras.layers RandomTranslation+RandomRotation+RandomZoom", keras_rate),
        ("plain torch affine_grid + grid_sample loop (NCHW)", torch_rate),
    ]
    if importlib.util.find_spec("keras_cv") is None:
        rows.append(("keras-cv RandomTranslation+RandomRotation+RandomZoom", None))
    else:
        import keras_cv

        (keras_cv_rate,) = images_per_second(
            [(keras_core(keras_cv.layers), backend_images)],
            args.keras_batches,
            args.keras_repeats,
        )
        rows.append(
            ("keras-cv RandomTranslation+RandomRotation+RandomZoom", keras_cv_rate)
        )

    load = os.getloadavg()
    print(
        f"Geometric augmentation, {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} "
        f"float32, batch {BATCH_SIZE}, median of repeats"
    )
    print()
    print(f"| {'augmentation':<58} | {'images/s':>13} |")
    print(f"|{'-' * 60}|{'-' * 15}|")
    for name, rate in rows:
        shown = "not installed" if rate is None else f"{rate:,.0f}"
        print(f"| {name:<58} | {shown:>13} |")
    print()
    print(f"ours / keras core:  {ours_rate / keras_rate:,.0f}x   (target >= 100x)")
    print(
        f"ours / plain torch: {ours_rate / torch_rate:.2f}x   "
        f"(target >= {1 / 1.5:.2f}x, i.e. within 1.5x)"
    )
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, load average {load[0]:.1f} (1 min); "
        f"Python {platform.python_version()}, keras {keras.__version__} "
        f"(backend {keras.backend.backend()}), torch {torch.__version__}"
    )
    print(f"command: {COMMAND} {' '.join(argv)}".rstrip())
    return {name: rate for name, rate in rows}


if __name__ == "__main__":
    main()
