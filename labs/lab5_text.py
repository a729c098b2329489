"""Lab 5: text classification and word order: TextCNN, a BiGRU with attention, a
Transformer, word2vec, pretrained embeddings + MLP, and a bag-of-words baseline.

    python -m labs.lab5_text                          # TextCNN on generated reviews
    python -m labs.lab5_text --arch bigru-attention   # which words did it look at?
    python -m labs.lab5_text --compare                # every classifier, same data
    python -m labs.lab5_text --arch word2vec          # word vectors and neighbours
    python -m labs.lab5_text --arch embeddings-mlp --encoder roberta_base_en
    python -m labs.lab5_text --dataset folder:.data/imdb/data/aclImdb   # real IMDB

What it teaches: text becomes token ids in the input pipeline (common/text.py), so
every model is plain Keras on every backend; convolutions over word vectors with
max-over-time pooling (TextCNN); a bidirectional GRU pooled by the workbook's
additive attention (kernels/attention.py), which shows the words that decided; a
keras-hub Transformer encoder; word vectors from skip-gram with negative sampling;
frozen pretrained vectors under an MLP (a keras-hub encoder when one is reachable,
else the lab's own word2vec); and what word order buys over a bag of words
(scikit-learn logistic regression). The default data is generated so that word
order decides the label ("not good", "good but dull", "although dull, superb").

Measured results (generated reviews and real IMDB, against the course bars TextCNN
0.87 and embeddings + MLP 0.86): see the README's results table.
"""

import sys
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from common import cli, experiment, plots, text
from common.cli import first_line
from common.training import evaluate_classifier, fit, inference_ms_per_image

HYPERPARAMETERS = {
    "epochs": 10,  # maximum; EarlyStopping on val_loss may stop sooner
    "batch_size": 64,  # reviews per step
    "learning_rate": {"word2vec": 1e-2, "other": 1e-3},  # Adam step size
    "patience": 2,  # epochs without val_loss improvement before stopping
    "num_reviews": 10000,  # generated set: 70 % train, 10 % validation, 20 % test
    "vocabulary_size": 20000,  # words kept, most frequent first (0 pad, 1 unknown)
    "sequence_length": {"reviews": 48, "other": 400},  # tokens kept per review
    "embedding_dim": 64,  # numbers per word vector
    "filters": 64,  # TextCNN filters per window width
    "kernel_sizes": (3, 4, 5),  # TextCNN window widths, in words
    "gru_units": 48,  # per direction
    "attention_units": 32,  # hidden size of the additive attention
    "heads": 2,  # Transformer attention heads
    "feedforward_dim": 128,  # Transformer feed-forward width
    "dropout": 0.5,  # before each classifier
    "window": 2,  # word2vec: context words on each side of a target word
    "negatives": 4,  # word2vec: random words per true (target, context) pair
    "pairs_per_batch": 1024,  # word2vec batch size, in target words
    "max_pairs": 1_500_000,  # word2vec: true pairs per epoch at most
    "word2vec_epochs": 5,  # pre-training when embeddings-mlp needs its own vectors
    "bow_c": (0.01, 0.03, 0.1, 0.3, 1.0),  # logistic regression C, chosen on val
    "encoder": "roberta_base_en",  # keras-hub preset for embeddings-mlp
}
NEIGHBOUR_QUERIES = "good bad great awful boring not very but plot acting funny horror"


# ----------------------------------------------------------------------------
# Data: generated reviews (common/text.py), imdb_reviews, folder:PATH, csv:PATH
# ----------------------------------------------------------------------------
def load_data(args):
    return text.load_texts(args, quick_sizes=LAB.quick_sizes if args.quick else None)


# ----------------------------------------------------------------------------
# Builders: token ids in, class probabilities out (word2vec: pair logits)
# ----------------------------------------------------------------------------
def token_input(splits):
    """The token ids and their padding mask (True for real words)."""
    tokens = keras.Input(splits.input_shape, dtype="int32", name="token_ids")
    return tokens, ops.not_equal(tokens, 0)


def embed(tokens, splits, args, name="embedding"):
    size = len(splits.vocabulary)
    return keras.layers.Embedding(size, args.embedding_dim, name=name)(tokens)


