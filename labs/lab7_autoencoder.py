"""Lab 7: autoencoder embeddings, and a random forest trained on 1,000 of them.

    python -m labs.lab7_autoencoder                      # conv autoencoder, digits
    python -m labs.lab7_autoencoder --arch dense --embedding-dim 16
    python -m labs.lab7_autoencoder --noise 0.3          # denoising autoencoder
    python -m labs.lab7_autoencoder --compare            # embedding sizes 8 ... 128
    python -m labs.lab7_autoencoder --dataset folder:.data/mnist/train \\
        --test-dataset folder:.data/mnist/test           # real MNIST from PNG folders

What it teaches: an autoencoder learns a small code for an image from unlabelled
data (it is trained only to reproduce its input through a narrow layer); those
codes are then features for a classic classifier trained on few labels, here a
scikit-learn random forest on 1,000 labelled training images, as the course set
it. The same run trains the same forest on the same 1,000 images' raw pixels and on
a PCA of the same size (fitted, like the autoencoder, on every training image
without labels), so it says whether the learned embedding helps, and compares the
autoencoder's reconstruction error with PCA's (a linear autoencoder is PCA).

Measured results (digits and real MNIST, against the course's 90 % bar): see the
README's results table.
"""

import sys

import keras
import numpy as np

from common import cli, experiment, plots
from common.cli import WorkbookError
from common.data import load_images
from common.training import evaluate_classifier, fit

HYPERPARAMETERS = {
    "epochs": 60,  # maximum; EarlyStopping on the validation reconstruction loss
    "batch_size": 64,  # images per step
    "learning_rate": 2e-3,  # Adam step size
    "patience": 6,  # epochs without val_loss improvement before stopping
    "embedding_dim": 32,  # numbers per image in the code (the course: at most 128)
    "labelled": 1000,  # labelled training images the random forest sees
    "noise": 0.0,  # std of Gaussian noise on training inputs (pixels in [0, 1])
    "width": 32,  # conv: filters of the first conv layer (the second has twice)
    "hidden": 256,  # dense: units of the hidden layer on each side of the code
    "trees": 200,  # trees in each random forest
}
COURSE_MAX_DIM = 128  # the course's bar (90 % on MNIST) assumes codes this small
COMPARE_SIZES = (8, 16, 32, 64, 128)
PROJECTION_POINTS = 1000  # test embeddings drawn in the t-SNE map


# ----------------------------------------------------------------------------
# Data: images with their labels; the autoencoder never sees the labels
# ----------------------------------------------------------------------------
def load_data(args):
    splits = load_images(args.dataset, seed=args.seed, test_dataset=args.test_dataset)
    available = len(splits.x_train)
    if args.labelled > available:
        raise WorkbookError(
            f"--labelled {args.labelled} asks for more labelled images than the "
            f"training split of {args.dataset} holds ({available}, after the "
            "validation images are held out). Give --labelled "
            f"{available} or fewer (the course used 1000)."
        )
    if args.labelled < splits.num_classes:
        raise WorkbookError(
            f"--labelled {args.labelled} is fewer than the {splits.num_classes} "
            "classes, so the random forest could not see every class. Give "
            f"--labelled {splits.num_classes} or more (the course used 1000)."
        )
    return splits


