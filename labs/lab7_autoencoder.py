"""Lab 7: autoencoder embeddings, and a random forest trained on 1,000 of them.

    python -m labs.lab7_autoencoder                      # conv autoencoder, digits
    python -m labs.lab7_autoencoder --arch dense --embedding-dim 32
    python -m labs.lab7_autoencoder --noise 0.3          # denoising autoencoder
    python -m labs.lab7_autoencoder --compare            # embedding sizes 8 ... 128
    python -m labs.lab7_autoencoder --dataset folder:.data/mnist/train \\
        --test-dataset folder:.data/mnist/test --epochs 10 --batch-size 128

What it teaches: an autoencoder, trained only to reproduce its input through a
narrow layer, learns a small code for each image without labels; the codes are then
features for a classic classifier that sees few labels: a scikit-learn random
forest on 1,000 labelled training images, as the course set it. The same forest on
the same images' raw pixels and on a PCA of the same size (fitted, like the
autoencoder, on every training image without labels) says whether the learned
embedding helps; reconstruction errors compare it with PCA (a linear autoencoder).

Measured results (digits; real MNIST against the course's 90 % bar): README, Results.
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
    "embedding_dim": 16,  # numbers per image in the code (the course: at most 128)
    "labelled": 1000,  # labelled training images the random forest sees
    "noise": 0.0,  # std of Gaussian noise on training inputs (pixels in [0, 1])
    "width": 32,  # conv: filters of the first conv layer; dense: 8x as many units
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
    fewest, most = splits.num_classes, len(splits.x_train)
    if not fewest <= args.labelled <= most:
        raise WorkbookError(
            f"--labelled {args.labelled} is out of range for {args.dataset}: the "
            f"forests need at least one image per class ({fewest}) and the training "
            f"split holds {most} (after the validation images are held out). Give "
            f"--labelled between {fewest} and {most} (the course used 1000)."
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
    noisy = keras.layers.GaussianNoise(noise, seed=seed, name="noise")
    return inputs, noisy(inputs) if noise > 0 else inputs


def build_dense(input_shape, embedding_dim, noise=0.0, seed=0, width=32):
    """Flatten, a hidden layer of 8 x width units, the code, the same, the pixels."""
    hidden = 8 * width
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


def build_conv(input_shape, embedding_dim, noise=0.0, seed=0, width=32):
    """Two stride-2 convolutions, the code, and their mirror: two stride-2
    transposed convolutions back to the image size."""
    height, image_width, channels = input_shape
    inputs, x = inputs_and_noise(input_shape, noise, seed)
    for index, filters in enumerate((width, 2 * width), start=1):
        x = keras.layers.Conv2D(
            filters, 3, 2, "same", activation="relu", name=f"encoder_conv{index}"
        )(x)
    grid = tuple(x.shape[1:])  # (ceil(H / 4), ceil(W / 4), 2 * width)
    x = keras.layers.Flatten(name="flatten")(x)
    code = keras.layers.Dense(embedding_dim, name="embedding")(x)
    x = keras.layers.Dense(int(np.prod(grid)), activation="relu", name="decoder_dense")(
        code
    )
    x = keras.layers.Reshape(grid, name="decoder_grid")(x)
    x = keras.layers.Conv2DTranspose(
        width, 3, 2, "same", activation="relu", name="decoder_up1"
    )(x)
    x = keras.layers.Conv2DTranspose(
        channels, 3, 2, "same", activation="sigmoid", name="decoder_up2"
    )(x)
    extra_rows, extra_columns = 4 * grid[0] - height, 4 * grid[1] - image_width
    if extra_rows or extra_columns:  # sizes not divisible by 4: crop the padding
        x = keras.layers.Cropping2D(((0, extra_rows), (0, extra_columns)))(x)
    outputs = keras.layers.Identity(name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="conv_autoencoder")


ARCHITECTURES = {"dense": build_dense, "conv": build_conv}


def build_model(args, splits):
    model = ARCHITECTURES[args.arch](
        splits.input_shape, args.embedding_dim, args.noise, args.seed, args.width
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="mse")
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
    return keras.Model(model.inputs, model.get_layer("embedding").output)


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


def evaluate(model, splits, run, args):
    from sklearn.decomposition import PCA
    from sklearn.metrics import accuracy_score

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
    forest_title = (
        f"Random forest on {len(chosen)} {args.embedding_dim}-d {args.arch}-"
        f"autoencoder embeddings\n{args.dataset}"
    )
    scores, _, report = evaluate_classifier(
        probabilities, run, None, splits.y_test, splits.class_names, forest_title
    )
    figures["test_accuracy"] = scores["test_accuracy"]
    figures["macro_f1"] = scores["macro_f1"]

    pixels = forest(x_train[chosen], labels, x_test, classes, args)
    figures["pixel_rf_accuracy"] = accuracy_score(splits.y_test, pixels.argmax(1))
    size = min(args.embedding_dim, *x_train.shape)  # PCA has at most that many
    pca = PCA(size, random_state=args.seed).fit(x_train)  # every image, no labels
    projected = forest(
        pca.transform(x_train[chosen]), labels, pca.transform(x_test), classes, args
    )
    figures["pca_components"] = size
    figures["pca_rf_accuracy"] = accuracy_score(splits.y_test, projected.argmax(1))
    restored = pca.inverse_transform(pca.transform(x_test))
    figures["pca_reconstruction_mse"] = float(np.mean((restored - x_test) ** 2))
    figures["gain_over_best_baseline"] = figures["test_accuracy"] - max(
        figures["pixel_rf_accuracy"], figures["pca_rf_accuracy"]
    )
    # the sampling error of a test accuracy: differences below ~2 of them are noise
    figures["accuracy_standard_error"] = float(
        np.sqrt(scores["test_accuracy"] * (1 - scores["test_accuracy"]) / len(x_test))
    )
    noisy = None
    if args.noise > 0:  # test images with the training noise: how much is removed?
        rng = np.random.default_rng(args.seed)
        noise = rng.normal(0.0, args.noise, splits.x_test.shape).astype("float32")
        noisy = splits.x_test + noise
        cleaned = model.predict(noisy, batch_size=256, verbose=0)
        figures["noisy_input_mse"] = float(np.mean(noise**2))
        figures["denoised_mse"] = float(np.mean((cleaned - splits.x_test) ** 2))

    reconstruction_grid(model, splits, noisy, run, args)
    projection_plot(test_codes, splits.y_test, splits.class_names, run, args)
    run.add_section("Does the learned embedding help?", verdict(figures))
    run.add_section("Random forest on the embeddings (test set)", f"```\n{report}```")
    return figures


def verdict(figures):
    """One paragraph for report.md: the learned embedding against both baselines."""
    gain, error = figures["gain_over_best_baseline"], figures["accuracy_standard_error"]
    side = "ahead of" if gain > 0 else "behind"
    noise = "within" if abs(gain) <= 2 * error else "beyond"
    return (
        f"A random forest on {figures['labelled']} labelled training images scores "
        f"{figures['test_accuracy']:.4f} on the learned {figures['embedding_dim']}-"
        f"number embedding, {figures['pixel_rf_accuracy']:.4f} on raw pixels and "
        f"{figures['pca_rf_accuracy']:.4f} on {figures['pca_components']} PCA "
        f"components. The embedding is {abs(gain):.4f} {side} the better baseline, "
        f"{noise} twice the standard error of a test accuracy ({error:.4f}). Mean "
        f"squared pixel error on test: autoencoder {figures['reconstruction_mse']:.4f}"
        f", PCA {figures['pca_reconstruction_mse']:.4f}."
    )


def reconstruction_grid(model, splits, noisy, run, args):
    """plots/reconstructions.png: one test image per class, (noisy,) rebuilt."""
    _, firsts = np.unique(splits.y_test, return_index=True)  # one of each class
    picked = list(dict.fromkeys([*firsts[:10], *range(len(splits.y_test))]))[:10]
    rows = [splits.x_test[picked]]
    captions = [f"original {splits.class_names[splits.y_test[i]]}" for i in picked]
    done, middle = "rebuilt", ""
    if noisy is not None:
        rows.append(noisy[picked])
        captions += [f"noisy (std {args.noise:g})"] * len(picked)
        done, middle = "denoised", "noisy inputs (middle), "
    rows.append(model.predict(rows[-1], verbose=0))
    errors = np.mean((rows[-1] - rows[0]) ** 2, axis=(1, 2, 3))
    captions += [f"{done}, MSE {error:.3f}" for error in errors]
    plots.image_grid(
        np.concatenate(rows),
        captions,
        run.plots / "reconstructions.png",
        f"{title(args)}\ntest originals (top), {middle}{done} (bottom)",
        columns=len(picked),
    )


def projection_plot(codes, labels, class_names, run, args):
    """plots/embedding_tsne.png: a t-SNE map of test embeddings, coloured by class."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    count = min(len(codes), PROJECTION_POINTS)  # a seeded sample: files come sorted
    picked = np.random.default_rng(args.seed).choice(len(codes), count, replace=False)
    points = TSNE(
        2, perplexity=min(30.0, (count - 1) / 3), init="pca", random_state=args.seed
    ).fit_transform(codes[picked])
    figure, axis = plt.subplots(figsize=(7.5, 6))
    colors = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for index, name in enumerate(class_names):
        mine = labels[picked] == index
        if mine.any():
            axis.scatter(*points[mine].T, s=8, color=colors(index % 20), label=name)
    axis.set_xlabel("t-SNE dimension 1 (arbitrary units)")
    axis.set_ylabel("t-SNE dimension 2 (arbitrary units)")
    axis.set_title(
        f"{title(args)}\nt-SNE of {count} test embeddings, coloured by true class"
    )
    axis.legend(
        title="class", markerscale=2, bbox_to_anchor=(1.01, 1), loc="upper left"
    )
    plots.save(figure, run.plots / "embedding_tsne.png")


