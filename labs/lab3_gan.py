"""Lab 3: generative adversarial networks -- vanilla (MLP), DCGAN and WGAN-GP.

    python -m labs.lab3_gan                          # vanilla GAN, 8-Gaussian ring
    python -m labs.lab3_gan --arch wgan-gp           # WGAN-GP on the ring
    python -m labs.lab3_gan --arch dcgan             # DCGAN on embedded digits
    python -m labs.lab3_gan --arch wgan-gp --dataset digits
    python -m labs.lab3_gan --compare                # all three on digits
    python -m labs.lab3_gan --compare --dataset ring # mlp vs wgan-gp on the ring

What it teaches: how a GAN is trained with Keras's own ``fit``: one ``keras.Model``
subclass holds a generator and a discriminator (a critic for WGAN-GP), each built
with the functional API, and overrides ``train_step`` as in the keras-io guide
"Customizing what happens in fit() with PyTorch". Students compare three designs
on the same data: the non-saturating loss with dense networks (``mlp``), the
convolutional DCGAN (``dcgan``) and the Wasserstein loss with a gradient penalty
and several critic updates per generator update (``wgan-gp``), and see mode
collapse on the ring rather than read about it.

How it is built: the tensor math is ``keras.ops``; the only backend-specific code
is :func:`value_and_gradients` (PyTorch autograd), which also takes the gradient
penalty's gradient of the critic with respect to its inputs with
``create_graph=True``, so that the penalty itself can be differentiated. Another
backend is one new version of that function. Each network is updated only by its
own optimizer with gradients of its own weights (``torch.autograd.grad``, not
``backward()``, so nothing accumulates in the other network's ``.grad``). Both
learning rates decay (cosine) over the run, which lets the generator settle into
sharp modes. Training goes through the workbook's ``common.training.fit``: the
GAN's validation "loss" is a distance between generated and held-out real data
(see below), so the shared EarlyStopping keeps the best epoch by sample quality;
by default it never stops early (``--patience`` turns that on), because GAN
quality is noisy from epoch to epoch. ``--resume RUN_DIR`` continues an
interrupted run (both networks and both optimizers are checkpointed each epoch).

Data (``--dataset``):

- ``ring`` (default for mlp and wgan-gp): 8 Gaussians (std 0.02) on a circle of
  radius 2, the classic mode-collapse test; dense 2-D networks for every arch.
- ``digits`` (default for dcgan): scikit-learn's 8x8 digits, upsampled to 16x16
  and scaled to [-1, 1]. ``mnist``, ``fashion_mnist`` (and ``cifar10``, npz:,
  folder:) through tensorflow-datasets / ``common.data.load_images``.
- DCGAN is convolutional, so it needs images: ``--arch dcgan`` defaults to
  ``digits`` and refuses ``--dataset ring`` with a clear message.

Quality metrics (numbers, not only pictures), every epoch on the validation split
and once at the end on the test split:

- ring: ``modes_covered`` (of 8; a mode counts when at least 2 % of the samples
  fall within 3 standard deviations of it), ``high_quality_share`` (samples
  within 3 std of some mode) and ``mode_distance`` (total-variation distance
  between where generated and real points fall: near each mode or off all of
  them; 0 = same, 1 = disjoint). ``val_loss`` is the mode distance.
- images: ``frechet_distance``, a Frechet distance between Gaussians fitted to
  the 32 penultimate-layer features of a small classifier CNN trained here on the
  same dataset. It is NOT the Inception FID: its values are comparable only
  between runs that share this classifier (``--compare`` does; so do two runs
  with the same dataset and seed). ``classifier_confidence`` is that classifier's
  mean top-class probability on generated images. ``val_loss`` is the Frechet
  distance; ``frechet_distance_real`` is the distance between two real samples
  of the same size, the floor a perfect generator would reach.

Outputs (run directory): plots/samples.png (final samples; over the real density
on the ring), plots/progress.png and plots/progress.gif (samples from fixed noise
as training goes), samples/epoch_NNN.png (every ``--snapshot-every`` epochs),
plots/learning_curves.png (generator and discriminator losses; for WGAN-GP also
the penalty, the critic's gradient norm at interpolates and the Wasserstein
estimate), plots/quality.png (metric per epoch), metrics.json, model.keras (the
generator: ``keras.saving.load_model(path)`` then ``predict`` on
``keras.random.normal((n, latent_dim))``).

Measured with the defaults (seed 0; 2-core x86 CPU, one torch thread, see
TORCH_THREADS; torch 2.13 CPU, Keras 3.15.1). The ring rows ran at load average
1-3 before ``common.speedups`` (dense layers only: the fixes do not touch them);
the digits rows at load ~1 with it.
The runs are deterministic: ``--compare`` gives the same figures. "train" is the
``fit`` call; "total" the whole command, imports and figures included.

| command (python -m labs.lab3_gan ...) | result (test split)          | train / total |
|---------------------------------------|------------------------------|---------------|
| (mlp on ring)                         | 6 of 8 modes, high-quality   | 39 s / 55 s   |
|                                       | share 0.34, mode dist. 0.65  |               |
| --arch wgan-gp (ring)                 | 8 of 8 modes, high-quality   | 229 s / 250 s |
|                                       | share 0.72, mode dist. 0.27  | (171 s CPU)   |
| --arch dcgan (digits, 16x16)          | FD 178.6 -> 12.3 (best epoch | 58 s / 76 s   |
|                                       | 21 of 40), confidence 0.79   |               |
| --arch wgan-gp --dataset digits       | FD 178.6 -> 11.9 (best epoch | 126 s / 146 s |
|                                       | 22 of 30), confidence 0.78   |               |
| --compare (digits)                    | FD mlp 34.8, dcgan 12.3,     | 24 / 50 / 127 |
|                                       | wgan-gp 11.9                 | s / 226 s     |

On digits the classifier CNN reaches test accuracy 0.975, its confidence on real
test images is 0.95 and the distance between two real samples (the floor) is
1.9. With ``--quick``, mlp, wgan-gp and dcgan took 23, 26 and 23 s in all (load
3), most of it importing Keras and drawing figures. Under a load average of
7-9 (others' jobs on the same 2 cores) the same runs took 3-4x longer (wgan-gp on
the ring: 740 s of training).
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import ops
from matplotlib.patches import Circle

from common import cli, plots
from common.data import load_images, make_ring, ring_modes
from common.runs import Run, atomic_write_text, seed_everything
from common.training import fit

LAB = "lab3_gan"

# One dict per (arch, kind of data). Units: epochs = passes over the training
# split; batch_size = real samples per train step; learning_rate = initial Adam
# step size of both networks, decayed (cosine) to final_learning_rate x itself by
# the last step; latent_dim = generator input size; width = units per dense layer
# or filters of the first conv layer; depth = dense hidden layers; critic_steps =
# discriminator updates per generator update; penalty_weight = lambda of the
# gradient penalty (1 on the ring: the WGAN-GP paper's toy code uses 0.1, which
# covered all 8 modes later here; 10 on images, as in the paper). On the ring, mlp
# and wgan-gp share networks and learning rates: only the loss and the critic
# steps differ.
HYPERPARAMETERS = {
    ("mlp", "ring"): dict(
        epochs=50, batch_size=256, learning_rate=1e-3, final_learning_rate=0.05,
        beta_1=0.5, beta_2=0.9, latent_dim=8, width=128, depth=3, critic_steps=1,
        penalty_weight=0.0),
    ("wgan-gp", "ring"): dict(
        epochs=50, batch_size=256, learning_rate=1e-3, final_learning_rate=0.05,
        beta_1=0.5, beta_2=0.9, latent_dim=8, width=128, depth=3, critic_steps=5,
        penalty_weight=1.0),
    ("mlp", "images"): dict(
        epochs=40, batch_size=64, learning_rate=5e-4, final_learning_rate=0.1,
        beta_1=0.5, beta_2=0.999, latent_dim=32, width=256, depth=2,
        critic_steps=1, penalty_weight=0.0),
    ("dcgan", "images"): dict(
        epochs=40, batch_size=64, learning_rate=1e-3, final_learning_rate=0.1,
        beta_1=0.5, beta_2=0.999, latent_dim=32, width=32, depth=2,
        critic_steps=1, penalty_weight=0.0),
    ("wgan-gp", "images"): dict(
        epochs=30, batch_size=64, learning_rate=5e-4, final_learning_rate=0.1,
        beta_1=0.5, beta_2=0.9, latent_dim=32, width=32, depth=2, critic_steps=3,
        penalty_weight=10.0),
}
RING = dict(
    num_modes=8, radius=2.0, std=0.02,  # data units
    sizes=(8192, 2048, 10000),  # train, validation, test points
    quick_sizes=(1024, 512, 1024),
    min_mode_share=0.02,  # share of samples within 3 std for a mode to count
)
CLASSIFIER = dict(epochs=12, quick_epochs=2, batch_size=64, learning_rate=2e-3,
                  feature_dim=32)
QUICK_EPOCHS = 2
# Intra-op threads for torch. The networks are tiny, so a second thread buys
# little, and on a shared 2-core machine (load 2-8) the default 2 threads made the
# same runs 2-4x slower and burnt 4x the CPU. A user's OMP_NUM_THREADS wins.
TORCH_THREADS = 1
SNAPSHOT_SAMPLES = {"ring": 1000, "images": 64}


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------
@dataclass
class GanData:
    """Three splits of 2-D points (``kind="ring"``) or images in [-1, 1]."""

    name: str
    kind: str
    x_train: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    class_names: list
    summary: dict = field(default_factory=dict)

    @property
    def sample_shape(self):
        return tuple(self.x_train.shape[1:])


def _gan_image_size(height, width):
    """16x16 for tiny images (digits), else the next multiple of 4 (two 2x steps)."""
    if max(height, width) <= 8:
        return 16, 16
    return 4 * math.ceil(height / 4), 4 * math.ceil(width / 4)


def _to_gan_range(images, size):
    if images.shape[1:3] != size:
        images = ops.convert_to_numpy(
            ops.image.resize(images, size, interpolation="bilinear"))
    return (np.clip(images, 0.0, 1.0) * 2.0 - 1.0).astype("float32")


def load_data(name, seed, quick):
    """The ring (generated from ``seed``) or an image set scaled to [-1, 1]."""
    if name == "ring":
        sizes = RING["quick_sizes"] if quick else RING["sizes"]
        splits = [make_ring(count, seed + offset, RING["num_modes"],
                            RING["radius"], RING["std"])
                  for offset, count in enumerate(sizes)]
        (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
        summary = {"name": "ring", "source": "generated (common.data.make_ring)",
                   "num_modes": RING["num_modes"], "radius": RING["radius"],
                   "std": RING["std"], "num_train": len(x_train),
                   "num_val": len(x_val), "num_test": len(x_test)}
        return GanData("ring", "ring", x_train, x_val, x_test, y_train, y_val,
                       y_test, [f"mode {k}" for k in range(RING["num_modes"])],
                       summary)
    folder_size = 32 if name.startswith("folder:") else None  # folders: 32x32
    images = load_images(name, seed=seed, quick=quick, image_size=folder_size)
    if len(images.x_train) < 32:
        raise cli.WorkbookError(
            f"the dataset {name!r} has {len(images.x_train)} training images; a GAN "
            "needs at least a few hundred. Use --dataset digits.")
    size = _gan_image_size(*images.input_shape[:2])
    if max(size) > 64:
        raise cli.WorkbookError(
            f"the images of {name!r} are {size[0]}x{size[1]} pixels, too large for "
            "this lab's small CPU GANs (at most 64x64). Resize them, or use "
            "--dataset digits, mnist or fashion_mnist.")
    summary = images.describe()
    summary.update({"gan_image_shape": [*size, images.input_shape[2]],
                    "pixel_range": "[-1, 1]"})
    return GanData(name, "images", _to_gan_range(images.x_train, size),
                   _to_gan_range(images.x_val, size),
                   _to_gan_range(images.x_test, size), images.y_train,
                   images.y_val, images.y_test, images.class_names, summary)


# ----------------------------------------------------------------------------
# Networks (functional API)
# ----------------------------------------------------------------------------
def build_mlp_generator(latent_dim, output_shape, width=128, depth=3,
                        name="generator"):
    """Dense layers from noise to a point (linear output) or an image (tanh)."""
    noise = keras.Input((latent_dim,), name="noise")
    x = noise
    for index in range(depth):
        x = keras.layers.Dense(width, activation="relu",
                               name=f"dense_{index + 1}")(x)
    size = int(np.prod(output_shape))
    if len(output_shape) == 1:
        outputs = keras.layers.Dense(size, name="point")(x)
    else:
        x = keras.layers.Dense(size, activation="tanh", name="pixels")(x)
        outputs = keras.layers.Reshape(output_shape, name="image")(x)
    return keras.Model(noise, outputs, name=name)


def build_mlp_discriminator(input_shape, width=128, depth=3,
                            name="discriminator"):
    """Dense layers to one unbounded score (a logit, or a critic's value)."""
    inputs = keras.Input(input_shape, name="sample")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 \
        else inputs
    for index in range(depth):  # LeakyReLU (slope 0.2) fused into Dense: faster
        x = keras.layers.Dense(width, activation="leaky_relu",
                               name=f"dense_{index + 1}")(x)
    outputs = keras.layers.Dense(1, name="score")(x)
    return keras.Model(inputs, outputs, name=name)


def build_dcgan_generator(latent_dim, image_shape, width=32, name="generator"):
    """Noise -> (H/4, W/4) feature map -> two stride-2 transposed convolutions."""
    height, width_pixels, channels = image_shape
    noise = keras.Input((latent_dim,), name="noise")
    x = keras.layers.Dense((height // 4) * (width_pixels // 4) * 2 * width,
                           use_bias=False, name="project")(noise)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.ReLU(name="project_relu")(x)
    x = keras.layers.Reshape((height // 4, width_pixels // 4, 2 * width),
                             name="reshape")(x)
    x = keras.layers.Conv2DTranspose(width, 4, strides=2, padding="same",
                                     use_bias=False, name="up_1")(x)
    x = keras.layers.BatchNormalization(name="up_1_bn")(x)
    x = keras.layers.ReLU(name="up_1_relu")(x)
    outputs = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same",
                                           activation="tanh", name="up_2")(x)
    return keras.Model(noise, outputs, name=name)


def build_dcgan_discriminator(image_shape, width=32, normalization="batch",
                              name="discriminator"):
    """Two stride-2 convolutions with LeakyReLU, then one score.

    ``normalization`` is "batch" for DCGAN and None for a WGAN-GP critic: the
    gradient penalty is taken per sample, and BatchNorm mixes samples.
    """
    inputs = keras.Input(image_shape, name="image")
    x = keras.layers.Conv2D(width, 4, strides=2, padding="same",
                            name="down_1")(inputs)
    x = keras.layers.LeakyReLU(0.2, name="down_1_leaky_relu")(x)
    x = keras.layers.Conv2D(2 * width, 4, strides=2, padding="same",
                            use_bias=normalization is None, name="down_2")(x)
    if normalization == "batch":
        x = keras.layers.BatchNormalization(name="down_2_bn")(x)
    x = keras.layers.LeakyReLU(0.2, name="down_2_leaky_relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(1, name="score")(x)
    return keras.Model(inputs, outputs, name=name)


def build_feature_classifier(image_shape, num_classes, feature_dim=32,
                             name="feature_classifier"):
    """A small CNN whose penultimate layer ("features") is the FD feature space."""
    inputs = keras.Input(image_shape, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                            name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                            name="conv_2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(feature_dim, activation="relu", name="features")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax",
                                 name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def build_mlp(data, hyper):
    generator = build_mlp_generator(hyper["latent_dim"], data.sample_shape,
                                    hyper["width"], hyper["depth"])
    discriminator = build_mlp_discriminator(data.sample_shape, hyper["width"],
                                            hyper["depth"])
    return generator, discriminator, "non_saturating"


def build_dcgan(data, hyper):
    generator = build_dcgan_generator(hyper["latent_dim"], data.sample_shape,
                                      hyper["width"])
    discriminator = build_dcgan_discriminator(data.sample_shape, hyper["width"])
    return generator, discriminator, "non_saturating"


def build_wgan_gp(data, hyper):
    if data.kind == "ring":
        generator = build_mlp_generator(hyper["latent_dim"], data.sample_shape,
                                        hyper["width"], hyper["depth"])
        critic = build_mlp_discriminator(data.sample_shape, hyper["width"],
                                         hyper["depth"], name="critic")
    else:
        generator = build_dcgan_generator(hyper["latent_dim"], data.sample_shape,
                                          hyper["width"])
        critic = build_dcgan_discriminator(data.sample_shape, hyper["width"],
                                           normalization=None, name="critic")
    return generator, critic, "wasserstein"


ARCHITECTURES = {"mlp": build_mlp, "dcgan": build_dcgan, "wgan-gp": build_wgan_gp}


# ----------------------------------------------------------------------------
# The one backend-specific piece: gradients
# ----------------------------------------------------------------------------
def value_and_gradients(function, sources, create_graph=False):
    """Call ``function()`` and differentiate its scalar output w.r.t. ``sources``.

    ``function`` returns a scalar tensor, or a tuple whose first item is the
    scalar (the rest is passed back untouched, e.g. terms to log). ``sources`` are
    Keras variables (weights) or tensors (the penalty's interpolated inputs).
    With ``create_graph=True`` the gradients are themselves differentiable: the
    gradient penalty needs that. Returns ``(output, gradients)``.

    This is the lab's only PyTorch-specific code. On TensorFlow the same function
    would run ``function()`` under ``tf.GradientTape()`` (watching ``sources``)
    and return ``tape.gradient(...)``; nested tapes give the second order.
    """
    if keras.backend.backend() != "torch":
        raise cli.WorkbookError(
            f"lab3_gan takes gradients with PyTorch, but Keras runs on the "
            f"{keras.backend.backend()!r} backend. Run with KERAS_BACKEND=torch "
            "(the workbook default), or add a value_and_gradients for that backend.")
    import torch

    tensors = [source.value if isinstance(source, keras.Variable) else source
               for source in sources]
    for tensor in tensors:
        if not tensor.requires_grad:  # an input such as the interpolates
            tensor.requires_grad_(True)
    output = function()
    value = output[0] if isinstance(output, tuple) else output
    gradients = torch.autograd.grad(value, tensors, create_graph=create_graph,
                                    allow_unused=True)
    return output, [torch.zeros_like(tensor) if gradient is None else gradient
                    for tensor, gradient in zip(tensors, gradients)]


# ----------------------------------------------------------------------------
# Quality metrics
# ----------------------------------------------------------------------------
class ModeHistogram(keras.metrics.Metric):
    """Where real and generated points fall: within 3 std of which mode, or none.

    ``summary()`` gives modes_covered, high_quality_share and mode_distance (the
    total-variation distance between the real and generated histograms over the
    modes plus "off every mode"); ``result()`` is the mode distance.
    """

    def __init__(self, modes, std, min_share=0.02, name="mode_histogram",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.modes = np.asarray(modes, dtype="float32")
        self.std = float(std)
        self.min_share = float(min_share)
        bins = len(self.modes) + 1
        self.real_counts = self.add_variable(shape=(bins,), initializer="zeros",
                                             name="real_counts")
        self.fake_counts = self.add_variable(shape=(bins,), initializer="zeros",
                                             name="fake_counts")

    def histogram(self, points):
        points = ops.cast(points, "float32")
        offsets = points[:, None, :] - ops.convert_to_tensor(self.modes)[None]
        distances = ops.sqrt(ops.sum(ops.square(offsets), axis=-1))
        near = ops.min(distances, axis=1) <= 3.0 * self.std
        bins = ops.where(near, ops.argmin(distances, axis=1), len(self.modes))
        return ops.sum(ops.one_hot(bins, len(self.modes) + 1), axis=0)

    def update_state(self, real, fake, sample_weight=None):
        self.real_counts.assign_add(self.histogram(real))
        self.fake_counts.assign_add(self.histogram(fake))

    def shares(self, counts):
        return counts / ops.maximum(ops.sum(counts), 1.0)

    def result(self):
        real, fake = self.shares(self.real_counts), self.shares(self.fake_counts)
        return 0.5 * ops.sum(ops.abs(real - fake))

    def summary(self):
        fake = self.shares(self.fake_counts)[:-1]
        return {
            "modes_covered": ops.sum(ops.cast(fake >= self.min_share, "float32")),
            "high_quality_share": ops.sum(fake),
            "mode_distance": self.result(),
        }


def frechet_distance(mean_a, covariance_a, mean_b, covariance_b):
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)), in keras.ops.

    tr((C_a C_b)^(1/2)) is the sum of the square roots of the eigenvalues of the
    symmetric matrix C_a^(1/2) C_b C_a^(1/2), so ``eigh`` is all it needs.
    """
    mean_a, mean_b = ops.cast(mean_a, "float64"), ops.cast(mean_b, "float64")
    covariance_a = ops.cast(covariance_a, "float64")
    covariance_b = ops.cast(covariance_b, "float64")
    values, vectors = ops.eigh(covariance_a)
    root_a = ops.matmul(vectors * ops.sqrt(ops.maximum(values, 0.0)),
                        ops.transpose(vectors))
    middle = ops.matmul(ops.matmul(root_a, covariance_b), root_a)
    middle_values, _ = ops.eigh(0.5 * (middle + ops.transpose(middle)))
    trace_root = ops.sum(ops.sqrt(ops.maximum(middle_values, 0.0)))
    return (ops.sum(ops.square(mean_a - mean_b)) + ops.trace(covariance_a)
            + ops.trace(covariance_b) - 2.0 * trace_root)


class FrechetDistance(keras.metrics.Metric):
    """Running means and covariances of real and generated features; ``result()``
    is the Frechet distance between the two Gaussians they define."""

    def __init__(self, feature_dim, name="frechet_distance", **kwargs):
        super().__init__(name=name, **kwargs)
        self.feature_dim = int(feature_dim)
        shape = (2, self.feature_dim)
        self.sums = self.add_variable(shape=shape, initializer="zeros",
                                      name="sums", dtype="float64")
        self.products = self.add_variable(shape=(2, *shape[1:], self.feature_dim),
                                          initializer="zeros", name="products",
                                          dtype="float64")
        self.counts = self.add_variable(shape=(2,), initializer="zeros",
                                        name="counts", dtype="float64")

    def update_state(self, real_features, fake_features, sample_weight=None):
        sums, products, counts = [], [], []
        for features in (real_features, fake_features):
            features = ops.cast(features, "float64")
            sums.append(ops.sum(features, axis=0))
            products.append(ops.matmul(ops.transpose(features), features))
            counts.append(ops.cast(ops.shape(features)[0], "float64"))
        self.sums.assign_add(ops.stack(sums))
        self.products.assign_add(ops.stack(products))
        self.counts.assign_add(ops.stack(counts))

    def statistics(self, index):
        count = ops.maximum(self.counts[index], 2.0)
        mean = self.sums[index] / count
        covariance = (self.products[index] / count - ops.outer(mean, mean)) * (
            count / (count - 1.0))
        return mean, covariance

    def result(self):
        return frechet_distance(*self.statistics(0), *self.statistics(1))


# ----------------------------------------------------------------------------
# The GAN: one train_step for all three architectures
# ----------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=LAB)
class GAN(keras.Model):
    """A generator and a discriminator trained together by ``fit``.

    ``loss`` is "non_saturating" (mlp, dcgan: binary cross-entropy on logits; the
    generator maximises log D(G(z))) or "wasserstein" (wgan-gp: the critic
    maximises E[D(real)] - E[D(fake)] - penalty_weight * E[(|grad D(x_hat)| -
    1)^2] at random interpolates x_hat, with ``critic_steps`` critic updates per
    generator update, each on the same real batch and fresh noise as in keras-io's
    WGAN-GP example). Exactly one of ``ring_modes`` (2-D points) and
    ``feature_extractor`` (images: a model giving [features, probabilities])
    chooses the quality metrics that ``evaluate`` reports; its "loss" is the
    distance between generated and real data (the mode distance or the Frechet
    distance), which is what model selection minimises.
    """

    def __init__(self, generator, discriminator, loss="non_saturating",
                 critic_steps=1, penalty_weight=0.0, ring_modes=None, ring_std=0.02,
                 min_mode_share=0.02, feature_extractor=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        if loss not in ("non_saturating", "wasserstein"):
            raise ValueError(
                f"loss must be non_saturating or wasserstein, got {loss!r}")
        if (ring_modes is None) == (feature_extractor is None):
            raise ValueError("give exactly one of ring_modes and feature_extractor")
        self.generator = generator
        self.discriminator = discriminator
        self.loss_kind = loss
        self.critic_steps = int(critic_steps)
        self.penalty_weight = float(penalty_weight)
        self.latent_dim = int(generator.input_shape[-1])
        self.ring_modes = None if ring_modes is None else np.asarray(
            ring_modes, "float32").tolist()
        self.ring_std = float(ring_std)
        self.min_mode_share = float(min_mode_share)
        self.feature_extractor = feature_extractor
        self.batch_normalized = any(
            isinstance(layer, keras.layers.BatchNormalization)
            for layer in discriminator.layers)
        self.seed = int(seed)
        self.noise_seed = keras.random.SeedGenerator(seed)
        self.evaluation_seed = keras.random.SeedGenerator(seed + 1)
        self.cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True)
        names = ["discriminator_loss", "generator_loss"]
        if loss == "wasserstein":
            names += ["wasserstein_estimate", "gradient_penalty", "gradient_norm"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        if feature_extractor is not None:
            feature_extractor.trainable = False
            feature_dim = int(feature_extractor.outputs[0].shape[-1])
            self.quality = FrechetDistance(feature_dim)
            self.confidence = keras.metrics.Mean(name="classifier_confidence")
        else:
            self.quality = ModeHistogram(ring_modes, ring_std, min_mode_share)
        self.built = True

    def call(self, noise, training=False):
        return self.generator(noise, training=training)

    def compile(self, generator_optimizer, discriminator_optimizer):
        # The generator's optimizer is the model's, so the history logs its rate.
        super().compile(optimizer=generator_optimizer)
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        generator_optimizer.build(self.generator.trainable_variables)
        discriminator_optimizer.build(self.discriminator.trainable_variables)

    def noise(self, count, seed=None):
        return keras.random.normal((count, self.latent_dim),
                                   seed=seed or self.noise_seed)

    # -- training ------------------------------------------------------------
    def discriminator_scores(self, *batches):
        """Scores for each batch from one call on their concatenation; one call
        per batch when the discriminator has BatchNormalization, whose batch
        statistics must not mix real and generated samples."""
        if self.batch_normalized:
            return [self.discriminator(batch, training=True) for batch in batches]
        scores = self.discriminator(ops.concatenate(batches, axis=0), training=True)
        return ops.split(scores, len(batches), axis=0)

    def critic_scores_and_penalty(self, real, fake):
        """Critic scores, and the gradient penalty E[(|grad D(x_hat)| - 1)^2] at
        random points x_hat between real and generated samples."""
        count = ops.shape(real)[0]
        alpha = keras.random.uniform((count,) + (1,) * (len(real.shape) - 1),
                                     seed=self.noise_seed)
        interpolates = real + alpha * (fake - real)

        def scores():
            real_scores, fake_scores, interpolate_scores = self.discriminator_scores(
                real, fake, interpolates)
            return ops.sum(interpolate_scores), (real_scores, fake_scores)

        (_, (real_scores, fake_scores)), (gradient,) = value_and_gradients(
            scores, [interpolates], create_graph=True)
        norm = ops.sqrt(ops.sum(ops.square(ops.reshape(gradient, (count, -1))),
                                axis=1) + 1e-12)
        return real_scores, fake_scores, ops.mean(ops.square(norm - 1.0)), ops.mean(
            norm)

    def discriminator_step(self, real):
        fake = ops.stop_gradient(
            self.generator(self.noise(ops.shape(real)[0]), training=True))

        def discriminator_loss():
            if self.loss_kind == "non_saturating":
                real_scores, fake_scores = self.discriminator_scores(real, fake)
                return (self.cross_entropy(ops.ones_like(real_scores), real_scores)
                        + self.cross_entropy(ops.zeros_like(fake_scores),
                                             fake_scores)), {}
            real_scores, fake_scores, penalty, norm = self.critic_scores_and_penalty(
                real, fake)
            estimate = ops.mean(real_scores) - ops.mean(fake_scores)
            return -estimate + self.penalty_weight * penalty, {
                "wasserstein_estimate": estimate, "gradient_penalty": penalty,
                "gradient_norm": norm}

        weights = self.discriminator.trainable_variables
        (loss, terms), gradients = value_and_gradients(discriminator_loss, weights)
        self.discriminator_optimizer.apply(gradients, weights)
        return loss, terms

    def generator_step(self, count):
        noise = self.noise(count)

        def generator_loss():
            scores = self.discriminator(self.generator(noise, training=True),
                                        training=True)
            if self.loss_kind == "non_saturating":
                return self.cross_entropy(ops.ones_like(scores), scores)
            return -ops.mean(scores)

        weights = self.generator.trainable_variables
        loss, gradients = value_and_gradients(generator_loss, weights)
        self.generator_optimizer.apply(gradients, weights)
        return loss

    def train_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        for _ in range(self.critic_steps):
            discriminator_loss, terms = self.discriminator_step(real)
        generator_loss = self.generator_step(ops.shape(real)[0])
        values = {"discriminator_loss": discriminator_loss,
                  "generator_loss": generator_loss, **terms}
        for name, value in values.items():
            self.trackers[name].update_state(ops.stop_gradient(value))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    # -- evaluation: sample quality ------------------------------------------
    def test_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        fake = self.generator(self.noise(ops.shape(real)[0], self.evaluation_seed),
                              training=False)
        if self.feature_extractor is None:
            self.quality.update_state(real, fake)
            return {"loss": self.quality.result(), **self.quality.summary()}
        real_features, _ = self.feature_extractor(real, training=False)
        fake_features, probabilities = self.feature_extractor(fake, training=False)
        self.quality.update_state(real_features, fake_features)
        self.confidence.update_state(ops.max(probabilities, axis=-1))
        distance = self.quality.result()
        return {"loss": distance, "frechet_distance": distance,
                "classifier_confidence": self.confidence.result()}

    def sample(self, count, seed=0):
        """``count`` generated samples as a numpy array (fixed ``seed``)."""
        noise = keras.random.normal((count, self.latent_dim), seed=seed)
        return ops.convert_to_numpy(self.generator(noise, training=False))

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "generator": serialize(self.generator),
            "discriminator": serialize(self.discriminator),
            "loss": self.loss_kind, "critic_steps": self.critic_steps,
            "penalty_weight": self.penalty_weight, "ring_modes": self.ring_modes,
            "ring_std": self.ring_std, "min_mode_share": self.min_mode_share,
            "feature_extractor": None if self.feature_extractor is None
            else serialize(self.feature_extractor),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("generator", "discriminator", "feature_extractor"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def make_gan(arch, data, hyper, feature_extractor=None, seed=0, total_steps=None):
    """Build and compile the GAN for ``arch`` on ``data``.

    With ``total_steps`` (generator updates in the whole run), both learning
    rates follow a cosine decay down to ``final_learning_rate`` x the initial
    rate: small late steps let the generator settle into sharp modes.
    """
    generator, discriminator, loss = ARCHITECTURES[arch](data, hyper)
    ring = {} if data.kind != "ring" else dict(
        ring_modes=ring_modes(RING["num_modes"], RING["radius"]),
        ring_std=RING["std"], min_mode_share=RING["min_mode_share"])
    gan = GAN(generator, discriminator, loss=loss,
              critic_steps=hyper["critic_steps"],
              penalty_weight=hyper["penalty_weight"],
              feature_extractor=feature_extractor, seed=seed, name=f"gan_{arch}",
              **ring)

    def adam(updates_per_step):
        rate = hyper["learning_rate"]
        if total_steps and hyper.get("final_learning_rate", 1.0) < 1.0:
            rate = keras.optimizers.schedules.CosineDecay(
                rate, decay_steps=total_steps * updates_per_step,
                alpha=hyper["final_learning_rate"])
        return keras.optimizers.Adam(rate, beta_1=hyper["beta_1"],
                                     beta_2=hyper["beta_2"])

    gan.compile(generator_optimizer=adam(1),
                discriminator_optimizer=adam(hyper["critic_steps"]))
    return gan


# ----------------------------------------------------------------------------
# The feature classifier (image quality metrics)
# ----------------------------------------------------------------------------
def feature_extractor_from(classifier):
    """A frozen model giving [features, probabilities] for images in [-1, 1]."""
    extractor = keras.Model(classifier.input,
                            [classifier.get_layer("features").output,
                             classifier.output], name="feature_extractor")
    extractor.trainable = False
    return extractor


def train_feature_classifier(data, quick, seed):
    """Train the classifier CNN; returns (feature extractor, figures)."""
    seed_everything(seed)
    classifier = build_feature_classifier(data.sample_shape, len(data.class_names),
                                          CLASSIFIER["feature_dim"])
    classifier.compile(keras.optimizers.Adam(CLASSIFIER["learning_rate"]),
                       loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
    epochs = CLASSIFIER["quick_epochs"] if quick else CLASSIFIER["epochs"]
    print(f"training the feature classifier ({epochs} epochs) ...")
    classifier.fit(data.x_train, data.y_train, epochs=epochs,
                   batch_size=CLASSIFIER["batch_size"],
                   validation_data=(data.x_val, data.y_val), verbose=0)
    _, accuracy = classifier.evaluate(data.x_test, data.y_test, verbose=0)
    extractor = feature_extractor_from(classifier)
    train_features, _ = extractor.predict(data.x_train, verbose=0)

    def floor(images):
        """FD between ``images`` and as many training images: real vs real."""
        features, _ = extractor.predict(images, verbose=0)
        metric = FrechetDistance(CLASSIFIER["feature_dim"])
        metric.update_state(features, train_features[:len(images)])
        return float(ops.convert_to_numpy(metric.result()))

    _, probabilities = extractor.predict(data.x_test, verbose=0)
    figures = {
        "classifier_accuracy": float(accuracy),
        "classifier_confidence_real": float(np.mean(np.max(probabilities, -1))),
        "frechet_distance_real": floor(data.x_test),
        "frechet_distance_real_validation": floor(data.x_val),
    }
    print(f"feature classifier: test accuracy {accuracy:.3f}")
    return extractor, figures


# ----------------------------------------------------------------------------
# Snapshots and figures
# ----------------------------------------------------------------------------
class Snapshots(keras.callbacks.Callback):
    """Keep generated samples from fixed noise: before training, every ``every``
    epochs and at the last epoch (the figures are drawn after training)."""

    def __init__(self, noise, every):
        super().__init__()
        self.noise = noise
        self.every = int(every)
        self.frames = []

    def take(self, epoch, logs):
        samples = ops.convert_to_numpy(self.model.generator(self.noise,
                                                            training=False))
        self.frames.append((epoch, samples, dict(logs or {})))

    def on_train_begin(self, logs=None):
        self.frames = []
        self.take(0, {})

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs") or self.model.stop_training
        if (epoch + 1) % self.every == 0 or last:
            self.take(epoch + 1, logs)


class StopWhenNotFinite(keras.callbacks.Callback):
    """Keras's TerminateOnNaN watches "loss"; a GAN logs two losses instead."""

    def on_train_begin(self, logs=None):
        self.bad_epoch = None

    def on_train_batch_end(self, batch, logs=None):
        for key in ("discriminator_loss", "generator_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training and self.bad_epoch is None and any(
                not math.isfinite(float(logs.get(key, 0.0)))
                for key in ("discriminator_loss", "generator_loss")):
            self.bad_epoch = epoch + 1


def _mosaic(images, columns):
    """Tile images in [-1, 1] into one [0, 1] array with 1-pixel gaps."""
    images = np.clip((np.asarray(images) + 1.0) / 2.0, 0.0, 1.0)
    count, height, width, channels = images.shape
    rows = math.ceil(count / columns)
    canvas = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1, channels))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        canvas[top:top + height, left:left + width] = image
    return canvas[..., 0] if channels == 1 else canvas


def draw_samples(axis, data, samples, title, columns=8):
    """Generated points over the real ring, or a mosaic of generated images."""
    if data.kind == "ring":
        modes = ring_modes(RING["num_modes"], RING["radius"])
        axis.scatter(data.x_val[:, 0], data.x_val[:, 1], s=4, color="0.6",
                     alpha=0.5, label="real samples (inside the red circles)")
        axis.scatter(samples[:, 0], samples[:, 1], s=3, color="tab:blue",
                     alpha=0.5, label="generated")
        for index, (x, y) in enumerate(modes):
            axis.add_patch(Circle(
                (x, y), 3 * RING["std"], fill=False, color="tab:red", linewidth=1,
                label="3 std around a mode" if index == 0 else None))
        limit = RING["radius"] + 1.0
        axis.set_xlim(-limit, limit)
        axis.set_ylim(-limit, limit)
        axis.set_aspect("equal")
        axis.set_xlabel("x1 (data units)")
        axis.set_ylabel("x2 (data units)")
        axis.legend(loc="upper right", fontsize=7, markerscale=3)
    else:
        mosaic = _mosaic(samples[:columns * columns], columns)
        axis.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0,
                    vmax=1, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"{min(len(samples), columns * columns)} generated images")
    axis.set_title(title, fontsize=9)


