"""Lab 3: generative adversarial networks -- vanilla (MLP), DCGAN and WGAN-GP.

    python -m labs.lab3_gan                          # vanilla GAN, 8-Gaussian ring
    python -m labs.lab3_gan --arch wgan-gp           # WGAN-GP on the ring
    python -m labs.lab3_gan --arch dcgan             # DCGAN on embedded digits
    python -m labs.lab3_gan --compare                # all three on digits
    python -m labs.lab3_gan --compare --dataset ring # mlp vs wgan-gp on the ring

What it teaches: a GAN trained by Keras's own ``fit``: one ``keras.Model`` holds a
generator and a discriminator (a critic for WGAN-GP), each with its own optimizer,
and overrides ``train_step`` as keras-io's "Customizing what happens in fit()"
does. Mode collapse shows on the ring of 8 Gaussians. On images quality is a
Frechet distance in the features of a small classifier trained here (NOT the
Inception FID: comparable only between runs of the same data and seed). That
quality on the validation split is the val_loss, so the best epoch is kept.
Measured results (3 seeds, ring and digits): the README's results table.
"""

import json
import math
import sys

import keras
import numpy as np
from keras import layers, ops
from matplotlib.patches import Circle

from common import cli, experiment, gradients, plots
from common.data import Splits, load_images, make_ring, ring_modes
from common.runs import seed_everything