def classifier(x, splits):
    x = keras.layers.Dropout(HYPERPARAMETERS["dropout"], name="dropout")(x)
    return keras.layers.Dense(splits.num_classes, "softmax", name="softmax")(x)


def build_textcnn(args, splits):
    """Kim (2014): convolutions over 3, 4 and 5 words, max-over-time pooling."""
    tokens, _ = token_input(splits)
    x, pooled = embed(tokens, splits, args), []
    for size in HYPERPARAMETERS["kernel_sizes"]:
        conv = keras.layers.Conv1D(HYPERPARAMETERS["filters"], size, activation="relu")
        pooled.append(keras.layers.GlobalMaxPooling1D()(conv(x)))
    x = keras.layers.Concatenate(name="max_over_time")(pooled)
    return keras.Model(tokens, classifier(x, splits), name="textcnn")


def build_bigru_attention(args, splits):
    """A BiGRU reads both ways; additive attention pools its states (padding, in
    front, gets weight 0; the GRU takes no mask, so torch runs it fused)."""
    from kernels.attention import AdditiveAttentionPooling

    tokens, padding = token_input(splits)
    gru = keras.layers.GRU(HYPERPARAMETERS["gru_units"], return_sequences=True)
    x = keras.layers.Bidirectional(gru, name="bigru")(embed(tokens, splits, args))
    units = HYPERPARAMETERS["attention_units"]
    context, _ = AdditiveAttentionPooling(units, name="attention")(x, mask=padding)
    return keras.Model(tokens, classifier(context, splits), name="bigru_attention")


def build_transformer(args, splits):
    """keras-hub token + position embedding, one encoder block, mean pooling."""
    import keras_hub

    tokens, padding = token_input(splits)
    x = keras_hub.layers.TokenAndPositionEmbedding(
        len(splits.vocabulary), splits.input_shape[0], args.embedding_dim, name="embed"
    )(tokens)
    encoder = keras_hub.layers.TransformerEncoder(
        HYPERPARAMETERS["feedforward_dim"], HYPERPARAMETERS["heads"], name="encoder"
    )
    x = keras.layers.GlobalAveragePooling1D()(encoder(x, padding_mask=padding), padding)
    return keras.Model(tokens, classifier(x, splits), name="transformer")


def build_bow(args, splits):
    """Logistic regression on word counts (fitted by scikit-learn): a weight per
    word and class, summed over the review, then a bias and the softmax."""
    tokens, classes = keras.Input(splits.input_shape, dtype="int32"), splits.num_classes
    weights = keras.layers.Embedding(len(splits.vocabulary), classes, name="words")
    totals = ops.sum(weights(tokens), axis=1)  # padding's weights stay zero
    regression = keras.layers.Dense(classes, "softmax", name="regression")
    return keras.Model(tokens, regression(totals), name="bow")


def build_word2vec(args, splits):
    """Skip-gram: a target word's vector against its true context word's and
    ``negatives`` random words' (logit = dot product)."""
    target = keras.Input((1,), dtype="int32", name="target")
    pairs = 1 + HYPERPARAMETERS["negatives"]
    context = keras.Input((pairs,), dtype="int32", name="context")
    words = embed(target, splits, args, name="word_vectors")
    contexts = embed(context, splits, args, name="context_vectors")
    logits = keras.layers.Flatten()(keras.layers.Dot(axes=2)([words, contexts]))
    return keras.Model([target, context], logits, name="word2vec")


def build_embeddings_mlp(args, splits):
    """Frozen pretrained vectors, averaged over the review, under an MLP."""
    if "train" in splits.features or encoder_features(args, splits):
        inputs = x = keras.Input(splits.features["train"].shape[1:], name="vector")
    else:  # the mean of the review's word2vec vectors
        vectors = word2vec_vectors(args, splits)
        inputs, padding = token_input(splits)
        table = keras.layers.Embedding(*vectors.shape, trainable=False, name="word2vec")
        x = keras.layers.GlobalAveragePooling1D()(table(inputs), mask=padding)
        table.set_weights([vectors])
    x = keras.layers.BatchNormalization(name="standardize")(x)  # tiny means: rescale
    x = keras.layers.Dense(128, activation="relu", name="hidden")(x)
    return keras.Model(inputs, classifier(x, splits), name="embeddings_mlp")