def _frame_caption(data, logs):
    if data.kind == "ring" and "val_modes_covered" in logs:
        return (f"modes {logs['val_modes_covered']:.0f}/{RING['num_modes']}, "
                f"quality {logs['val_high_quality_share']:.2f}")
    if "val_frechet_distance" in logs:
        return f"FD {logs['val_frechet_distance']:.2f}"
    return "untrained"


def sample_figure(data, samples, path, title):
    figure, axis = plots.plt.subplots(figsize=(6, 6))
    draw_samples(axis, data, samples, title)
    return plots.save(figure, path)


def progress_figures(run, data, frames, arch):
    """samples/epoch_NNN.png per snapshot, plots/progress.png and .gif."""
    from PIL import Image

    (run.path / "samples").mkdir(exist_ok=True)
    for epoch, samples, logs in frames:
        title = f"{arch}, epoch {epoch}: {_frame_caption(data, logs)}"
        figure, axis = plots.plt.subplots(figsize=(5, 5))
        draw_samples(axis, data, samples, title)
        figure.tight_layout()
        figure.savefig(run.path / "samples" / f"epoch_{epoch:03d}.png", dpi=100)
        plots.plt.close(figure)
    images = []  # from the files, so a resumed run's GIF shows the whole run
    for path in sorted((run.path / "samples").glob("epoch_*.png")):
        with Image.open(path) as image:
            images.append(image.convert("RGB").quantize(colors=128))
    if images:
        durations = [600] * (len(images) - 1) + [2000]
        images[0].save(run.plots / "progress.gif", save_all=True,
                       append_images=images[1:], duration=durations, loop=0)
    chosen = [frames[int(round(i))] for i in
              np.linspace(0, len(frames) - 1, min(6, len(frames)))]
    chosen = list({epoch: (epoch, s, logs) for epoch, s, logs in chosen}.values())
    figure, axes = plots.plt.subplots(1, len(chosen), figsize=(3.3 * len(chosen), 3.8),
                                      squeeze=False)
    for axis, (epoch, samples, logs) in zip(axes[0], chosen):
        caption = f"epoch {epoch}: {_frame_caption(data, logs)}"
        draw_samples(axis, data, samples, caption, columns=6)
        if axis is not axes[0][-1] and axis.get_legend():
            axis.get_legend().remove()
    figure.suptitle(f"{arch} on {data.name}: samples from fixed noise during training")
    return plots.save(figure, run.plots / "progress.png")


