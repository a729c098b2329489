"""Lab 3: generative adversarial networks -- vanilla (MLP), DCGAN and WGAN-GP.

    python -m labs.lab3_gan                          # vanilla GAN, 8-Gaussian ring
    python -m labs.lab3_gan --arch wgan-gp           # WGAN-GP on the ring
    python -m labs.lab3_gan --arch dcgan             # DCGAN on embedded digits
    python -m labs.lab3_gan --arch wgan-gp --dataset digits
    python -m labs.lab3_gan --compare                # all three on digits
    python -m labs.lab3_gan --compare --dataset ring # mlp vs wgan-gp on the ring

What it teaches: how a GAN is trained by Keras's own ``fit``. One ``keras.Model``
holds a generator and a discriminator (a critic for WGAN-GP), each built with the
functional API and updated by its own optimizer, and overrides ``train_step`` as
the keras-io guides "Customizing what happens in fit()" do; ``common.gradients``
takes the gradients on torch, TensorFlow or JAX. The non-saturating loss with dense
networks (mlp), the convolutional DCGAN (dcgan) and the Wasserstein loss with a
gradient penalty (wgan-gp) meet the same data, and mode collapse is seen on the
ring (8 Gaussians on a circle; default for mlp and wgan-gp) rather than read
about. On images (digits at 16x16, the default for dcgan and --compare; mnist,
fashion_mnist, cifar10, npz:, folder:) quality is a Frechet distance in the
features of a small classifier CNN trained here: NOT the Inception FID, comparable
only between runs that share the classifier (same dataset and seed). The quality
on the validation split is the val_loss, so the epoch with the best samples is
kept (--patience is off by default: GAN quality is noisy). model.keras is the GAN
(imported with this module, ``predict`` on ``keras.random.normal((n, latent_dim))``
samples); generator.keras is the generator alone, a plain functional model.

Measured results (3 seeds, ring and digits): see the README's results table.
"""

import json
import math
import sys
import time

import keras
import numpy as np
from keras import layers, ops
from matplotlib.patches import Circle

from common import cli, experiment, plots, training
from common.data import Splits, load_images, make_ring, ring_modes
from common.gradients import (
    stateless_on_jax,
    value_and_gradients,
    value_and_input_gradients,
)
from common.runs import seed_everything

# Per (arch, kind of data). Units: epochs = passes over the training split; batch =
# real samples per step; rate = initial Adam step size of both networks, decayed
# (cosine) to final x rate by the last step; latent = generator input size; width =
# units per dense layer or filters of the first conv layer; depth = dense hidden
# layers; critic = discriminator steps per generator step; penalty = the gradient
# penalty's lambda (1 on the ring: the paper's toy code uses 0.1, which covered all
# 8 modes later here; 10 on images, as in the paper). On the ring, mlp and wgan-gp
# share networks and rates: only the loss and the critic steps differ.
COLUMNS = """epochs batch_size learning_rate final_learning_rate beta_1 beta_2
             latent_dim width depth critic_steps penalty_weight""".split()
# fmt: off
HYPERPARAMETERS = {  # epochs batch rate final beta_1 beta_2 latent width depth critic
    ("mlp", "ring"):       (50, 256, 1e-3, 0.05, 0.5, 0.9,   8, 128, 3, 1, 0.0),
    ("wgan-gp", "ring"):   (50, 256, 1e-3, 0.05, 0.5, 0.9,   8, 128, 3, 5, 1.0),
    ("mlp", "images"):     (40, 64,  5e-4, 0.1,  0.5, 0.999, 32, 256, 2, 1, 0.0),
    ("dcgan", "images"):   (40, 64,  1e-3, 0.1,  0.5, 0.999, 32, 32,  2, 1, 0.0),
    ("wgan-gp", "images"): (30, 64,  5e-4, 0.1,  0.5, 0.9,   32, 32,  2, 3, 10.0),
}  # (the last column: penalty)
# fmt: on
RING = dict(num_modes=8, radius=2.0, std=0.02)  # data units
MIN_MODE_SHARE = 0.02  # share of the samples within 3 std for a mode to count
SIZES = {"train": 8192, "val": 2048, "test": 10000}  # ring points per split
QUICK_SIZES = {"train": 1024, "val": 512, "test": 1024}  # images: 256, 64, 128
QUICK_EPOCHS = 2
SHARED_FLAGS = dict.fromkeys(("epochs", "batch_size", "learning_rate", "patience"))
CLASSIFIER = dict(epochs=12, quick_epochs=2, batch_size=64, learning_rate=2e-3)
FEATURES = 32  # penultimate units of the classifier: the Frechet feature space
SAMPLES = {"ring": 1000, "images": 64}  # generated per figure
BATCH = {"ring": 1024, "images": 256}  # evaluation batch size
QUALITY = {"ring": "mode_distance", "images": "frechet_distance"}  # the val_loss


def kind_of(dataset):
    return "ring" if dataset == "ring" else "images"


# ------------------------------------------------------------------------------ data
def load_data(args):
    """The ring, or images in [-1, 1] with the classifier that measures them."""
    return (load_ring if args.dataset == "ring" else load_gan_images)(args)