ARCHITECTURES = {
    "textcnn": build_textcnn,
    "bigru-attention": build_bigru_attention,
    "transformer": build_transformer,
    "embeddings-mlp": build_embeddings_mlp,
    "word2vec": build_word2vec,
    "bow": build_bow,
}
CLASSIFIERS = [arch for arch in ARCHITECTURES if arch != "word2vec"]  # --compare


def build_model(args, splits, arch=None, learning_rate=None):
    model = ARCHITECTURES[arch or args.arch](args, splits)
    loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    if model.name == "word2vec":
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    optimizer = keras.optimizers.Adam(learning_rate or args.learning_rate)
    model.compile(optimizer, loss, metrics=metrics)
    return model


# ----------------------------------------------------------------------------
# Pretrained vectors: a keras-hub encoder, else the lab's own word2vec
# ----------------------------------------------------------------------------
def word2vec_data(splits, seed):
    """Skip-gram training and validation pairs (common/text.py)."""
    frequencies = text.word_frequencies(splits.x_train, len(splits.vocabulary))
    sizes = {key: HYPERPARAMETERS[key] for key in ("window", "negatives", "max_pairs")}
    pairs = [
        text.skipgram_pairs(x, frequencies, seed + i, **sizes)
        for i, x in enumerate((splits.x_train, splits.x_val))
    ]
    return pairs[0], pairs[1]


def word2vec_vectors(args, splits):
    """The offline fallback: word2vec trained here, first, on the training texts."""
    epochs = 1 if args.quick else HYPERPARAMETERS["word2vec_epochs"]
    print(f"embeddings-mlp: training word2vec for {epochs} epoch(s) first")
    rate = HYPERPARAMETERS["learning_rate"]["word2vec"]
    model = build_model(args, splits, arch="word2vec", learning_rate=rate)
    (x, y), validation = word2vec_data(splits, args.seed)
    stop = keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True)
    size = HYPERPARAMETERS["pairs_per_batch"]
    history = model.fit(x, y, size, epochs, 2, [stop], validation_data=validation)
    splits.encoder = f"word2vec trained here ({len(history.epoch)} epochs)"
    return model.get_layer("word_vectors").get_weights()[0]


def encoder_features(args, splits):
    """A keras-hub encoder's review vectors in splits.features; False, with one
    notice, when the preset cannot be had (offline: no Kaggle)."""
    try:
        splits.features = text.encoder_vectors(
            args.encoder, splits.texts, args.sequence_length
        )
    except Exception as error:  # offline, unknown preset, broken download
        print(
            f"notice: the keras-hub encoder {args.encoder!r} is not available "
            f"({first_line(error)}); embeddings-mlp uses the word vectors of the "
            "lab's own word2vec step instead."
        )
        return False
    splits.encoder = f"keras-hub preset {args.encoder} (frozen, mean-pooled)"
    return True


# ----------------------------------------------------------------------------
# Training: Keras fit for the networks, scikit-learn for the bag of words
# ----------------------------------------------------------------------------
def set_logistic_regression(model, regression):
    """Copy a fitted scikit-learn LogisticRegression into the bow Keras model."""
    coefficients, intercept = regression.coef_, regression.intercept_
    if len(coefficients) == 1:  # two classes: softmax of (0, z) is sigmoid(z)
        coefficients = np.concatenate([np.zeros_like(coefficients), coefficients])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    model.get_layer("words").set_weights([coefficients.T])
    identity = np.eye(len(intercept), dtype="float32")
    model.get_layer("regression").set_weights([identity, intercept])