def quality_figure(data, rows, initial, path, title, reference=None):
    """The validation quality metric per epoch (epoch 0 = untrained generator)."""
    rows = [{"epoch": 0, **{f"val_{k}": v for k, v in initial.items()}}, *rows]
    epochs = [row["epoch"] for row in rows]
    if data.kind == "ring":
        panels = [("val_modes_covered", f"modes covered (of {RING['num_modes']})",
                   (-0.3, RING["num_modes"] + 0.3)),
                  ("val_high_quality_share", "high-quality share (within 3 std)",
                   (-0.03, 1.03))]
    else:
        panels = [("val_frechet_distance", "Frechet distance (classifier features)",
                   None),
                  ("val_classifier_confidence", "classifier confidence", (0, 1.03))]
    figure, axes = plots.plt.subplots(1, 2, figsize=(11, 4))
    for axis, (key, label, limits) in zip(axes, panels):
        axis.plot(epochs, [row.get(key) for row in rows], "o-", markersize=3,
                  label="generated vs validation samples")
        if reference and reference.get(key) is not None:
            axis.axhline(reference[key], color="gray", linestyle="--",
                         label=reference[f"{key}_label"])
        if limits:
            axis.set_ylim(*limits)
        axis.set_xlabel("epoch (0 = untrained)")
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    return plots.save(figure, path)