# Per (arch, kind of data). Units: epochs over the training split; real samples per
# batch; Adam step size of both networks, cosine-decayed to final x rate by the last
# step; noise size; units per dense layer or filters of the first convolution; dense
# hidden layers; critic steps per generator step; the gradient penalty's lambda (10
# on images, as in the paper; 1 on the ring, where 0.1 covered all 8 modes later).
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
QUICK_SIZES = {"train": 1024, "val": 512, "test": 1024}  # ring; images 256, 64, 128
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
    if args.dataset != "ring":
        return load_gan_images(args)
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
    height, width = splits.input_shape[:2]  # two 2x steps: multiples of 4, >= 16
    size = (max(16, -height // 4 * -4), max(16, -width // 4 * -4))
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
    splits.feature_extractor, splits.reference = train_feature_classifier(splits, args)
    splits.notes.update(splits.reference)
    return splits


def train_feature_classifier(splits, args):
    """Train the classifier CNN; returns its frozen [features, probabilities]
    extractor and what real images score (the floors of the quality figure)."""
    seed_everything(args.seed)
    classifier = build_feature_classifier(splits.input_shape, splits.num_classes)
    optimizer = keras.optimizers.Adam(CLASSIFIER["learning_rate"])
    classifier.compile(optimizer, "sparse_categorical_crossentropy", metrics=["acc"])
    epochs = CLASSIFIER["quick_epochs" if args.quick else "epochs"]
    x, y, batch_size = splits.x_train, splits.y_train, CLASSIFIER["batch_size"]
    classifier.fit(x, y, batch_size, epochs, verbose=0)
    _, accuracy = classifier.evaluate(splits.x_test, splits.y_test, verbose=0)
    print(f"feature classifier ({epochs} epochs): test accuracy {accuracy:.3f}")
    outputs = [classifier.get_layer("features").output, classifier.output]
    extractor = keras.Model(classifier.input, outputs, name="feature_extractor")
    extractor.trainable = False
    train_features, _ = extractor.predict(x, verbose=0)
    reference = {"classifier_accuracy": float(accuracy)}
    for suffix, images in (("_validation", splits.x_val), ("", splits.x_test)):
        features, probabilities = extractor.predict(images, verbose=0)
        metric = FrechetDistance(FEATURES)  # to as many real training images
        metric.update_state(features, train_features[: len(images)])
        reference[f"frechet_distance_real{suffix}"] = float(metric.result())
    confidence = np.mean(np.max(probabilities, axis=-1))  # on the test images
    return extractor, {**reference, "classifier_confidence_real": float(confidence)}


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


# ------------------------------------------------------------------- quality metrics
class ModeHistogram(keras.metrics.Metric):
    """How many real and generated points fall within 3 std of each ring mode, and
    of none; ``result()`` is the total-variation distance between the two."""

    def __init__(self, name="mode_distance", **kwargs):
        super().__init__(name=name, **kwargs)
        self.modes = ring_modes(RING["num_modes"], RING["radius"]).astype("float32")
        bins = (2, len(self.modes) + 1)  # (real, fake) x (each mode, off every mode)
        self.counts = self.add_variable(bins, "zeros", name="counts")

    def histogram(self, points):
        modes = ops.convert_to_tensor(self.modes)
        offsets = ops.convert_to_tensor(points)[:, None, :] - modes
        distances = ops.norm(offsets, axis=-1)
        near = ops.min(distances, axis=1) <= 3.0 * RING["std"]
        bins = ops.where(near, ops.argmin(distances, axis=1), len(self.modes))
        return ops.sum(ops.one_hot(bins, len(self.modes) + 1), axis=0)

    def update_state(self, real, fake, sample_weight=None):
        self.counts.assign_add(ops.stack([self.histogram(real), self.histogram(fake)]))

    def shares(self):
        return self.counts / ops.maximum(ops.sum(self.counts, 1, keepdims=True), 1.0)

    def result(self):
        real, fake = self.shares()
        return 0.5 * ops.sum(ops.abs(real - fake))

    def summary(self):
        fake = self.shares()[1, :-1]
        covered = ops.sum(ops.cast(fake >= MIN_MODE_SHARE, "float32"))
        return dict(modes_covered=covered, high_quality_share=ops.sum(fake))


class FrechetDistance(keras.metrics.Metric):
    """Running means and covariances of real and generated features; ``result()``
    is the Frechet distance between the two Gaussians. Sums are float64, except on
    JAX, which computes in 32 bits unless told otherwise for the whole process."""

    def __init__(self, feature_dim, name="frechet_distance", **kwargs):
        super().__init__(name=name, **kwargs)
        self.wide = "float32" if keras.backend.backend() == "jax" else "float64"
        shape, add = (2, int(feature_dim)), self.add_variable
        self.sums = add(shape, "zeros", self.wide, name="sums")
        self.products = add((*shape, shape[1]), "zeros", self.wide, name="products")
        self.counts = add((2,), "zeros", self.wide, name="counts")

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
        """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)), the trace of the
        root from the eigenvalues of the symmetric C_a^(1/2) C_b C_a^(1/2)."""
        (mean_a, covariance_a), (mean_b, covariance_b) = map(self.statistics, (0, 1))
        values, vectors = ops.eigh(covariance_a)
        root_a = (vectors * ops.sqrt(ops.relu(values))) @ ops.transpose(vectors)
        middle = root_a @ covariance_b @ root_a
        middle_values, _ = ops.eigh(0.5 * (middle + ops.transpose(middle)))
        trace_root = ops.sum(ops.sqrt(ops.relu(middle_values)))
        traces = ops.trace(covariance_a) + ops.trace(covariance_b)
        return ops.sum(ops.square(mean_a - mean_b)) + traces - 2.0 * trace_root


# ---------------------------------------------- the GAN: one train_step for all three
@keras.saving.register_keras_serializable(package="workbook")
class GAN(keras.Model):
    """A generator and a discriminator trained together by ``fit``. ``loss``
    "non_saturating": cross-entropy on logits, the generator maximises log D(G(z)).
    "wasserstein": the critic maximises E[D(real)] - E[D(fake)] - penalty_weight *
    E[(|grad D(x_hat)| - 1)^2], ``critic_steps`` times per generator step (same real
    batch, fresh noise). ``evaluate``'s "loss" is the samples' distance to real data
    (on images, in the features of a ``feature_extractor``)."""

    def __init__(self, generator, discriminator, loss, critic_steps, penalty_weight,
                 feature_extractor=None, seed=0, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.generator, self.discriminator = generator, discriminator
        self.loss_kind, self.critic_steps = loss, int(critic_steps)
        self.penalty_weight = float(penalty_weight)
        self.feature_extractor = extractor = feature_extractor
        self.seed = int(seed)  # of the noise during training, and during evaluation
        self.noise_seed = keras.random.SeedGenerator(self.seed)
        self.evaluation_seed = keras.random.SeedGenerator(self.seed + 1)
        names = ["discriminator_loss", "generator_loss"]
        if loss == "wasserstein":
            names += ["wasserstein_estimate", "gradient_penalty", "gradient_norm"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.confidence = keras.metrics.Mean(name="classifier_confidence")
        self.cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True)
        self.quality = (
            ModeHistogram() if extractor is None else FrechetDistance(FEATURES)
        )
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
        seed = self.noise_seed if seed is None else seed
        shape = (count, self.generator.input_shape[-1])
        return keras.random.normal(shape, seed=seed)

    def sample(self, count, seed=0):
        """``count`` generated samples as a numpy array (fixed ``seed``)."""
        samples = self.generator(self.noise(count, seed), training=False)
        return ops.convert_to_numpy(samples)

    # -- training ------------------------------------------------------------------
    def critic_scores_and_penalty(self, real, fake):
        """Scores, the gradient penalty at points x_hat between real and fake, and
        the mean gradient norm there."""
        count = ops.shape(real)[0]
        shape = (count,) + (1,) * (len(real.shape) - 1)
        alpha = keras.random.uniform(shape, seed=self.noise_seed)
        between = real + alpha * (fake - real)
        _, (grad,) = gradients.value_and_input_gradients(
            lambda points: ops.sum(self.discriminator(points, training=True)), [between]
        )
        squares = ops.square(ops.reshape(grad, (count, -1)))
        norm = ops.sqrt(ops.sum(squares, axis=1) + 1e-12)  # differentiable at 0
        scores = [self.discriminator(batch, training=True) for batch in (real, fake)]
        return *scores, ops.mean(ops.square(norm - 1.0)), ops.mean(norm)

    def update(self, network, optimizer, loss):
        """One step of ``optimizer`` down ``loss()``; returns ``loss()``'s output."""
        weights = network.trainable_variables
        output, grads = gradients.value_and_gradients(loss, weights)
        optimizer.apply(grads, weights)
        return output

    def discriminator_step(self, real):
        fake = self.generator(self.noise(ops.shape(real)[0]), training=True)
        fake = ops.stop_gradient(fake)

        def loss():  # real and fake in separate calls: BatchNorm must not mix them
            if self.loss_kind == "non_saturating":
                on_real = self.discriminator(real, training=True)
                on_fake = self.discriminator(fake, training=True)
                real_loss = self.cross_entropy(ops.ones_like(on_real), on_real)
                fake_loss = self.cross_entropy(ops.zeros_like(on_fake), on_fake)
                return real_loss + fake_loss, {}
            on_real, on_fake, penalty, norm = self.critic_scores_and_penalty(real, fake)
            estimate = ops.mean(on_real) - ops.mean(on_fake)
            terms = dict(wasserstein_estimate=estimate, gradient_penalty=penalty)
            terms["gradient_norm"] = norm
            return self.penalty_weight * penalty - estimate, terms

        return self.update(self.discriminator, self.discriminator_optimizer, loss)

    def generator_step(self, count):
        noise = self.noise(count)

        def loss():
            fake = self.generator(noise, training=True)
            scores = self.discriminator(fake, training=True)
            if self.loss_kind == "non_saturating":
                return self.cross_entropy(ops.ones_like(scores), scores)
            return -ops.mean(scores)

        return self.update(self.generator, self.generator_optimizer, loss)

    @gradients.stateless_on_jax  # JAX's fit calls train_step(state, data): pure
    def train_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        for _ in range(self.critic_steps):
            discriminator_loss, terms = self.discriminator_step(real)
        terms["discriminator_loss"] = discriminator_loss
        terms["generator_loss"] = self.generator_step(ops.shape(real)[0])
        for name, value in terms.items():
            self.trackers[name].update_state(ops.stop_gradient(value))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @gradients.stateless_on_jax
    def test_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        noise = self.noise(ops.shape(real)[0], self.evaluation_seed)
        fake, logs = self.generator(noise, training=False), {}
        if self.feature_extractor is not None:  # images: compare classifier features
            real, _ = self.feature_extractor(real, training=False)
            fake, probabilities = self.feature_extractor(fake, training=False)
            self.confidence.update_state(ops.max(probabilities, axis=-1))
            logs["classifier_confidence"] = self.confidence.result()
        self.quality.update_state(real, fake)
        logs["loss"] = logs[self.quality.name] = self.quality.result()
        return {**logs, **getattr(self.quality, "summary", dict)()}  # ring: modes

    def get_config(self):  # the networks as Keras objects: Keras serializes them
        names = "generator discriminator feature_extractor critic_steps seed".split()
        config = {name: getattr(self, name) for name in [*names, "penalty_weight"]}
        return {**super().get_config(), **config, "loss": self.loss_kind}

    def get_compile_config(self):
        return None  # a reloaded GAN samples; build_model makes one to train

    @classmethod
    def from_config(cls, config):
        for name in ("generator", "discriminator", "feature_extractor"):
            config[name] = keras.saving.deserialize_keras_object(config.get(name))
        return cls(**config)


# ------------------------------------------------------------------- architectures
ARCHITECTURES = {  # arch: its loss; the networks follow from the arch and the data
    "mlp": "non_saturating",  # dense networks, on points or images
    "dcgan": "non_saturating",  # convolutional, BatchNorm in both networks
    "wgan-gp": "wasserstein",  # mlp's networks on the ring, dcgan's on images
}


def build_model(args, splits):
    """The compiled GAN for ``args.arch``. Both learning rates follow a cosine decay
    to ``final_learning_rate`` x the initial rate over the whole run: small late
    steps let the generator settle into sharp modes."""
    shape, loss = splits.input_shape, ARCHITECTURES[args.arch]
    if len(shape) == 1 or args.arch == "mlp":
        generator = build_mlp_generator(args.latent_dim, shape, args.width, args.depth)
        discriminator = build_mlp_discriminator(shape, args.width, args.depth)
    else:  # a WGAN-GP critic has no BatchNorm: the penalty is per sample
        generator = build_dcgan_generator(args.latent_dim, shape, args.width)
        batch_norm = loss != "wasserstein"
        discriminator = build_dcgan_discriminator(shape, args.width, batch_norm)
    discriminator.name = "critic" if loss == "wasserstein" else "discriminator"
    extractor = getattr(splits, "feature_extractor", None)
    hyper = (loss, args.critic_steps, args.penalty_weight)
    options = dict(feature_extractor=extractor, seed=args.seed)
    name = f"gan_{args.arch}".replace("-", "_")
    gan = GAN(generator, discriminator, *hyper, **options, name=name)
    steps = args.epochs * math.ceil(len(splits.x_train) / args.batch_size)
    decay = keras.optimizers.schedules.CosineDecay
    rates = [  # the generator's, then the critic's (critic_steps per step)
        decay(args.learning_rate, steps * updates, args.final_learning_rate)
        for updates in (1, args.critic_steps)
    ]
    gan.compile(*[keras.optimizers.Adam(r, args.beta_1, args.beta_2) for r in rates])
    return gan


# --------------------------------------------------------------------------- figures
def snapshot(gan, splits, args, epoch, logs, path):
    """What the generator makes of fixed noise at an epoch (0: untrained)."""
    title = f"{args.arch}, epoch {epoch or '0 (untrained)'}: {caption(logs)}"
    draw_samples(splits, gan.sample(SAMPLES[kind_of(args.dataset)], 7), title, path)


def draw_samples(splits, samples, title, path):
    """Generated points over the real ring, or 8 x 8 generated images with 1-pixel
    gaps, saved at ``path``."""
    figure, axis = plots.plt.subplots(figsize=(5, 5))
    axis.set_title(title, fontsize=10)
    if splits.name != "ring":  # 64 images in [-1, 1]
        gray = "gray" if samples.shape[-1] == 1 else None
        tiles = plots.tile((samples + 1.0) / 2.0)
        axis.imshow(tiles, cmap=gray, vmin=0, vmax=1, interpolation="nearest")
        axis.set(xticks=[], yticks=[], xlabel=f"{len(samples)} generated images")
    else:
        label = "real (red: 3 std)"
        axis.scatter(*splits.x_val.T, s=4, color="0.6", alpha=0.5, label=label)
        axis.scatter(*samples.T, s=3, color="tab:blue", alpha=0.5, label="generated")
        for centre in ring_modes(RING["num_modes"], RING["radius"]):
            axis.add_patch(Circle(centre, 3 * RING["std"], fill=False, ec="red"))
        limits = (-RING["radius"] - 1.0, RING["radius"] + 1.0)
        axis.set(xlim=limits, ylim=limits, aspect="equal", xlabel="x1 (data units)")
        axis.set_ylabel("x2 (data units)")
        axis.legend(loc="center", fontsize=8, markerscale=3)
    return plots.save(figure, path)


def caption(logs, prefix="val_"):
    """The quality of samples in a few words, from a run's logs or metrics."""
    values = {key.removeprefix(prefix): value for key, value in logs.items()}
    if "modes_covered" in values:
        share = values["high_quality_share"]
        return f"{values['modes_covered']:.0f} of 8 modes, {share:.2f} high-quality"
    confidence = values["classifier_confidence"]
    return f"FD {values['frechet_distance']:.2f}, confidence {confidence:.2f}"


def evaluate(gan, splits, run, args):
    """Test-split quality; the samples and quality figures; generator.keras."""
    kind, batch = kind_of(args.dataset), BATCH[kind_of(args.dataset)]
    logs = gan.evaluate(splits.x_test, batch_size=batch, verbose=0, return_dict=True)
    initial = run.config["untrained"]  # epoch 0's validation figures (the runner's)
    metrics = {key: value for key, value in logs.items() if key != "loss"}
    for network in ("generator", "discriminator"):  # sizes; who was updated how often
        metrics[f"{network}_params"] = getattr(gan, network).count_params()
        steps = getattr(gan, f"{network}_optimizer").iterations
        metrics[f"{network}_updates"] = int(ops.convert_to_numpy(steps))
    metrics["params"] = metrics["generator_params"] + metrics["discriminator_params"]
    if kind == "ring":
        metrics["modes_covered"] = int(round(metrics["modes_covered"]))
    else:
        metrics.update(splits.reference)
        metrics["frechet_distance_initial"] = initial["val_frechet_distance"]
    rows = json.loads((run.path / "history.json").read_text())
    best = min(rows, key=lambda row: row["val_loss"])["epoch"]
    title = experiment.default_title(LAB, args)
    words = f"{title}, best epoch {best}:\n{caption(metrics, prefix='')}"
    draw_samples(splits, gan.sample(SAMPLES[kind], 7), words, run.plots / "samples.png")
    rows = [{"epoch": 0, **initial}, *rows]
    epochs, key = [row["epoch"] for row in rows], f"val_{QUALITY[kind]}"
    lines = {f"{key} (generated vs validation)": (epochs, [row[key] for row in rows])}
    if kind == "ring":
        covered = [row["val_modes_covered"] / 8 for row in rows]
        lines["val_modes_covered / 8"] = (epochs, covered)
        ylabel, markers = "fraction (0 to 1)", []
    else:
        floor = splits.reference["frechet_distance_real_validation"]
        ylabel, markers = "Frechet distance", [(floor, "two real samples")]
    title, path = f"{title}: sample quality per epoch", run.plots / "quality.png"
    plots.curves(lines, path, title, "epoch (0 = untrained)", ylabel, markers=markers)
    run.save_model(gan.generator, "generator.keras")
    return metrics


# --------------------------------------------------------------------------- the lab
def check_arguments(args, parser):
    if args.dataset is None:
        args.dataset = "digits" if args.compare or args.arch == "dcgan" else "ring"
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


LAB = experiment.Lab(
    name="lab3_gan",
    description="Lab 3: a GAN (vanilla MLP, DCGAN or WGAN-GP) trained through fit. "
    "Defaults of None: per --arch and data, from HYPERPARAMETERS in the lab; "
    "--patience is off unless given (the epoch with the best quality is kept).",
    hyperparameters=dict.fromkeys([*COLUMNS[:3], "patience"]),  # None: per arch
    architectures=ARCHITECTURES,
    default_arch="mlp",
    datasets="ring (8 Gaussians; default for mlp and wgan-gp), digits (embedded; "
    "default for dcgan and --compare), mnist, fashion_mnist, cifar10, npz:, folder:",
    default_dataset=None,
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    flags={  # name: (type, help); their defaults of None: from HYPERPARAMETERS
        "critic_steps": (cli.positive_int, "discriminator steps per generator step"),
        "penalty_weight": (cli.positive_float, "gradient-penalty lambda (wgan-gp)"),
        "latent_dim": (cli.positive_int, "size of the generator's noise input"),
    },
    check_arguments=check_arguments,
    defaults=lambda args: dict(
        zip(COLUMNS, HYPERPARAMETERS[args.arch, kind_of(args.dataset)])
    ),
    snapshot=snapshot,
    headline=lambda args: (QUALITY[kind_of(args.dataset)], "min"),
    fit_kwargs=lambda args, splits, run: dict(
        validation_batch_size=BATCH[kind_of(args.dataset)]
    ),
    variants=lambda args: {  # on the ring: mlp and wgan-gp (dcgan needs images)
        a: {"arch": a}
        for a in ARCHITECTURES
        if (a, kind_of(args.dataset)) in HYPERPARAMETERS
    },
    summary=lambda metrics: caption(metrics, prefix=""),
    quick_sizes=QUICK_SIZES,
    threads=1,  # tiny networks: on 2 shared cores a second thread costs more
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