def conclude(results, run, args):
    """--compare: a table and plots/accuracy_by_embedding_size.png, learned
    embedding vs PCA vs raw pixels for every embedding size."""
    import matplotlib.pyplot as plt

    rows = [row for row in results.values() if "pca_rf_accuracy" in row]
    rows.sort(key=lambda row: row["embedding_dim"])
    if not rows:
        return {}
    table = ["| size | learned | PCA | autoencoder MSE | PCA MSE |", "|---" * 5 + "|"]
    for row in rows:
        mse = f"{row['reconstruction_mse']:.4f} | {row['pca_reconstruction_mse']:.4f}"
        table.append(
            f"| {row['embedding_dim']} | {row['test_accuracy']:.4f} | "
            f"{row['pca_rf_accuracy']:.4f} | {mse} |"
        )
    run.add_section(
        "Random-forest test accuracy and test reconstruction error (mean squared "
        f"pixel error) by size; raw pixels: {rows[0]['pixel_rf_accuracy']:.4f}",
        "\n".join(table),
    )
    pixels = int(np.prod(run.config["data"]["input_shape"]))
    sizes = [row["embedding_dim"] for row in rows]
    capped = max(row["pca_components"] for row in rows)
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    errors = [2 * row["accuracy_standard_error"] for row in rows]
    axis.errorbar(
        sizes,
        [row["test_accuracy"] for row in rows],
        yerr=errors,
        fmt="o-",
        capsize=4,
        label="learned embedding (bars: 2 standard errors)",
    )
    axis.plot(
        sizes,
        [row["pca_rf_accuracy"] for row in rows],
        "s-",
        label=f"PCA of the same size (at most {capped} components)",
    )
    axis.axhline(
        rows[0]["pixel_rf_accuracy"],
        color="gray",
        ls="--",
        label=f"{pixels} raw pixels",
    )
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [str(size) for size in sizes])
    axis.set_xlabel("embedding size (numbers per image, log scale)")
    axis.set_ylabel("random-forest test accuracy (fraction)")
    axis.set_title(
        f"Random forest on {rows[0]['labelled']} labelled images: {args.arch} "
        f"autoencoder\nembeddings vs PCA vs raw pixels on {args.dataset}"
    )
    axis.grid(alpha=0.3)
    axis.legend()
    plots.save(figure, run.plots / "accuracy_by_embedding_size.png")
    return {}


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
FLAGS = {  # name: (type, help); the defaults are in HYPERPARAMETERS
    "embedding_dim": (cli.positive_int, "numbers per image; course bar: <= 128"),
    "labelled": (cli.positive_int, "labelled training images the forests see"),
    "noise": (cli.fraction, "denoising: std of input noise, pixels in [0, 1]"),
    "width": (cli.positive_int, "conv: first layer's filters; dense: units / 8"),
    "trees": (cli.positive_int, "trees in each random forest"),
}


def check_arguments(args, parser):
    if args.quick:
        args.trees = min(args.trees, 50)
    if args.embedding_dim > COURSE_MAX_DIM:
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
        f"random forest on {metrics['labelled']} labelled images, test accuracy: "
        f"embedding {metrics['test_accuracy']:.4f}, raw pixels "
        f"{metrics['pixel_rf_accuracy']:.4f}, PCA {metrics['pca_rf_accuracy']:.4f}"
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
    flags=FLAGS,
    check_arguments=check_arguments,
    headline=("test_accuracy", "max"),
    train=train,
    variants=variants,
    conclude=conclude,
    summary=summary,
    title=title,
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