def labelled_subset(labels, count, seed):
    """Indices of ``count`` training images, stratified by class when possible."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if count >= len(labels):
        return index
    try:
        chosen, _ = train_test_split(
            index, train_size=count, random_state=seed, stratify=labels
        )
    except ValueError:  # a class too small to stratify: a plain random sample
        chosen = np.random.default_rng(seed).choice(index, count, replace=False)
    return np.sort(chosen)


# ----------------------------------------------------------------------------
# Builders: an encoder down to the layer named "embedding", a decoder back up
# ----------------------------------------------------------------------------
def inputs_and_noise(input_shape, noise, seed):
    """The image input; with ``noise``, Gaussian noise that is active in training only
    (a denoising autoencoder: noisy input, clean target)."""
    inputs = keras.Input(input_shape, name="image")
    if noise > 0:
        return inputs, keras.layers.GaussianNoise(noise, seed=seed, name="noise")(
            inputs
        )
    return inputs, inputs


def build_dense(input_shape, embedding_dim, noise=0.0, seed=0, hidden=256, **_):
    """Flatten, one hidden layer, the code, one hidden layer, the pixels."""
    inputs, x = inputs_and_noise(input_shape, noise, seed)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(hidden, activation="relu", name="encoder_dense")(x)
    code = keras.layers.Dense(embedding_dim, name="embedding")(x)
    x = keras.layers.Dense(hidden, activation="relu", name="decoder_dense")(code)
    x = keras.layers.Dense(
        int(np.prod(input_shape)), activation="sigmoid", name="decoder_pixels"
    )(x)
    outputs = keras.layers.Reshape(input_shape, name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="dense_autoencoder")


def build_conv(input_shape, embedding_dim, noise=0.0, seed=0, width=32, **_):
    """Two stride-2 convolutions, the code, two stride-2 transposed convolutions."""
    height, image_width, channels = input_shape
    inputs, x = inputs_and_noise(input_shape, noise, seed)
    for index, filters in enumerate((width, 2 * width), start=1):
        x = keras.layers.Conv2D(
            filters,
            3,
            2,
            padding="same",
            activation="relu",
            name=f"encoder_conv{index}",
        )(x)
    grid = tuple(x.shape[1:])  # (ceil(H / 4), ceil(W / 4), 2 * width)
    x = keras.layers.Flatten(name="flatten")(x)
    code = keras.layers.Dense(embedding_dim, name="embedding")(x)
    x = keras.layers.Dense(int(np.prod(grid)), activation="relu", name="decoder_dense")(
        code
    )
    x = keras.layers.Reshape(grid, name="decoder_grid")(x)
    for index, filters in enumerate((2 * width, width), start=1):
        x = keras.layers.Conv2DTranspose(
            filters, 3, 2, padding="same", activation="relu", name=f"decoder_up{index}"
        )(x)
    x = keras.layers.Conv2D(
        channels, 3, padding="same", activation="sigmoid", name="decoder_pixels"
    )(x)
    extra_rows, extra_columns = 4 * grid[0] - height, 4 * grid[1] - image_width
    if extra_rows or extra_columns:  # sizes not divisible by 4: crop the padding
        x = keras.layers.Cropping2D(((0, extra_rows), (0, extra_columns)))(x)
    outputs = keras.layers.Identity(name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="conv_autoencoder")


ARCHITECTURES = {"dense": build_dense, "conv": build_conv}


def build_model(args, splits):
    model = ARCHITECTURES[args.arch](
        splits.input_shape,
        args.embedding_dim,
        noise=args.noise,
        seed=args.seed,
        width=args.width,
        hidden=args.hidden,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.MeanSquaredError(),
    )
    return model


def train(model, splits, run, args):
    """Keras fit with the workbook's callbacks, the input as its own target."""
    return fit(
        model,
        run,
        splits.x_train,
        splits.x_train,
        validation_data=(splits.x_val, splits.x_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        title=title(args),
    )


def encoder_of(model):
    """The trained encoder: the autoencoder's input up to its "embedding" layer."""
    return keras.Model(
        model.inputs, model.get_layer("embedding").output, name="encoder"
    )


# ----------------------------------------------------------------------------
# Evaluation: reconstruction, then three random forests on the same images
# ----------------------------------------------------------------------------
def forest(features, labels, test_features, num_classes, args):
    """A random forest fitted on ``features``; its test class probabilities."""
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(
        n_estimators=args.trees, random_state=args.seed, n_jobs=args.threads
    )
    model.fit(features, labels)
    probabilities = np.zeros((len(test_features), num_classes))
    probabilities[:, model.classes_] = model.predict_proba(test_features)
    return probabilities


def accuracy(probabilities, labels):
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def evaluate(model, splits, run, args):
    from sklearn.decomposition import PCA

    x_train = splits.x_train.reshape(len(splits.x_train), -1)
    x_test = splits.x_test.reshape(len(splits.x_test), -1)
    chosen = labelled_subset(splits.y_train, args.labelled, args.seed)
    labels, classes = splits.y_train[chosen], splits.num_classes
    reconstructions = model.predict(splits.x_test, batch_size=256, verbose=0)
    figures = {
        "embedding_dim": args.embedding_dim,
        "labelled": len(chosen),
        "reconstruction_mse": float(np.mean((reconstructions - splits.x_test) ** 2)),
    }

    encoder = encoder_of(model)
    test_codes = encoder.predict(splits.x_test, batch_size=256, verbose=0)
    train_codes = encoder.predict(splits.x_train[chosen], batch_size=256, verbose=0)
    probabilities = forest(train_codes, labels, test_codes, classes, args)
    scores, _, report = evaluate_classifier(
        probabilities, run, None, splits.y_test, splits.class_names, title(args)
    )
    figures["test_accuracy"] = scores["test_accuracy"]
    figures["macro_f1"] = scores["macro_f1"]

    pixels = forest(x_train[chosen], labels, x_test, classes, args)
    figures["pixel_rf_accuracy"] = accuracy(pixels, splits.y_test)
    size = min(args.embedding_dim, *x_train.shape)  # PCA has at most that many
    pca = PCA(size, random_state=args.seed).fit(x_train)  # every image, no labels
    projected = forest(
        pca.transform(x_train[chosen]), labels, pca.transform(x_test), classes, args
    )
    figures["pca_components"] = size
    figures["pca_rf_accuracy"] = accuracy(projected, splits.y_test)
    restored = pca.inverse_transform(pca.transform(x_test))
    figures["pca_reconstruction_mse"] = float(np.mean((restored - x_test) ** 2))
    figures["gain_over_best_baseline"] = figures["test_accuracy"] - max(
        figures["pixel_rf_accuracy"], figures["pca_rf_accuracy"]
    )
    noisy = None
    if args.noise > 0:
        noisy, denoising = denoising_figures(model, splits, args)
        figures.update(denoising)

    reconstruction_grid(model, splits, noisy, run, args)
    projection_plot(test_codes, splits.y_test, splits.class_names, run, args)
    if run.config.get("variant"):  # one size of --compare: redraw the size plot
        accuracy_by_size_plot(run, figures, args)
    run.add_section("Does the learned embedding help?", verdict(figures))
    run.add_section("Random forest on the embeddings (test set)", f"```\n{report}```")
    return figures


def denoising_figures(model, splits, args):
    """Test images with the training noise, and how much of it the model removes."""
    rng = np.random.default_rng(args.seed)
    noisy = splits.x_test + rng.normal(0.0, args.noise, splits.x_test.shape)
    noisy = noisy.astype("float32")
    cleaned = model.predict(noisy, batch_size=256, verbose=0)
    return noisy, {
        "noisy_input_mse": float(np.mean((noisy - splits.x_test) ** 2)),
        "denoised_mse": float(np.mean((cleaned - splits.x_test) ** 2)),
    }


def verdict(figures):
    """One paragraph for report.md: the learned embedding against both baselines."""
    best = max(figures["pixel_rf_accuracy"], figures["pca_rf_accuracy"])
    gain = figures["gain_over_best_baseline"]
    word = "beats" if gain > 0 else "does not beat"
    return (
        f"A random forest on {figures['labelled']} labelled training images scores "
        f"{figures['test_accuracy']:.4f} on the learned {figures['embedding_dim']}-"
        f"number embedding, {figures['pixel_rf_accuracy']:.4f} on raw pixels and "
        f"{figures['pca_rf_accuracy']:.4f} on {figures['pca_components']} PCA "
        f"components: the embedding {word} the best baseline ({best:.4f}) by "
        f"{gain:+.4f}. Reconstruction error (test, mean squared pixel error): "
        f"autoencoder {figures['reconstruction_mse']:.4f}, PCA "
        f"{figures['pca_reconstruction_mse']:.4f}."
    )


def reconstruction_grid(model, splits, noisy, run, args):
    """plots/reconstructions.png: one test image per class, (noisy,) rebuilt."""
    firsts = [np.flatnonzero(splits.y_test == c)[:1] for c in range(10)]
    picked = np.concatenate([*firsts, np.arange(10)])
    picked = list(dict.fromkeys(picked.tolist()))[:10]
    originals = splits.x_test[picked]
    names = [splits.class_names[splits.y_test[i]] for i in picked]
    rows, captions = [originals], [f"original {name}" for name in names]
    inputs = originals
    if noisy is not None:
        inputs = noisy[picked]
        rows.append(inputs)
        captions += [f"noisy (std {args.noise:g})"] * len(picked)
    rebuilt = model.predict(inputs, verbose=0)
    errors = np.mean((rebuilt - originals) ** 2, axis=(1, 2, 3))
    rows.append(rebuilt)
    captions += [f"rebuilt, MSE {error:.3f}" for error in errors]
    what = "noisy inputs, denoised" if noisy is not None else "reconstructions"
    plots.image_grid(
        np.concatenate(rows),
        captions,
        run.plots / "reconstructions.png",
        f"{title(args)}: test originals (top), {what} (below)",
        columns=len(picked),
    )


def projection_plot(codes, labels, class_names, run, args):
    """plots/embedding_tsne.png: a t-SNE map of test embeddings, coloured by class."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    count = min(len(codes), PROJECTION_POINTS)
    points = TSNE(
        2, perplexity=min(30.0, (count - 1) / 3), init="pca", random_state=args.seed
    ).fit_transform(codes[:count])
    figure, axis = plt.subplots(figsize=(7.5, 6))
    colors = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for index, name in enumerate(class_names):
        mine = labels[:count] == index
        if mine.any():
            axis.scatter(*points[mine].T, s=8, color=colors(index % 20), label=name)
    axis.set_xlabel("t-SNE dimension 1 (arbitrary units)")
    axis.set_ylabel("t-SNE dimension 2 (arbitrary units)")
    axis.set_title(
        f"{title(args)}\nt-SNE of {count} test embeddings, coloured by true class"
    )
    axis.legend(title="class", fontsize=8, markerscale=2, loc="best")
    plots.save(figure, run.plots / "embedding_tsne.png")


def accuracy_by_size_plot(run, figures, args):
    """--compare: plots/accuracy_by_embedding_size.png in the comparison folder,
    from the sizes finished so far (redrawn after each one)."""
    import json

    rows = [figures]
    for sibling in run.path.parent.glob("*/metrics.json"):
        if sibling.parent != run.path:
            rows.append(json.loads(sibling.read_text()))
    rows = sorted(
        (row for row in rows if "pixel_rf_accuracy" in row),
        key=lambda row: row["embedding_dim"],
    )
    sizes = [row["embedding_dim"] for row in rows]
    plots.curves(
        {
            "learned embedding": (sizes, [row["test_accuracy"] for row in rows]),
            "PCA of the same size": (sizes, [row["pca_rf_accuracy"] for row in rows]),
        },
        run.path.parent / "plots" / "accuracy_by_embedding_size.png",
        f"Random forest on {rows[0]['labelled']} labelled images, {args.arch} "
        f"autoencoder on {args.dataset}",
        "embedding size (numbers per image)",
        "test accuracy (fraction)",
        markers=[(rows[0]["pixel_rf_accuracy"], "raw pixels")],
    )


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument(
        "--embedding-dim",
        type=cli.positive_int,
        default=HYPERPARAMETERS["embedding_dim"],
        help="numbers per image in the code (the course's bar assumes <= 128)",
    )
    parser.add_argument(
        "--labelled",
        type=cli.positive_int,
        default=HYPERPARAMETERS["labelled"],
        metavar="N",
        help="labelled training images the random forests are fitted on",
    )
    parser.add_argument(
        "--noise",
        type=cli.fraction,
        default=HYPERPARAMETERS["noise"],
        help="denoising: std of Gaussian noise on training inputs (pixels in [0, 1])",
    )
    parser.add_argument(
        "--width",
        type=cli.positive_int,
        default=HYPERPARAMETERS["width"],
        help="conv: filters of the first conv layer",
    )
    parser.add_argument(
        "--hidden",
        type=cli.positive_int,
        default=HYPERPARAMETERS["hidden"],
        help="dense: units of each hidden layer",
    )
    parser.add_argument(
        "--trees",
        type=cli.positive_int,
        default=HYPERPARAMETERS["trees"],
        help="trees in each random forest",
    )


def check_arguments(args, parser):
    if args.embedding_dim > COURSE_MAX_DIM and not args.compare:
        print(
            f"notice: --embedding-dim {args.embedding_dim} is above "
            f"{COURSE_MAX_DIM}; the course's 90 % bar assumes embeddings of at most "
            f"{COURSE_MAX_DIM} numbers."
        )


def variants(args):
    """--compare: one run per embedding size (and the --embedding-dim given)."""
    sizes = sorted({*COMPARE_SIZES, args.embedding_dim})
    return {f"dim{size}": {"embedding_dim": size} for size in sizes}


def title(args):
    noise = f", noise std {args.noise:g}" if args.noise > 0 else ""
    return (
        f"Lab 7 {args.arch} autoencoder ({args.embedding_dim}-d{noise}) "
        f"on {args.dataset}"
    )


def summary(metrics):
    return (
        f"random forest on {metrics['labelled']} labelled images: test accuracy "
        f"{metrics['test_accuracy']:.4f} on {metrics['embedding_dim']}-d embeddings, "
        f"{metrics['pixel_rf_accuracy']:.4f} on raw pixels, "
        f"{metrics['pca_rf_accuracy']:.4f} on PCA; {metrics['train_seconds']:.0f} s "
        "training"
    )


LAB = experiment.Lab(
    name="lab7_autoencoder",
    description="Lab 7: autoencoder embeddings and a random forest on 1,000 of them.",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="conv",
    datasets="digits (embedded, default), mnist, fashion_mnist (tfds), npz:PATH, "
    "folder:PATH",
    default_dataset="digits",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    headline=("test_accuracy", "max"),
    train=train,
    variants=variants,
    summary=summary,
    title=title,
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