def train_bow(model, splits, run, title):
    """One logistic regression per C; the best on validation goes into the model."""
    from sklearn.linear_model import LogisticRegression

    start, size, fitted = time.perf_counter(), len(splits.vocabulary), []
    solver = "liblinear" if splits.num_classes == 2 else "lbfgs"  # the fastest here
    pairs = ((splits.x_train, splits.y_train), (splits.x_val, splits.y_val))
    data, scores = [(text.bag_of_words(x, size), y) for x, y in pairs], []
    for strength in HYPERPARAMETERS["bow_c"]:
        fitted.append(LogisticRegression(C=strength, solver=solver, max_iter=3000))
        scores.append([fitted[-1].fit(*data[0]).score(x, y) for x, y in data])
    best = int(np.argmax([validation for _, validation in scores]))
    set_logistic_regression(model, fitted[best])
    model.optimizer.build(model.trainable_variables)  # saved and reloaded alike
    c, axis = HYPERPARAMETERS["bow_c"], np.log10(HYPERPARAMETERS["bow_c"])
    plots.curves(
        {
            f"{part} accuracy": (axis, np.array(scores)[:, i])
            for i, part in enumerate(("train", "validation"))
        },
        run.plots / "learning_curves.png",
        f"{title}: no epochs, one scikit-learn fit per C\n"
        f"(the best on validation is kept: C = {c[best]:g})",
        "log10 C (C = inverse L2 regularization strength, no unit)",
        "accuracy (share of reviews)",
    )
    seconds = round(time.perf_counter() - start, 2)
    return {
        "status": "completed",
        "epochs_run": 0,
        "train_seconds": seconds,
        "params": int(model.count_params()),
        "bow_c": c[best],
    }


def train(model, splits, run, args):
    title = experiment.default_title(LAB, args)
    if args.arch == "bow":
        return train_bow(model, splits, run, title)
    x, y, validation = splits.x_train, splits.y_train, (splits.x_val, splits.y_val)
    size = args.batch_size
    if args.arch == "word2vec":
        (x, y), validation = word2vec_data(splits, args.seed)
        size = HYPERPARAMETERS["pairs_per_batch"]
    elif args.arch == "embeddings-mlp" and splits.features:
        x, validation = splits.features["train"], (splits.features["val"], splits.y_val)
    stop = {"epochs": args.epochs, "patience": args.patience, "title": title}
    return fit(model, run, x, y, validation, batch_size=size, **stop)


# ----------------------------------------------------------------------------
# Evaluation and plots
# ----------------------------------------------------------------------------
def evaluate(model, splits, run, args):
    title = experiment.default_title(LAB, args)
    if args.arch == "word2vec":
        return evaluate_word2vec(model, splits, run, args, title)
    encoded = args.arch == "embeddings-mlp" and splits.features
    x_test = splits.features["test"] if encoded else splits.x_test
    probabilities = model.predict(x_test, batch_size=256, verbose=0)
    truth, names = splits.y_test, splits.class_names
    figures, predictions, _ = evaluate_classifier(
        probabilities, run, None, truth, names, title
    )
    texts = splits.texts["test"]
    text.misclassified_table(run, texts, truth, predictions, probabilities, names)
    if args.arch in ("bigru-attention", "transformer"):
        attention_plot(model, splits, predictions, probabilities, run, args, title)
    figures["inference_ms_per_sample"] = inference_ms_per_image(model, x_test[:2048])
    if args.arch == "embeddings-mlp":
        figures["encoder"] = splits.encoder
    return figures


def token_weights(model, tokens):
    """(reviews, tokens) attention per word: the BiGRU's pooling weights, or the
    attention head 1 of the Transformer pays each word, averaged over the words."""
    if model.name == "bigru_attention":
        probe = keras.Model(model.inputs, model.get_layer("attention").output[1])
        return probe.predict(tokens, verbose=0)
    embedding = keras.Model(model.inputs, model.get_layer("embed").output)
    mask = tokens != 0
    _, scores = model.get_layer("encoder")(
        ops.convert_to_tensor(embedding.predict(tokens, verbose=0)),
        padding_mask=ops.convert_to_tensor(mask),
        return_attention_scores=True,
    )
    scores = ops.convert_to_numpy(scores)[:, 0] * mask[:, :, None]  # (b, query, key)
    return scores.sum(axis=1) / mask.sum(axis=1, keepdims=True)