def load_ring(args):
    if args.test_dataset:
        raise cli.WorkbookError(
            "--test-dataset applies to image datasets; the ring's test points are "
            "generated. Drop --test-dataset, or use --dataset digits."
        )
    sizes, parts = QUICK_SIZES if args.quick else SIZES, []
    for offset, part in enumerate(("train", "val", "test")):
        parts += make_ring(sizes[part], args.seed + offset, **RING)
    names = [f"mode {index}" for index in range(RING["num_modes"])]
    source = "generated (common.data.make_ring)"
    splits = Splits("ring", source, *parts, "generation", names, True, dict(RING))
    if args.compare:  # a comparison's report says so in its data summary
        splits.notes["not_compared"] = "dcgan (convolutional: needs images)"
    return splits


def load_gan_images(args):
    size = 32 if args.dataset.startswith("folder:") else None
    test = args.test_dataset
    splits = load_images(args.dataset, args.seed, image_size=size, test_dataset=test)
    if args.quick:  # now, so that the classifier trains on the subset too
        splits.take({"train": 256, "val": 64, "test": 128}, args.seed)
    height, width = splits.input_shape[:2]  # digits: 16x16
    size = (-height // 4 * -4, -width // 4 * -4)  # multiples of 4: two 2x steps
    size = (16, 16) if max(size) <= 8 else size
    if len(splits.x_train) < 32 or max(size) > 64:
        raise cli.WorkbookError(
            f"{args.dataset} holds {len(splits.x_train)} training images of "
            f"{size[0]}x{size[1]} pixels; this lab's small CPU GANs need a few "
            "hundred images of at most 64x64. Use --dataset digits, mnist or "
            "fashion_mnist, or resize your images."
        )
    for part in ("x_train", "x_val", "x_test"):
        images = getattr(splits, part)
        if images.shape[1:3] != size:
            images = ops.convert_to_numpy(ops.image.resize(images, size, "bilinear"))
        setattr(splits, part, (np.clip(images, 0, 1) * 2 - 1).astype("float32"))
    splits.task = "generation"
    splits.notes.update(gan_image_shape=list(splits.input_shape), pixels="[-1, 1]")
    extractor, reference = train_feature_classifier(splits, args)
    splits.feature_extractor, splits.quality_reference = extractor, reference
    splits.notes.update(reference)
    return splits


def train_feature_classifier(splits, args):
    """Train the classifier CNN; returns (frozen feature extractor, its figures)."""
    seed_everything(args.seed)
    classifier = build_feature_classifier(splits.input_shape, splits.num_classes)
    optimizer = keras.optimizers.Adam(CLASSIFIER["learning_rate"])
    classifier.compile(optimizer, "sparse_categorical_crossentropy", metrics=["acc"])
    epochs = CLASSIFIER["quick_epochs" if args.quick else "epochs"]
    print(f"training the feature classifier ({epochs} epochs) ...")
    x, y, validation = splits.x_train, splits.y_train, (splits.x_val, splits.y_val)
    batch_size = CLASSIFIER["batch_size"]
    classifier.fit(x, y, batch_size, epochs, verbose=0, validation_data=validation)
    _, accuracy = classifier.evaluate(splits.x_test, splits.y_test, verbose=0)
    print(f"feature classifier: test accuracy {accuracy:.3f}")
    outputs = [classifier.get_layer("features").output, classifier.output]
    extractor = keras.Model(classifier.input, outputs, name="feature_extractor")
    extractor.trainable = False
    train_features, _ = extractor.predict(x, verbose=0)

    def floor(images):
        """The distance between ``images`` and as many real training images."""
        features, _ = extractor.predict(images, verbose=0)
        metric = FrechetDistance(FEATURES)
        metric.update_state(features, train_features[: len(images)])
        return float(metric.result())

    _, probabilities = extractor.predict(splits.x_test, verbose=0)
    return extractor, {
        "classifier_accuracy": float(accuracy),
        "classifier_confidence_real": float(np.mean(np.max(probabilities, -1))),
        "frechet_distance_real": floor(splits.x_test),
        "frechet_distance_real_validation": floor(splits.x_val),
    }


# --------------------------------------------------------- networks (functional API)
def build_mlp_generator(latent_dim, output_shape, width=128, depth=3):
    """Dense layers from noise to a point (linear output) or an image (tanh)."""
    noise = x = keras.Input((latent_dim,), name="noise")
    for index in range(1, depth + 1):
        x = layers.Dense(width, activation="relu", name=f"hidden_{index}")(x)
    if len(output_shape) == 1:
        return keras.Model(noise, layers.Dense(2, name="point")(x), name="generator")
    x = layers.Dense(int(np.prod(output_shape)), activation="tanh", name="pixels")(x)
    return keras.Model(noise, layers.Reshape(output_shape)(x), name="generator")


def build_mlp_discriminator(input_shape, width=128, depth=3):
    """Dense layers to one unbounded score (a logit, or a critic's value)."""
    inputs = x = keras.Input(input_shape, name="sample")
    x = layers.Flatten()(x) if len(input_shape) > 1 else x
    for index in range(1, depth + 1):  # LeakyReLU (slope 0.2) fused in Dense: faster
        x = layers.Dense(width, activation="leaky_relu", name=f"hidden_{index}")(x)
    return keras.Model(inputs, layers.Dense(1, name="score")(x), name="discriminator")


def build_dcgan_generator(latent_dim, image_shape, width=32):
    """Noise -> (H/4, W/4) feature map -> two stride-2 transposed convolutions."""
    rows, columns, channels = image_shape
    noise = keras.Input((latent_dim,), name="noise")
    cells = rows // 4 * (columns // 4) * 2 * width
    x = layers.Dense(cells, use_bias=False, name="project")(noise)
    x = layers.ReLU()(layers.BatchNormalization(name="project_bn")(x))
    x = layers.Reshape((rows // 4, columns // 4, 2 * width))(x)
    x = layers.Conv2DTranspose(width, 4, 2, "same", use_bias=False, name="up_1")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="up_1_bn")(x))
    up = layers.Conv2DTranspose(channels, 4, 2, "same", activation="tanh", name="up_2")
    return keras.Model(noise, up(x), name="generator")


def build_dcgan_discriminator(image_shape, width=32, batch_norm=True):
    """Two stride-2 convolutions with LeakyReLU, then one score. A WGAN-GP critic
    has no BatchNorm: the penalty is per sample, and BatchNorm mixes samples."""
    inputs = keras.Input(image_shape, name="image")
    x = layers.LeakyReLU(0.2)(layers.Conv2D(width, 4, 2, "same", name="down_1")(inputs))
    bias = not batch_norm  # BatchNorm's shift replaces a bias
    x = layers.Conv2D(2 * width, 4, 2, "same", use_bias=bias, name="down_2")(x)
    x = layers.BatchNormalization(name="down_2_bn")(x) if batch_norm else x
    x = layers.Flatten()(layers.LeakyReLU(0.2)(x))
    return keras.Model(inputs, layers.Dense(1, name="score")(x), name="discriminator")


def build_feature_classifier(image_shape, num_classes):
    """A small CNN whose penultimate layer ("features") is the FD feature space."""
    inputs = keras.Input(image_shape, name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(layers.MaxPooling2D()(x))
    x = layers.Dense(FEATURES, activation="relu", name="features")(x)
    outputs = layers.Dense(num_classes, activation="softmax")(layers.Dropout(0.3)(x))
    return keras.Model(inputs, outputs, name="feature_classifier")


def build_mlp(shape, args):
    generator = build_mlp_generator(args.latent_dim, shape, args.width, args.depth)
    discriminator = build_mlp_discriminator(shape, args.width, args.depth)
    return generator, discriminator, "non_saturating"


def build_dcgan(shape, args):
    generator = build_dcgan_generator(args.latent_dim, shape, args.width)
    return generator, build_dcgan_discriminator(shape, args.width), "non_saturating"


def build_wgan_gp(shape, args):
    """On points the mlp's networks, on images the DCGAN's (critic: no BatchNorm)."""
    if len(shape) == 1:
        generator, critic, _ = build_mlp(shape, args)
    else:
        generator = build_dcgan_generator(args.latent_dim, shape, args.width)
        critic = build_dcgan_discriminator(shape, args.width, batch_norm=False)
    critic.name = "critic"
    return generator, critic, "wasserstein"


ARCHITECTURES = {"mlp": build_mlp, "dcgan": build_dcgan, "wgan-gp": build_wgan_gp}


# ------------------------------------------------------------------- quality metrics
class ModeHistogram(keras.metrics.Metric):
    """How many real and generated points fall within 3 std of each ring mode, and
    of none; ``result()`` is the total-variation distance between the two."""

    def __init__(self, name="mode_histogram", **kwargs):
        super().__init__(name=name, **kwargs)
        self.modes = ring_modes(RING["num_modes"], RING["radius"]).astype("float32")
        bins = (RING["num_modes"] + 1,)
        self.real_counts = self.add_variable(bins, "zeros", name="real_counts")
        self.fake_counts = self.add_variable(bins, "zeros", name="fake_counts")

    def histogram(self, points):
        modes = ops.convert_to_tensor(self.modes)
        offsets = ops.convert_to_tensor(points)[:, None, :] - modes
        distances = ops.sqrt(ops.sum(ops.square(offsets), axis=-1))
        near = ops.min(distances, axis=1) <= 3.0 * RING["std"]
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
        covered = ops.sum(ops.cast(fake >= MIN_MODE_SHARE, "float32"))
        return dict(modes_covered=covered, high_quality_share=ops.sum(fake))


def frechet_distance(mean_a, covariance_a, mean_b, covariance_b):
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) in keras.ops: the trace
    of the root is the sum of the roots of the eigenvalues of the symmetric
    C_a^(1/2) C_b C_a^(1/2), so ``eigh`` is all it needs."""
    values, vectors = ops.eigh(covariance_a)
    root_a = ops.matmul(vectors * ops.sqrt(ops.relu(values)), ops.transpose(vectors))
    middle = ops.matmul(ops.matmul(root_a, covariance_b), root_a)
    middle_values, _ = ops.eigh(0.5 * (middle + ops.transpose(middle)))
    trace_root = ops.sum(ops.sqrt(ops.relu(middle_values)))
    traces = ops.trace(covariance_a) + ops.trace(covariance_b)
    return ops.sum(ops.square(mean_a - mean_b)) + traces - 2.0 * trace_root


class FrechetDistance(keras.metrics.Metric):
    """Running means and covariances of real and generated features; ``result()``
    is the Frechet distance between the two Gaussians. Sums are float64, except on
    JAX, which computes in 32 bits unless told otherwise for the whole process."""

    def __init__(self, feature_dim, name="frechet_distance", **kwargs):
        super().__init__(name=name, **kwargs)
        self.wide = "float32" if keras.backend.backend() == "jax" else "float64"
        shape = (2, int(feature_dim))
        self.sums = self.add_variable(shape, "zeros", self.wide, name="sums")
        square = (*shape, shape[1])
        self.products = self.add_variable(square, "zeros", self.wide, name="products")
        self.counts = self.add_variable((2,), "zeros", self.wide, name="counts")

    def update_state(self, real_features, fake_features, sample_weight=None):
        both = [ops.cast(f, self.wide) for f in (real_features, fake_features)]
        self.sums.assign_add(ops.stack([ops.sum(f, axis=0) for f in both]))
        self.products.assign_add(ops.stack([ops.transpose(f) @ f for f in both]))
        self.counts.assign_add(ops.cast([ops.shape(f)[0] for f in both], self.wide))

    def statistics(self, index):
        count = ops.maximum(self.counts[index], 2.0)
        mean = self.sums[index] / count
        product = self.products[index] / count - ops.outer(mean, mean)
        return mean, product * (count / (count - 1.0))

    def result(self):
        return frechet_distance(*self.statistics(0), *self.statistics(1))


# ---------------------------------------------- the GAN: one train_step for all three
@keras.saving.register_keras_serializable(package="workbook")
class GAN(keras.Model):
    """A generator and a discriminator trained together by ``fit``.

    ``loss`` is "non_saturating" (mlp, dcgan: cross-entropy on logits; the
    generator maximises log D(G(z))) or "wasserstein" (wgan-gp: the critic
    maximises E[D(real)] - E[D(fake)] - penalty_weight * E[(|grad D(x_hat)| -
    1)^2] at random interpolates x_hat, with ``critic_steps`` critic updates per
    generator update, on the same real batch and fresh noise). ``evaluate``
    measures the samples (on the ring, or with a ``feature_extractor`` giving
    [features, probabilities] on images); its "loss" is their distance to real data.
    """

    def __init__(
        self,
        generator,
        discriminator,
        loss,
        critic_steps,
        penalty_weight,
        feature_extractor=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss not in ("non_saturating", "wasserstein"):
            raise ValueError(f"loss must be non_saturating or wasserstein: {loss!r}")
        self.generator, self.discriminator = generator, discriminator
        self.loss_kind, self.critic_steps = loss, int(critic_steps)
        self.penalty_weight, self.seed = float(penalty_weight), int(seed)
        self.latent_dim = int(generator.input_shape[-1])
        self.feature_extractor = feature_extractor
        kinds = [type(layer) for layer in discriminator.layers]
        self.batch_normalized = layers.BatchNormalization in kinds
        self.noise_seed = keras.random.SeedGenerator(seed)
        self.evaluation_seed = keras.random.SeedGenerator(seed + 1)
        names = ["discriminator_loss", "generator_loss"]
        if loss == "wasserstein":
            names += ["wasserstein_estimate", "gradient_penalty", "gradient_norm"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.confidence = keras.metrics.Mean(name="classifier_confidence")
        if feature_extractor is None:
            self.quality = ModeHistogram()
        else:
            feature_extractor.trainable = False
            self.quality = FrechetDistance(feature_extractor.outputs[0].shape[-1])
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

    @property
    def non_trainable_variables(self):
        """JAX's ``fit`` passes the weights and the model's (generator's) optimizer
        through its pure step; the second optimizer's state must travel too."""
        second = getattr(self, "discriminator_optimizer", None)
        return super().non_trainable_variables + (second.variables if second else [])

    def noise(self, count, seed=None):
        shape = (count, self.latent_dim)
        return keras.random.normal(shape, seed=seed or self.noise_seed)

    # -- training ------------------------------------------------------------------
    def scores(self, *batches):
        """The discriminator's scores for each batch, from one call on their
        concatenation; one call each under BatchNorm (never mix real and fake)."""
        if self.batch_normalized:
            return [self.discriminator(batch, training=True) for batch in batches]
        scores = self.discriminator(ops.concatenate(batches, axis=0), training=True)
        return ops.split(scores, len(batches), axis=0)

    def critic_scores_and_penalty(self, real, fake):
        """Critic scores, and the gradient penalty E[(|grad D(x_hat)| - 1)^2] at
        random points x_hat between real and generated samples."""
        count = ops.shape(real)[0]
        shape = (count,) + (1,) * (len(real.shape) - 1)
        alpha = keras.random.uniform(shape, seed=self.noise_seed)

        def scores(*batches):  # every input's gradient comes back; one is used
            real_scores, fake_scores, interpolated = self.scores(*batches)
            return ops.sum(interpolated), (real_scores, fake_scores)

        interpolates = real + alpha * (fake - real)
        batches = [real, fake, interpolates]
        output, gradients = value_and_input_gradients(scores, batches)
        squares = ops.square(ops.reshape(gradients[2], (count, -1)))
        norm = ops.sqrt(ops.sum(squares, axis=1) + 1e-12)
        penalty = ops.mean(ops.square(norm - 1.0))
        return *output[1], penalty, ops.mean(norm)

    def discriminator_step(self, real):
        fake = self.generator(self.noise(ops.shape(real)[0]), training=True)
        fake = ops.stop_gradient(fake)

        def discriminator_loss():
            if self.loss_kind == "non_saturating":
                real_scores, fake_scores = self.scores(real, fake)
                loss = cross_entropy(real_scores, 1.0) + cross_entropy(fake_scores, 0.0)
                return loss, {}
            real_scores, fake_scores, penalty, norm = self.critic_scores_and_penalty(
                real, fake
            )
            estimate = ops.mean(real_scores) - ops.mean(fake_scores)
            terms = dict(wasserstein_estimate=estimate, gradient_penalty=penalty)
            terms["gradient_norm"] = norm
            return -estimate + self.penalty_weight * penalty, terms

        weights = self.discriminator.trainable_variables
        (loss, terms), gradients = value_and_gradients(discriminator_loss, weights)
        self.discriminator_optimizer.apply(gradients, weights)
        return loss, terms

    def generator_step(self, count):
        noise = self.noise(count)

        def generator_loss():
            fake = self.generator(noise, training=True)
            scores = self.discriminator(fake, training=True)
            if self.loss_kind == "non_saturating":
                return cross_entropy(scores, 1.0)
            return -ops.mean(scores)

        weights = self.generator.trainable_variables
        loss, gradients = value_and_gradients(generator_loss, weights)
        self.generator_optimizer.apply(gradients, weights)
        return loss

    @stateless_on_jax  # JAX's fit calls train_step(state, data): pure
    def train_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        for _ in range(self.critic_steps):
            discriminator_loss, terms = self.discriminator_step(real)
        generator_loss = self.generator_step(ops.shape(real)[0])
        terms.update(discriminator_loss=discriminator_loss)
        terms.update(generator_loss=generator_loss)
        for name, value in terms.items():
            self.trackers[name].update_state(ops.stop_gradient(value))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    # -- evaluation: sample quality ------------------------------------------------
    @stateless_on_jax
    def test_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        noise = self.noise(ops.shape(real)[0], self.evaluation_seed)
        fake = self.generator(noise, training=False)
        if self.feature_extractor is None:
            self.quality.update_state(real, fake)
            distance = self.quality.result()
            return dict(loss=distance, mode_distance=distance, **self.quality.summary())
        real_features, _ = self.feature_extractor(real, training=False)
        fake_features, probabilities = self.feature_extractor(fake, training=False)
        self.quality.update_state(real_features, fake_features)
        self.confidence.update_state(ops.max(probabilities, axis=-1))
        distance, confidence = self.quality.result(), self.confidence.result()
        logs = dict(loss=distance, frechet_distance=distance)
        return {**logs, "classifier_confidence": confidence}

    def sample(self, count, seed=0):
        """``count`` generated samples as a numpy array (fixed ``seed``)."""
        noise = keras.random.normal((count, self.latent_dim), seed=seed)
        return ops.convert_to_numpy(self.generator(noise, training=False))

    def get_config(self):
        names = ("name", "seed", "critic_steps", "penalty_weight")
        config = {name: getattr(self, name) for name in names}
        for name in ("generator", "discriminator", "feature_extractor"):
            config[name] = keras.saving.serialize_keras_object(getattr(self, name))
        return {**config, "loss": self.loss_kind}

    def get_compile_config(self):
        return None  # a reloaded GAN samples; build_model makes one to train

    @classmethod
    def from_config(cls, config):
        for name in ("generator", "discriminator", "feature_extractor"):
            if config.get(name) is not None:
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)


def cross_entropy(logits, target):
    """Binary cross-entropy of every score against one target (1 real, 0 fake)."""
    targets = ops.full_like(logits, target)
    return ops.mean(ops.binary_crossentropy(targets, logits, from_logits=True))


def build_model(args, splits):
    """The compiled GAN for ``args.arch``. Both learning rates follow a cosine decay
    to ``final_learning_rate`` x the initial rate over the whole run: small late
    steps let the generator settle into sharp modes."""
    generator, discriminator, loss = ARCHITECTURES[args.arch](splits.input_shape, args)
    extractor, name = getattr(splits, "feature_extractor", None), f"gan_{args.arch}"
    hyper = (args.critic_steps, args.penalty_weight, extractor, args.seed)
    gan = GAN(generator, discriminator, loss, *hyper, name=name.replace("-", "_"))
    steps = args.epochs * math.ceil(len(splits.x_train) / args.batch_size)

    def adam(updates_per_step):
        rate, decay = args.learning_rate, keras.optimizers.schedules.CosineDecay
        if args.final_learning_rate < 1.0:
            rate = decay(rate, steps * updates_per_step, args.final_learning_rate)
        return keras.optimizers.Adam(rate, beta_1=args.beta_1, beta_2=args.beta_2)

    gan.compile(adam(1), adam(args.critic_steps))
    return gan


# -------------------------------------------------------------- training through fit
class Snapshots(keras.callbacks.Callback):
    """Samples from fixed noise before training, every ``every`` epochs and at the
    end (drawn after training); and, as Keras's TerminateOnNaN watches only a
    "loss", a stop when a GAN loss is NaN or infinite."""

    def __init__(self, noise, every):
        super().__init__()
        self.noise, self.every, self.frames, self.bad_epoch = noise, every, [], None

    def take(self, epoch, logs):
        samples = self.model.generator(self.noise, training=False)
        self.frames.append((epoch, ops.convert_to_numpy(samples), dict(logs or {})))

    def on_train_begin(self, logs=None):
        self.frames, self.bad_epoch = [], None
        self.take(0, {})

    def on_train_batch_end(self, batch, logs=None):
        losses = [
            (logs or {}).get(key, 0) for key in ("discriminator_loss", "generator_loss")
        ]
        if not all(math.isfinite(float(loss)) for loss in losses):
            self.model.stop_training, self.bad_epoch = True, self.bad_epoch or "last"

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_epoch == "last":
            self.bad_epoch = epoch + 1
        last = epoch + 1 == self.params.get("epochs") or self.model.stop_training
        if (epoch + 1) % self.every == 0 or last:
            self.take(epoch + 1, logs)


def train(gan, splits, run, args):
    """The runner's ``fit`` (EarlyStopping on the validation quality, history,
    checkpoint), with sample snapshots and a watch for NaN losses."""
    batch, kind = BATCH[kind_of(args.dataset)], kind_of(args.dataset)
    if not run.resumed:  # the untrained generator: epoch 0 of the figures
        logs = gan.evaluate(splits.x_val, batch_size=batch, verbose=0, return_dict=True)
        run.write_config(initial_quality=logs)
    noise = keras.random.normal((SAMPLES[kind], args.latent_dim), seed=7)
    snapshots = Snapshots(noise, args.snapshot_every or max(1, args.epochs // 10))
    title = f"{args.arch} on {args.dataset}: generator and discriminator losses"
    data = dict(validation_data=(splits.x_val,), validation_batch_size=batch)
    cpu_start = time.process_time()  # wall time on a shared machine varies more
    try:
        result = training.fit(
            gan,
            run,
            splits.x_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=args.patience,
            title=title,
            callbacks=[snapshots],
            **data,
        )
    finally:
        if snapshots.frames:
            progress_figures(run, args, snapshots.frames, splits)
    if snapshots.bad_epoch is not None:
        result["status"] = "diverged"
        run.write_metrics(result)
        run.write_report(f"{experiment.default_title(LAB, args)} (diverged)", result)
        raise cli.WorkbookError(
            f"training diverged: a GAN loss became NaN or infinite in epoch "
            f"{snapshots.bad_epoch}. The history and plots are in {run.path} "
            "(metrics.json status diverged). Try a lower --learning-rate, e.g. 10 "
            "times smaller."
        )
    result["train_cpu_seconds"] = round(time.process_time() - cpu_start, 2)
    return result


# --------------------------------------------------------------------------- figures
def mosaic(images, columns):
    """Tile images in [-1, 1] into one [0, 1] array, 1-pixel gaps between them."""
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    tiles = np.ones((rows * columns, height + 1, width + 1, channels))
    tiles[:count, 1:, 1:] = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
    tiles = tiles.reshape(rows, columns, height + 1, width + 1, channels)
    tiles = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * (height + 1), -1, channels)
    return tiles[..., 0] if channels == 1 else tiles


def draw_samples(axis, splits, samples, title, columns=8):
    """Generated points over the real ring, or a mosaic of generated images."""
    axis.set_title(title, fontsize=9)
    if splits.name != "ring":
        tiles = mosaic(samples[: columns * columns], columns)
        gray = "gray" if tiles.ndim == 2 else None
        axis.imshow(tiles, cmap=gray, vmin=0, vmax=1, interpolation="nearest")
        shown = f"{min(len(samples), columns * columns)} generated images"
        return axis.set(xticks=[], yticks=[], xlabel=shown)
    real, limit = splits.x_val, RING["radius"] + 1.0
    label = "real samples (inside the red circles)"
    axis.scatter(*real.T, s=4, color="0.6", alpha=0.5, label=label)
    axis.scatter(*samples.T, s=3, color="tab:blue", alpha=0.5, label="generated")
    for index, centre in enumerate(ring_modes(RING["num_modes"], RING["radius"])):
        label = "3 std around a mode" if index == 0 else None
        axis.add_patch(
            Circle(centre, 3 * RING["std"], fill=False, color="red", label=label)
        )
    axis.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
    axis.set(xlabel="x1 (data units)", ylabel="x2 (data units)")
    axis.legend(loc="best", fontsize=7, markerscale=3)


CAPTIONS = {  # the quality of samples in a few words, from logs or metrics
    "modes_covered": "{modes_covered:.0f} of 8 modes, high-quality share "
    "{high_quality_share:.2f}",
    "frechet_distance": "FD {frechet_distance:.2f}, confidence "
    "{classifier_confidence:.2f}",
}


def caption(logs, prefix="val_"):
    values = {key.removeprefix(prefix): value for key, value in logs.items()}
    texts = [text for key, text in CAPTIONS.items() if key in values] + ["untrained"]
    return texts[0].format(**values)


def progress_figures(run, args, frames, splits):
    """samples/epoch_NNN.png per snapshot, plots/progress.png and .gif."""
    from PIL import Image

    (run.path / "samples").mkdir(exist_ok=True)
    for epoch, samples, logs in frames:
        figure, axis = plots.plt.subplots(figsize=(5, 5))
        title = f"{args.arch}, epoch {epoch}: {caption(logs)}"
        draw_samples(axis, splits, samples, title)
        plots.save(figure, run.path / "samples" / f"epoch_{epoch:03d}.png")
    images = []  # from the files, so that a resumed run's GIF shows the whole run
    for path in sorted((run.path / "samples").glob("epoch_*.png")):
        with Image.open(path) as image:
            images.append(image.convert("RGB").quantize(colors=128))
    durations = [600] * (len(images) - 1) + [2000]
    gif = dict(save_all=True, append_images=images[1:], duration=durations, loop=0)
    images[0].save(run.plots / "progress.gif", **gif)
    picks = np.linspace(0, len(frames) - 1, min(6, len(frames))).round().astype(int)
    chosen = list({frames[index][0]: frames[index] for index in picks}.values())
    size = (3.6 * len(chosen), 4.1)
    figure, axes = plots.plt.subplots(1, len(chosen), figsize=size, squeeze=False)
    for axis, (epoch, samples, logs) in zip(axes[0], chosen):
        draw_samples(axis, splits, samples, f"epoch {epoch}:\n{caption(logs)}", 6)
        if axis is not axes[0][-1] and axis.get_legend():
            axis.get_legend().remove()
    figure.suptitle(f"{args.arch} on {args.dataset}: samples from fixed noise")
    return plots.save(figure, run.plots / "progress.png")


PANELS = {  # validation key: (axis label, y limits)
    "val_modes_covered": ("modes covered (of 8)", (-0.3, 8.3)),
    "val_high_quality_share": ("high-quality share", (-0.03, 1.03)),
    "val_frechet_distance": ("Frechet distance (classifier features)", None),
    "val_classifier_confidence": ("classifier confidence", (0, 1.03)),
}
REAL = {  # what real data scores: validation key -> (figure's key, label)
    "val_frechet_distance": ("frechet_distance_real_validation", "two real samples"),
    "val_classifier_confidence": ("classifier_confidence_real", "real test images"),
}


def quality_figure(splits, rows, path, title):
    """The validation quality per epoch (epoch 0 = the untrained generator)."""
    figure, axes = plots.plt.subplots(1, 2, figsize=(11, 4))
    keys = [key for key in PANELS if key in rows[0]]
    for axis, key in zip(axes, keys):
        label, limits = PANELS[key]
        epochs, values = [row["epoch"] for row in rows], [row.get(key) for row in rows]
        axis.plot(epochs, values, "o-", markersize=3, label="generated vs validation")
        if key in REAL:
            value, meaning = splits.notes[REAL[key][0]], REAL[key][1]
            axis.axhline(value, color="gray", linestyle="--", label=meaning)
        axis.set(xlabel="epoch (0 = untrained)", ylabel=label, title=label)
        axis.set_ylim(*(limits or axis.get_ylim()))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    return plots.save(figure, path)


EXPLANATION = {
    "ring": "A mode is covered when at least 2% of the generated points fall within "
    "3 std of it; the high-quality share is the share within 3 std of any mode; the "
    "mode distance (val_loss) is the total-variation distance between the real and "
    "generated histograms over the 8 modes and 'off every mode'.",
    "images": "The Frechet distance (val_loss) is measured in the 32 penultimate "
    "features of a small classifier CNN trained on the same data: not Inception "
    "FID, comparable only between runs sharing the classifier (same dataset and "
    "seed). frechet_distance_real is the real-vs-real floor; classifier_confidence "
    "the classifier's mean top probability on generated images.",
}


def evaluate(gan, splits, run, args):
    """Test-split quality, the quality and samples figures, generator.keras."""
    kind = kind_of(args.dataset)
    logs = gan.evaluate(
        splits.x_test, batch_size=BATCH[kind], verbose=0, return_dict=True
    )
    initial = {k: v for k, v in run.config["initial_quality"].items() if k != "loss"}
    sizes = gan.generator.count_params(), gan.discriminator.count_params()
    metrics = dict(params=sum(sizes), generator_params=sizes[0])
    metrics["discriminator_params"] = sizes[1]
    metrics.update({key: value for key, value in logs.items() if key != "loss"})
    for network in ("generator", "discriminator"):  # who was updated how often
        steps = getattr(gan, f"{network}_optimizer").iterations
        metrics[f"{network}_updates"] = int(ops.convert_to_numpy(steps))
    if kind == "ring":
        metrics["modes_covered"] = int(round(metrics["modes_covered"]))
        metrics["modes_covered_initial"] = int(round(initial["modes_covered"]))
    else:
        metrics["frechet_distance_initial"] = initial["frechet_distance"]
        metrics.update(splits.quality_reference)
        metrics["feature_space"] = "32 penultimate features of a classifier CNN"
    rows = json.loads((run.path / "history.json").read_text())
    best = min(rows, key=lambda row: row["val_loss"])["epoch"]
    rows = [{"epoch": 0, **{f"val_{k}": v for k, v in initial.items()}}, *rows]
    title = experiment.default_title(LAB, args)
    quality_figure(splits, rows, run.plots / "quality.png", f"{title}: sample quality")
    figure, axis = plots.plt.subplots(figsize=(6, 6))
    words = f"{title}, best epoch {best}:\n{caption(metrics, prefix='')}"
    draw_samples(axis, splits, gan.sample(SAMPLES[kind], seed=7), words)
    plots.save(figure, run.plots / "samples.png")
    run.save_model(gan.generator, "generator.keras")
    run.add_section("How to read it", EXPLANATION[kind])
    run.add_section("Progress", "![progress](plots/progress.gif)")
    return metrics


# --------------------------------------------------------------------------- the lab
def add_arguments(parser):
    parser.epilog = (
        "Defaults of None depend on --arch and the data (HYPERPARAMETERS in "
        "labs/lab3_gan.py). --patience is off by default: every epoch runs and the "
        "epoch with the best validation quality is kept."
    )
    flags = {  # flag: (type, help)
        "--critic-steps": (cli.positive_int, "discriminator steps per generator step"),
        "--penalty-weight": (cli.positive_float, "gradient-penalty lambda (wgan-gp)"),
        "--latent-dim": (cli.positive_int, "size of the generator's noise input"),
        "--snapshot-every": (cli.positive_int, "epochs between samples (epochs/10)"),
    }
    for flag, (kind, text) in flags.items():
        parser.add_argument(flag, type=kind, default=None, help=text)


def check_arguments(args, parser):
    if args.dataset is None:
        args.dataset = "digits" if args.compare or args.arch == "dcgan" else "ring"
    if args.quick and args.epochs is None:
        args.epochs = QUICK_EPOCHS  # every arch's default is longer
    if args.compare:
        return
    if args.dataset == "ring" and args.arch == "dcgan":
        raise cli.WorkbookError(
            "--arch dcgan is convolutional and needs images, but --dataset ring "
            "holds 2-D points. Use --dataset digits (the dcgan default), or train "
            "--arch mlp or --arch wgan-gp on the ring."
        )
    if args.penalty_weight is not None and args.arch != "wgan-gp":
        raise cli.WorkbookError(
            f"--penalty-weight applies to --arch wgan-gp only, not {args.arch}. "
            "Drop the flag or pass --arch wgan-gp."
        )


def prepare(args, splits, run):
    """Fill in the flags left at None from HYPERPARAMETERS, per run: a comparison's
    variants each get their own arch's values."""
    values = dict(zip(COLUMNS, HYPERPARAMETERS[(args.arch, kind_of(args.dataset))]))
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.patience = args.patience or args.epochs + 1  # off unless asked for
    run.write_config(hyperparameters={key: getattr(args, key) for key in values})


def variants(args):
    kind = kind_of(args.dataset)
    archs = [arch for arch in ARCHITECTURES if (arch, kind) in HYPERPARAMETERS]
    return {arch: {"arch": arch} for arch in archs}


LAB = experiment.Lab(
    name="lab3_gan",
    description="Lab 3: a GAN (vanilla MLP, DCGAN or WGAN-GP) trained through fit, "
    "and the quality of its samples measured.",
    hyperparameters=SHARED_FLAGS,
    architectures=ARCHITECTURES,
    default_arch="mlp",
    datasets="ring (8 Gaussians; default for mlp and wgan-gp), digits (embedded; "
    "default for dcgan and --compare), mnist, fashion_mnist, cifar10, npz:PATH, "
    "folder:PATH",
    default_dataset=None,
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    headline=lambda args: (QUALITY[kind_of(args.dataset)], "min"),
    prepare=prepare,
    train=train,
    variants=variants,
    summary=lambda metrics: caption(metrics, prefix=""),
    title=lambda args: f"Lab 3: {args.arch} GAN on {args.dataset}",
    quick_sizes=QUICK_SIZES,
    quick_epochs=QUICK_EPOCHS,
    threads=1,  # tiny networks: on 2 shared cores a second thread costs more
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