# ----------------------------------------------------------------------------
# Training one architecture
# ----------------------------------------------------------------------------
def resolve_hyperparameters(args, kind):
    hyper = dict(HYPERPARAMETERS[(args.arch, kind)])
    for key in ("epochs", "batch_size", "learning_rate", "critic_steps",
                "penalty_weight", "latent_dim"):
        value = getattr(args, key, None)
        if value is not None:
            hyper[key] = value
    if args.quick:
        hyper["epochs"] = min(hyper["epochs"], QUICK_EPOCHS)
    return hyper


def _numbers(logs):
    return {key: float(ops.convert_to_numpy(value)) for key, value in logs.items()}


def train_architecture(args, argv, data, feature_extractor=None, reference=None):
    """Train ``args.arch`` on ``data`` in a new run directory; returns metrics."""
    hyper = resolve_hyperparameters(args, data.kind)
    run = Run.create(LAB, args, argv)
    run.write_config(data=data.summary, hyperparameters=hyper)
    seed_everything(args.seed)
    steps_per_epoch = math.ceil(len(data.x_train) / hyper["batch_size"])
    gan = make_gan(args.arch, data, hyper, feature_extractor, seed=args.seed,
                   total_steps=hyper["epochs"] * steps_per_epoch)
    every = args.snapshot_every or max(1, hyper["epochs"] // 10)
    noise = keras.random.normal((SNAPSHOT_SAMPLES[data.kind], hyper["latent_dim"]),
                                seed=args.seed + 7)
    snapshots = Snapshots(noise, every)
    watcher = StopWhenNotFinite()
    evaluation_batch = 1024 if data.kind == "ring" else 256
    if run.resumed:  # the untrained generator's quality, measured before
        initial = dict(run.config["initial_quality"])
    else:
        initial = _numbers(gan.evaluate(data.x_val, batch_size=evaluation_batch,
                                        verbose=0, return_dict=True))
        run.write_config(initial_quality=initial)
    print(f"{args.arch} on {data.name}: generator {gan.generator.count_params():,}"
          f" and {gan.discriminator.name} {gan.discriminator.count_params():,} "
          f"parameters; {hyper['epochs']} epochs")
    cpu_start = time.process_time()
    try:
        result = fit(
            gan, run, data.x_train, epochs=hyper["epochs"],
            batch_size=hyper["batch_size"],
            validation_data=(data.x_val,), validation_batch_size=evaluation_batch,
            patience=args.patience or hyper["epochs"] + 1, monitor="val_loss",
            title=f"{args.arch} on {data.name}: generator and discriminator losses",
            callbacks=[watcher, snapshots])
    finally:
        if snapshots.frames:
            progress_figures(run, data, snapshots.frames, args.arch)
        run.save_model(gan.generator)
    if watcher.bad_epoch is not None:
        result["status"] = "diverged"
        run.write_metrics(result)
        run.write_report(f"Lab 3: {args.arch} GAN on {data.name} (diverged)", result)
        raise cli.WorkbookError(
            f"training diverged: a GAN loss became NaN or infinite in epoch "
            f"{watcher.bad_epoch}. The history and plots are in {run.path} "
            "(metrics.json status diverged). Try a lower --learning-rate, e.g. 10 "
            "times smaller.")
    result["train_cpu_seconds"] = round(time.process_time() - cpu_start, 2)
    final = _numbers(gan.evaluate(data.x_test, batch_size=evaluation_batch,
                                  verbose=0, return_dict=True))
    final.pop("loss", None)
    rows = json.loads((run.path / "history.json").read_text())
    metrics = {
        **result,
        "params": gan.generator.count_params() + gan.discriminator.count_params(),
        "generator_params": gan.generator.count_params(),
        "discriminator_params": gan.discriminator.count_params(),
        **final,
    }
    if data.kind == "ring":
        metrics["modes_covered"] = int(round(metrics["modes_covered"]))
        metrics["num_modes"] = RING["num_modes"]
        metrics["modes_covered_initial"] = int(round(initial["modes_covered"]))
        quality_reference = None
    else:
        metrics["frechet_distance_initial"] = initial["frechet_distance"]
        metrics.update(reference or {})
        metrics["feature_space"] = (
            f"penultimate layer ({CLASSIFIER['feature_dim']} features) of a small "
            "classifier CNN trained on this dataset; not Inception FID")
        quality_reference = {
            "val_frechet_distance": metrics.get("frechet_distance_real_validation"),
            "val_frechet_distance_label": "two real samples (floor)",
            "val_classifier_confidence": metrics.get("classifier_confidence_real"),
            "val_classifier_confidence_label": "on real test images",
        }
    initial.pop("loss", None)
    quality_figure(data, rows, initial, run.plots / "quality.png",
                   f"{args.arch} on {data.name}: sample quality per epoch",
                   quality_reference)
    final_samples = gan.sample(SNAPSHOT_SAMPLES[data.kind], seed=args.seed + 7)
    sample_figure(data, final_samples, run.plots / "samples.png",
                  f"{args.arch} on {data.name}, best epoch {result['best_epoch']}: "
                  f"{_final_caption(data, metrics)}")
    run.write_metrics(metrics)
    run.write_report(f"Lab 3: {args.arch} GAN on {data.name}", metrics,
                     sections=[("How to read it", _explanation(data)),
                               ("Progress", "![progress](plots/progress.gif)")])
    metrics["_samples"] = final_samples
    metrics["_rows"] = rows
    metrics["_initial"] = initial
    metrics["_run"] = run
    return metrics


def _final_caption(data, metrics):
    if data.kind == "ring":
        return (f"{metrics['modes_covered']:.0f} of {RING['num_modes']} modes, "
                f"high-quality share {metrics['high_quality_share']:.2f}")
    return (f"FD {metrics['frechet_distance']:.2f}, "
            f"confidence {metrics['classifier_confidence']:.2f}")


def _explanation(data):
    if data.kind == "ring":
        return (
            f"Real data: {RING['num_modes']} Gaussians (std {RING['std']}) on a "
            f"circle of radius {RING['radius']}. A mode is covered when at least "
            f"{RING['min_mode_share']:.0%} of the generated points fall within 3 std "
            "of it; the high-quality share is the share of points within 3 std of "
            "any mode; the mode distance (val_loss) is the total-variation distance "
            "between the real and generated histograms over the modes and 'off "
            "every mode'. The model kept is the epoch with the lowest mode distance.")
    return (
        "The Frechet distance (val_loss, frechet_distance) is measured in the "
        f"{CLASSIFIER['feature_dim']}-feature penultimate layer of a small classifier "
        "CNN trained on the same dataset. It is not the Inception FID: compare it "
        "only between runs that share the classifier (same dataset and seed). "
        "frechet_distance_real is the distance between two real samples of the "
        "same size (the floor); classifier_confidence is the classifier's mean top "
        "probability on generated images (classifier_confidence_real on real "
        "ones). The model kept is the epoch with the lowest validation distance.")


# ----------------------------------------------------------------------------
# --compare: all architectures on the same data
# ----------------------------------------------------------------------------
def write_history(run, rows):
    """history.json and history.csv of a comparison: each arch's quality per epoch."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)] + [
        ",".join("" if row.get(column) is None else str(row[column])
                 for column in columns) for row in rows]
    run.write_json("history.json", rows)
    atomic_write_text(run.path / "history.csv", "\n".join(lines) + "\n")


def _child_argv(argv, arch, out, dataset):
    """The command that reruns one architecture of a comparison on its own."""
    child, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--compare", "--arch", "--out"):
            skip = token != "--compare"
        elif not token.startswith(("--arch=", "--out=")):
            child.append(token)
    if not any(token.startswith("--dataset") for token in child):
        child += ["--dataset", dataset]
    return [*child, "--arch", arch, "--out", out]


def compare(args, argv, data, feature_extractor, reference):
    run = Run.create(LAB, argparse.Namespace(**{**vars(args), "arch": "compare"}),
                     argv)
    run.write_config(data=data.summary)
    archs = [arch for arch in ARCHITECTURES if (arch, data.kind) in HYPERPARAMETERS]
    results = {}
    for arch in archs:
        child = argparse.Namespace(**{**vars(args), "arch": arch, "compare": False,
                                      "resume": None, "out": str(run.path / arch)})
        child_argv = _child_argv(argv, arch, child.out, args.dataset)
        results[arch] = train_architecture(child, child_argv, data,
                                           feature_extractor, reference)
    key = "modes_covered" if data.kind == "ring" else "frechet_distance"
    columns = (["modes_covered", "high_quality_share", "mode_distance"]
               if data.kind == "ring" else
               ["frechet_distance", "classifier_confidence"])
    columns += ["params", "train_seconds", "train_cpu_seconds", "best_epoch"]
    figure, axes = plots.plt.subplots(1, len(archs), figsize=(5 * len(archs), 5.3),
                                      squeeze=False)
    for axis, arch in zip(axes[0], archs):
        draw_samples(axis, data, results[arch]["_samples"],
                     f"{arch}: {_final_caption(data, results[arch])}")
    figure.suptitle(f"GAN architectures on {data.name}: final samples")
    plots.save(figure, run.plots / "comparison.png")
    series, history = {}, {}
    for arch in archs:
        rows = [{"epoch": 0, **{f"val_{k}": v
                                for k, v in results[arch]["_initial"].items()}},
                *results[arch]["_rows"]]
        series[arch] = ([row["epoch"] for row in rows],
                        [row.get(f"val_{key}") for row in rows])
        for row in rows:
            history.setdefault(row["epoch"], {"epoch": row["epoch"]})[
                f"{arch}_val_{key}"] = row.get(f"val_{key}")
    write_history(run, list(history.values()))
    plots.curves(series, run.plots / "learning_curves.png",
                 f"validation {key.replace('_', ' ')} per epoch", "epoch",
                 key.replace("_", " "),
                 markers=[(reference["frechet_distance_real_validation"],
                           "two real samples (floor)")] if reference else None)
    table = ["| arch | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for arch in archs:
        cells = [results[arch].get(column) for column in columns]
        table.append(f"| {arch} | " + " | ".join(
            f"{value:.4g}" if isinstance(value, float) else str(value)
            for value in cells) + " |")
    skipped = [arch for arch in ARCHITECTURES if arch not in archs]
    note = (f"\n\nNot run: {', '.join(skipped)} (convolutional: needs images)."
            if skipped else "")
    statuses = {results[arch]["status"] for arch in archs}
    metrics = {
        "status": statuses.pop() if len(statuses) == 1 else "mixed",
        "best_epoch": None, "stopped_epoch": None,
        "train_seconds": round(sum(results[a]["train_seconds"] for a in archs), 2),
        "params": sum(results[a]["params"] for a in archs),
        **{f"{arch}_{column}": results[arch].get(column)
           for arch in archs for column in columns},
        **(reference or {}),
    }
    (run.path / "comparison.md").write_text("\n".join(table) + note + "\n")
    run.write_metrics(metrics)
    run.write_report(f"Lab 3: GAN architectures compared on {data.name}", metrics,
                     sections=[("Comparison", "\n".join(table) + note),
                               ("How to read it", _explanation(data))])
    run.finish()
    return metrics


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def parse_args(argv):
    parser = cli.make_parser(
        LAB, "Train a GAN (vanilla MLP, DCGAN or WGAN-GP) and measure its samples.",
        ARCHITECTURES, default_arch="mlp", default_dataset=None,
        datasets_help="ring (8 Gaussians; default for mlp and wgan-gp), digits "
                      "(embedded; default for dcgan and --compare), mnist, "
                      "fashion_mnist, cifar10, npz:PATH, folder:PATH",
        epochs=None, batch_size=None, learning_rate=None, patience=None)
    parser.epilog = (
        "Defaults of None depend on --arch and the data (HYPERPARAMETERS in "
        "labs/lab3_gan.py): " + "; ".join(
            f"{arch} on {kind}: {hyper['epochs']} epochs, batch {hyper['batch_size']},"
            f" learning rate {hyper['learning_rate']:g}, latent {hyper['latent_dim']}"
            for (arch, kind), hyper in HYPERPARAMETERS.items())
        + ". --patience is off by default: every epoch runs and the epoch with the "
        "best validation quality is kept.")
    parser.add_argument("--compare", action="store_true",
                        help="train every architecture on the same data and "
                             "write a side-by-side figure and table")
    parser.add_argument("--critic-steps", type=cli.positive_int, default=None,
                        help="discriminator updates per generator update "
                             "(default: 5 for wgan-gp on ring, 3 on images, else 1)")
    parser.add_argument("--penalty-weight", type=cli.positive_float, default=None,
                        help="gradient-penalty weight lambda (wgan-gp only)")
    parser.add_argument("--latent-dim", type=cli.positive_int, default=None,
                        help="size of the generator's noise input")
    parser.add_argument("--snapshot-every", type=cli.positive_int, default=None,
                        help="epochs between sample snapshots (default: epochs/10)")
    args = parser.parse_args(argv)
    if args.compare and args.resume:
        parser.error("a --compare run cannot be resumed as a whole; resume one "
                     "architecture's sub-run (--resume RUN_DIR/wgan-gp) or start "
                     "it again")
    if args.dataset is None:
        args.dataset = "digits" if args.compare or args.arch == "dcgan" else "ring"
    return args


@contextlib.contextmanager
def torch_threads(count):
    """Run the block with ``count`` torch threads, then restore the previous count."""
    if keras.backend.backend() != "torch" or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv=None):
    argv = cli.resume_argv(sys.argv[1:] if argv is None else list(argv), LAB)
    args = parse_args(argv)
    if args.dataset == "ring" and args.arch == "dcgan" and not args.compare:
        raise cli.WorkbookError(
            "--arch dcgan is convolutional and needs images, but --dataset ring "
            "holds 2-D points. Use --dataset digits (the dcgan default), or train "
            "--arch mlp or --arch wgan-gp on the ring.")
    if args.penalty_weight is not None and args.arch != "wgan-gp" \
            and not args.compare:
        raise cli.WorkbookError(
            f"--penalty-weight applies to --arch wgan-gp only, not {args.arch}. "
            "Drop the flag or pass --arch wgan-gp.")
    with torch_threads(TORCH_THREADS):
        data = load_data(args.dataset, args.seed, args.quick)
        feature_extractor, reference = None, None
        if data.kind == "images":
            feature_extractor, reference = train_feature_classifier(
                data, args.quick, args.seed)
        if args.compare:
            return compare(args, argv, data, feature_extractor, reference)
        metrics = train_architecture(args, argv, data, feature_extractor, reference)
    run = metrics.pop("_run")
    for key in ("_samples", "_rows", "_initial"):
        metrics.pop(key)
    print(_final_caption(data, metrics))
    run.finish()
    return metrics


if __name__ == "__main__":
    sys.exit(cli.run(main))