def attention_plot(model, splits, predictions, probabilities, run, args, title):
    """plots/attention.png: four short test reviews (two misclassified if there
    are), each word shaded by its attention weight."""
    lengths = np.count_nonzero(splits.x_test, axis=1)
    limit = max(np.percentile(lengths, 25), 12)
    short = np.flatnonzero((lengths >= 4) & (lengths <= limit))
    wrong = [i for i in short if predictions[i] != splits.y_test[i]][:2]
    chosen = wrong + [i for i in short if i not in wrong][: 4 - len(wrong)]
    weights = token_weights(model, splits.x_test[chosen])
    names, rows = splits.class_names, []
    for row, i in enumerate(chosen):
        real = splits.x_test[i] > 0
        caption = (
            f"test review {i}: true {names[splits.y_test[i]]}, predicted "
            f"{names[predictions[i]]} (p = {probabilities[i].max():.2f})"
        )
        words = [splits.vocabulary[token] for token in splits.x_test[i][real]]
        rows.append((caption, words, weights[row][real]))
    which = "head 1, mean over words" if args.arch == "transformer" else "additive"
    path = run.plots / "attention.png"
    text.plot_token_weights(rows, path, f"{title}: attention ({which})")


def evaluate_word2vec(model, splits, run, args, title):
    """Nearest neighbours, a 2-D map, and a linear probe of the word vectors."""
    from sklearn.linear_model import LogisticRegression

    vocabulary = splits.vocabulary
    vectors = model.get_layer("word_vectors").get_weights()[0]
    neighbours = text.nearest_words(vectors, vocabulary, NEIGHBOUR_QUERIES.split())
    run.write_json("neighbours.json", neighbours)
    table = ["| word | nearest of the 5,000 most frequent (cosine) |", "|---|---|"]
    for word, near in neighbours.items():
        table.append(
            f"| {word} | {', '.join(f'{n} ({s:.2f})' for n, s in near.items())} |"
        )
    run.add_section("Nearest neighbours of the word vectors", "\n".join(table))
    path = run.plots / "word_vectors_2d.png"
    text.plot_word_map(vectors, vocabulary, path, title, args.seed)
    parts = (splits.x_train, splits.x_test)
    counts = [text.bag_of_words(x, len(vectors)) for x in parts]
    means = [np.asarray(c @ vectors / np.maximum(c.sum(axis=1), 1)) for c in counts]
    probe = LogisticRegression(max_iter=3000).fit(means[0], splits.y_train)
    probabilities, title = probe.predict_proba(means[1]), f"{title} (linear probe)"
    figures, _, _ = evaluate_classifier(
        probabilities, run, None, splits.y_test, splits.class_names, title
    )
    return {**figures, "evaluation": "linear probe on the mean word vector"}


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
FLAGS = {  # name: (type, help); the defaults are in HYPERPARAMETERS
    "sequence_length": (cli.positive_int, "tokens kept per review, by dataset"),
    "vocabulary_size": (cli.positive_int, "words kept, most frequent first"),
    "embedding_dim": (cli.positive_int, "numbers per word vector"),
    "num_reviews": (cli.positive_int, "reviews: size of the generated set"),
    "encoder": (str, "embeddings-mlp: a keras-hub preset name or a preset folder"),
}


def check_arguments(args, parser):
    if isinstance(args.learning_rate, dict):
        kind = "word2vec" if args.arch == "word2vec" else "other"
        args.learning_rate = HYPERPARAMETERS["learning_rate"][kind]
    if isinstance(args.sequence_length, dict):
        kind = "reviews" if args.dataset == "reviews" else "other"
        args.sequence_length = HYPERPARAMETERS["sequence_length"][kind]
    if args.vocabulary_size < 3:
        parser.error("--vocabulary-size must be at least 3 (padding, unknown, a word)")
    if args.num_reviews < 20:
        parser.error("--num-reviews must be at least 20")


LAB = experiment.Lab(
    name="lab5_text",
    description="Lab 5: text classification: TextCNN, BiGRU + attention, "
    "Transformer, word2vec, embeddings + MLP, bag of words.",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="textcnn",
    datasets="reviews (generated, default), imdb_reviews (tfds), folder:PATH "
    "(aclImdb layout, class sub-folders of .txt files, or a .csv), csv:PATH",
    default_dataset="reviews",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    train=train,
    flags=FLAGS,
    check_arguments=check_arguments,
    variants=lambda args: {arch: {"arch": arch} for arch in CLASSIFIERS},
    title=lambda args: f"Lab 5 {args.arch} on {Path(args.dataset.split(':')[-1]).name}",
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
