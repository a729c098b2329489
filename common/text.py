"""Text data: review folders, csv files and tfds ``imdb_reviews`` as lists of strings,
and their token ids.

Tokenization happens here, in the input pipeline: a Keras ``TextVectorization``
vocabulary adapted on the training texts only turns every split into int32 token
ids, so the models themselves are plain Keras on every backend. Padding goes in
front (:func:`pre_pad`), where a recurrent layer reads it first and forgets it.

``folder:PATH`` takes the aclImdb layout (``train/`` and ``test/``, optionally
``val/``, each with one sub-folder of .txt files per class; ``train/unsup`` is
ignored), or one sub-folder of .txt files per class, or a .csv file with ``text``
and ``label`` columns (also ``csv:PATH``). Unreadable and empty files are skipped
and counted.
"""

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.cli import WorkbookError
from common.data import Splits, check_classes, load_text

FOLDER_HELP = (
    "folder:PATH takes the aclImdb layout (PATH/train/pos/*.txt, PATH/train/neg/"
    "*.txt, the same under PATH/test), one sub-folder of .txt files per class "
    "(PATH/pos, PATH/neg), or a .csv file with a text and a label column."
)


@dataclass
class TextSplits(Splits):
    """Token ids in ``x_*``; the vocabulary (id -> word), the raw texts per split, and
    a pretrained encoder's text vectors per split (with the encoder's name)."""

    vocabulary: list = field(default_factory=list)
    texts: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    encoder: str = ""


def clean(text):
    """One line of text: HTML line breaks (IMDB has them) and runs of blanks to one
    space."""
    return " ".join(re.sub(r"<br\s*/?>", " ", text).split())


def pre_pad(token_ids):
    """Move each row's zeros (padding) to the front, keeping the words' order."""
    order = np.argsort(np.asarray(token_ids) != 0, axis=1, kind="stable")
    return np.take_along_axis(np.asarray(token_ids), order, axis=1)


def read_folder(path):
    """({part: (texts, labels)}, class names) from a folder or a .csv file."""
    root = Path(path)
    if root.suffix.lower() == ".csv":
        return read_csv(root)
    parts = [part for part in ("train", "val", "test") if (root / part).is_dir()]
    parts = parts if "train" in parts and "test" in parts else [""]
    top = root / parts[0]
    names = sorted(p.name for p in top.iterdir() if p.is_dir()) if top.is_dir() else []
    names = [name for name in names if name != "unsup"]  # aclImdb's unlabelled
    data, skipped = {}, []
    for part in parts:
        texts, labels = [], []
        for label, name in enumerate(names):
            for file in sorted((root / part / name).glob("*.txt")):
                try:
                    text = clean(file.read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    text = ""
                if not text:
                    skipped.append(file)
                    continue
                texts.append(text)
                labels.append(label)
        data[part or "all"] = (texts, labels)
    if not sum(len(texts) for texts, _ in data.values()):
        raise WorkbookError(f"no readable text files under {root}. {FOLDER_HELP}")
    if skipped:
        print(
            f"warning: skipped {len(skipped)} unreadable or empty text file(s) "
            f"under {root}, the first {skipped[0]}"
        )
    return data, names


def read_csv(path):
    """A csv file whose header row names a text and a label column."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as file:
            reader = csv.DictReader(file)
            rows, header = list(reader), reader.fieldnames or []
    except OSError as error:
        raise WorkbookError(
            f"cannot read {path} ({error.strerror}). Give a csv file whose header "
            "row names a text and a label column."
        ) from error
    missing = [column for column in ("text", "label") if column not in header]
    if missing or not rows:
        problem = f"no {' or '.join(missing)} column" if missing else "no data rows"
        raise WorkbookError(
            f"{path} has {problem} (header: {', '.join(header) or 'none'}). A csv "
            "file needs a header row naming text and label, then one row a text."
        )
    empty = [i + 2 for i, row in enumerate(rows) if not clean(row["text"] or "")]
    if empty:
        raise WorkbookError(
            f"{path}: {len(empty)} row(s) have an empty text, the first on line "
            f"{empty[0]}. Remove those rows or fill in their text."
        )
    names = sorted({row["label"] for row in rows})
    labels = [names.index(row["label"]) for row in rows]
    return {"all": ([clean(row["text"]) for row in rows], labels)}, names


def read_texts(spec, num_reviews=10000, seed=0):
    """({part: (texts, labels)}, class names, source) for a --dataset value:
    reviews (generated), imdb_reviews (tfds), folder:PATH or csv:PATH."""
    sentiment = ["negative", "positive"]
    if spec == "reviews":
        parts = generated_reviews(num_reviews, seed)
        return parts, sentiment, "generated reviews (word order decides)"
    if spec == "imdb_reviews":
        train, test = load_text("imdb_reviews")
        parts = {"train": train, "test": test}
        parts = {part: ([clean(t) for t in x], y) for part, (x, y) in parts.items()}
        return parts, sentiment, "tensorflow-datasets imdb_reviews"
    if spec.startswith("folder:"):
        return (*read_folder(spec[7:]), f"text folder {spec[7:]}")
    if spec.startswith("csv:"):
        return (*read_csv(spec[4:]), f"csv file {spec[4:]}")
    raise WorkbookError(
        f"unknown dataset {spec!r}. Use reviews (generated), imdb_reviews "
        "(tensorflow-datasets), folder:PATH (aclImdb layout, class sub-folders of "
        ".txt files, or a .csv file) or csv:PATH (text and label columns)."
    )


def load_texts(args, quick_sizes=None):
    """TextSplits for ``args.dataset`` (and ``args.test_dataset``): see
    :func:`text_splits`; ``args`` also gives num_reviews and seed."""
    parts, names, source = read_texts(args.dataset, args.num_reviews, args.seed)
    if args.test_dataset:
        test_parts, test_names, test_source = read_texts(
            args.test_dataset, args.num_reviews, args.seed
        )
        if test_names != names:
            raise WorkbookError(
                f"--test-dataset has the classes {test_names} but --dataset has "
                f"{names}; give a test set with the same classes."
            )
        parts, source = merge(parts, test_parts), f"{source}; test: {test_source}"
    generated = args.dataset == "reviews"
    return text_splits(
        args.dataset,
        source,
        parts,
        names,
        args,
        quick_sizes=quick_sizes,
        embedded=generated,
        notes={"description": GENERATED} if generated else {},
    )


def split(texts, labels, fraction, seed):
    """A seeded split, stratified when every class has two texts or more."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels, "int64")
    stratify = labels if np.bincount(labels).min() >= 2 else None
    a, b, y_a, y_b = train_test_split(
        list(texts), labels, test_size=fraction, random_state=seed, stratify=stratify
    )
    return (a, y_a), (b, y_b)


def merge(parts, test_parts):
    """--test-dataset: every text of --dataset trains or validates; the test set's
    own test part (or all of it) tests."""
    texts = [text for x, _ in parts.values() for text in x]
    labels = [label for _, y in parts.values() for label in y]
    return {
        "all": (texts, labels),
        "test": test_parts.get("test", test_parts.get("all")),
    }


def text_splits(name, source, parts, names, args, quick_sizes=None, **kwargs):
    """TextSplits from {part: (texts, labels)}: held-out test (20 %) and validation
    (10 % of train) where ``parts`` has none, a seeded subsample for ``--quick``, a
    vocabulary adapted on train and pre-padded token ids of ``args.sequence_length``."""
    import keras

    count = sum(len(x) for x, _ in parts.values())
    if count < 10:
        raise WorkbookError(
            f"{source} holds {count} texts: too few to split off validation and "
            "test texts. Give at least 10 (a few hundred to learn anything)."
        )
    parts = dict(parts)
    if "test" not in parts:
        parts["all"], parts["test"] = split(*parts["all"], 0.2, args.seed)
    parts.setdefault("train", parts.pop("all", None))
    if "val" not in parts:
        parts["train"], parts["val"] = split(*parts["train"], 0.1, args.seed)
    parts = {part: (list(x), np.asarray(y, "int64")) for part, (x, y) in parts.items()}
    check_classes(name, parts["train"][1], names)
    rng = np.random.default_rng(args.seed)
    for part, size in (quick_sizes or {}).items():
        if len(parts[part][0]) > size:
            keep = np.sort(rng.choice(len(parts[part][0]), size, replace=False))
            parts[part] = ([parts[part][0][i] for i in keep], parts[part][1][keep])
    vectorizer = keras.layers.TextVectorization(
        max_tokens=args.vocabulary_size, output_sequence_length=args.sequence_length
    )
    vectorizer.adapt(np.asarray(parts["train"][0]), batch_size=1024)
    arrays = []
    for part in ("train", "val", "test"):
        ids = keras.ops.convert_to_numpy(vectorizer(np.asarray(parts[part][0])))
        arrays += [pre_pad(ids).astype("int32"), parts[part][1]]
    vocabulary = vectorizer.get_vocabulary()
    notes = {"vocabulary": len(vocabulary), "tokens_per_text": args.sequence_length}
    return TextSplits(
        name,
        f"{source}; {args.sequence_length} tokens a text, padding in front",
        *arrays,
        class_names=list(names),
        notes={**notes, **kwargs.pop("notes", {})},
        vocabulary=vocabulary,
        texts={part: texts for part, (texts, _) in parts.items()},
        **kwargs,
    )


def bag_of_words(token_ids, size):
    """How often each word occurs in each text: a sparse (texts, words) matrix."""
    from scipy.sparse import csr_matrix

    token_ids = np.asarray(token_ids)
    real = token_ids.ravel() > 0
    rows = np.repeat(np.arange(len(token_ids)), token_ids.shape[1])[real]
    ids = token_ids.ravel()[real]
    return csr_matrix((np.ones(len(ids)), (rows, ids)), (len(token_ids), size))


# ----------------------------------------------------------------------------
# Generated reviews (lab 5's offline default): word order decides the label
# ----------------------------------------------------------------------------
POSITIVE = "good great wonderful brilliant moving clever superb charming gripping"
NEGATIVE = "bad awful boring dull terrible weak clumsy predictable tedious poor"
NOUNS = "plot acting film story music ending script cast dialogue pacing direction"
NEGATIONS, INTENSIFIERS = ("not", "never", "hardly"), ("very", "really", "truly")
FILLERS = (
    "i watched it last weekend",
    "we saw it at the cinema",
    "it runs about two hours",
    "my friend picked it",
    "the theatre was half empty",
    "we rented it on a rainy evening",
)
GENERATED = (
    "one or two clauses such as 'the plot was not good'; after 'but' the second "
    "clause decides, with 'although' the main clause, with 'and' both (an "
    "intensified clause counts twice); 0-2 neutral sentences; no duplicates"
)


def clause(rng):
    """A clause and its score: +-1 by its adjective, flipped by a negation,
    doubled by an intensifier."""
    polarity = int(rng.choice((1, -1)))
    adjective = rng.choice((POSITIVE if polarity > 0 else NEGATIVE).split())
    kind = int(rng.choice(3, p=(0.4, 0.35, 0.25)))  # plain, negated, intensified
    modifier = ("", rng.choice(NEGATIONS), rng.choice(INTENSIFIERS))[kind]
    words = ["the", rng.choice(NOUNS.split()), rng.choice(("was", "is", "felt"))]
    text = " ".join([*words, modifier, adjective]).replace("  ", " ")
    return text, polarity * (1, -1, 2)[kind]


def generated_review(rng):
    """A review and its label (1 positive): the same words in another order can
    mean the opposite, so only a model that reads the order gets them all."""
    (first, a), (second, b) = clause(rng), clause(rng)
    form = int(rng.integers(4))
    if form == 0:  # one clause: a negation decides
        text, score = first, a
    elif form == 1:  # the clause after "but" decides
        text, score = f"{first} but {second}", b
    elif form == 2:  # the main clause decides, the "although" clause does not
        front = rng.random() < 0.5
        text = f"although {second}, {first}" if front else f"{first} although {second}"
        score = a
    else:  # both count
        while a + b == 0:
            second, b = clause(rng)
        text, score = f"{first} and {second}", a + b
    parts = [text, *rng.choice(FILLERS, size=int(rng.integers(3)), replace=False)]
    rng.shuffle(parts)
    return ". ".join(parts) + ".", int(score > 0)


def generated_reviews(count, seed):
    """``count`` distinct reviews, deterministic from ``seed``: train, val, test."""
    rng, reviews = np.random.default_rng(seed), {}
    while len(reviews) < count:
        reviews.setdefault(*generated_review(rng))
    texts, labels = list(reviews), np.asarray(list(reviews.values()), "int64")
    cuts = (0, int(0.7 * count), int(0.8 * count), count)
    return {
        part: (texts[start:stop], labels[start:stop])
        for part, start, stop in zip(("train", "val", "test"), cuts, cuts[1:])
    }


# ----------------------------------------------------------------------------
# Reading a text classifier: its mistakes, per-word weights, a map of words
# ----------------------------------------------------------------------------
def misclassified_table(run, texts, truth, predictions, probabilities, names, limit=10):
    """report.md: the test texts the model got most confidently wrong."""
    wrong = np.flatnonzero(predictions != truth)
    wrong = wrong[np.argsort(-probabilities[wrong].max(axis=1), kind="stable")]
    lines = ["| test text | true | predicted | p | text |", "|---|---|---|---|---|"]
    for i in wrong[:limit]:
        text = texts[i][:300].replace("|", "\\|") + (
            "..." if len(texts[i]) > 300 else ""
        )
        lines.append(
            f"| {i} | {names[truth[i]]} | {names[predictions[i]]} | "
            f"{probabilities[i].max():.2f} | {text} |"
        )
    run.add_section(
        f"Misclassified test texts ({len(wrong)} of {len(truth)}; the most "
        "confident mistakes first)",
        "\n".join(lines) if len(wrong) else "None: every test text was right.",
    )


def plot_token_weights(rows, path, title, width=110, top=4.0):
    """Each (caption, words, weights) row as wrapped text, each word shaded by its
    weight times the row's length (1 = an even share of the attention)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from common import plots

    layouts = []
    for caption, words, weights in rows:
        placed, line, column = [], 0, 0
        for word, weight in zip(words, np.asarray(weights) * len(words)):
            if column + len(word) > width:
                line, column = line + 1, 0
            placed.append((column, line, word, weight))
            column += len(word) + 1
        layouts.append((caption, placed, line + 1))
    heights = [lines + 1.6 for *_, lines in layouts] + [0.7]
    figure, axes = plt.subplots(
        len(heights),
        1,
        figsize=(13, 0.3 * sum(heights) + 1.2),
        gridspec_kw={"height_ratios": heights},
    )
    colors = ListedColormap(plt.get_cmap("Reds")(np.linspace(0, 0.8, 256)))
    for axis, (caption, placed, lines) in zip(axes, layouts):
        for column, line, word, weight in placed:
            box = {"facecolor": colors(weight / top), "edgecolor": "none", "pad": 1}
            axis.text(column, line, word, family="monospace", va="top", bbox=box)
        axis.set(xlim=(0, width), ylim=(lines, -0.4))
        axis.axis("off")
        axis.set_title(caption, fontsize=9, loc="left")
    scale = plt.cm.ScalarMappable(plt.Normalize(0, top), colors)
    label = "attention weight x words in the text (1 = an even share; "
    figure.colorbar(
        scale,
        cax=axes[-1],
        orientation="horizontal",
        label=f"{label}{top:g}+: darkest)",
    )
    figure.suptitle(title)
    return plots.save(figure, path)


def plot_word_map(vectors, vocabulary, path, title, seed, count=150):
    """A t-SNE map of the ``count`` most frequent words' vectors, labelled; words of
    praise, blame, negation and intensity coloured."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from common import plots

    ids = np.arange(2, min(len(vocabulary), count + 2))  # the most frequent words
    if len(ids) < 6:
        return None
    unit = vectors[ids] / np.maximum(
        np.linalg.norm(vectors[ids], axis=1)[:, None], 1e-9
    )
    tsne = TSNE(perplexity=min(30, len(ids) - 1), init="pca", random_state=seed)
    points, words = tsne.fit_transform(unit), [vocabulary[i] for i in ids]
    groups = {
        "positive word": POSITIVE.split() + ["best", "love", "excellent"],
        "negative word": NEGATIVE.split() + ["worst", "waste", "worse"],
        "negation or intensifier": NEGATIONS + INTENSIFIERS,
    }
    figure, axis = plt.subplots(figsize=(11, 8.5))
    other = np.ones(len(words), bool)
    for (label, members), color in zip(groups.items(), ("green", "red", "purple")):
        chosen = np.isin(words, list(members))
        other &= ~chosen
        axis.scatter(*points[chosen].T, s=22, color=color, label=label)
    axis.scatter(*points[other].T, s=10, color="tab:gray", label="other word")
    for (x, y), word in zip(points, words):
        axis.annotate(
            word, (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points"
        )
    axis.set_xlabel("t-SNE dimension 1 (no unit)")
    axis.set_ylabel("t-SNE dimension 2 (no unit)")
    axis.set_title(
        f"{title}: the {len(ids)} most frequent words (t-SNE of the vectors)"
    )
    axis.legend(fontsize=8)
    return plots.save(figure, path)


def encoder_vectors(preset, texts, sequence_length, batch_size=32):
    """{part: (texts, features)} mean-pooled outputs of a frozen keras-hub preset
    encoder (a preset name, fetched from Kaggle, or a local preset folder) for each
    part's texts; raises when the preset cannot be had."""
    import keras_hub
    from keras import ops

    from common.data import network_reachable

    if not Path(preset).is_dir() and not network_reachable("www.kaggle.com"):
        raise OSError("offline: Kaggle, where keras-hub presets live, is unreachable")
    preprocess = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=sequence_length
    )
    backbone = keras_hub.models.Backbone.from_preset(preset)
    features = {}
    for part, items in texts.items():
        vectors = []
        for start in range(0, len(items), batch_size):
            inputs = preprocess(items[start : start + batch_size])
            outputs = backbone(inputs)
            outputs = (
                outputs["sequence_output"] if isinstance(outputs, dict) else outputs
            )
            mask = ops.cast(inputs["padding_mask"], outputs.dtype)[..., None]
            mean = ops.sum(outputs * mask, axis=1) / ops.sum(mask, axis=1)
            vectors.append(ops.convert_to_numpy(mean))
        features[part] = np.concatenate(vectors).astype("float32")
    return features


# ----------------------------------------------------------------------------
# Skip-gram pairs for word2vec (written here: Keras 3 has no skip-gram helper)
# ----------------------------------------------------------------------------
def word_frequencies(token_ids, size):
    """Each word's share of the tokens; padding (0) and unknown (1) get 0."""
    counts = np.bincount(np.asarray(token_ids).ravel(), minlength=size)
    counts[:2] = 0
    return counts / max(counts.sum(), 1)


def skipgram_pairs(token_ids, frequencies, seed, window=2, negatives=4, max_pairs=None):
    """({"target", "context"}, labels) for skip-gram with negative sampling: each
    true (target, context) pair within ``window`` words (frequent words randomly
    dropped, as Mikolov et al. do), then ``negatives`` words drawn by frequency **
    0.75; labels are 1 for the true context word (column 0) and 0 for the rest."""
    rng = np.random.default_rng(seed)
    keep = np.minimum(1.0, np.sqrt(1e-3 / np.maximum(frequencies, 1e-12)))
    ids = pre_pad(np.where(rng.random(token_ids.shape) < keep[token_ids], token_ids, 0))
    targets, contexts = [], []
    for shift in [shift for shift in range(-window, window + 1) if shift]:
        target = ids[:, max(0, -shift) : ids.shape[1] - max(0, shift)].ravel()
        context = ids[:, max(0, shift) : ids.shape[1] - max(0, -shift)].ravel()
        targets.append(target[(target > 1) & (context > 1)])
        contexts.append(context[(target > 1) & (context > 1)])
    order = rng.permutation(sum(map(len, targets)))[:max_pairs]
    noise = frequencies**0.75 / np.sum(frequencies**0.75)
    drawn = rng.choice(len(noise), (len(order), negatives), p=noise)
    context = np.concatenate([np.concatenate(contexts)[order, None], drawn], axis=1)
    labels = np.zeros(context.shape, "float32")
    labels[:, 0] = 1.0
    return {"target": np.concatenate(targets)[order, None], "context": context}, labels


def nearest_words(vectors, vocabulary, words, count=5, among=5000):
    """{word: {neighbour: cosine}}: each word's ``count`` nearest among the
    ``among`` most frequent words (rare words' vectors are mostly noise)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    index = {word: i for i, word in enumerate(vocabulary)}
    neighbours = {}
    for word in [word for word in words if word in index]:
        similarity = unit[: among + 2] @ unit[index[word]]
        similarity[[0, 1]] = -np.inf  # padding and unknown
        if index[word] < len(similarity):
            similarity[index[word]] = -np.inf
        near = np.argsort(-similarity)[:count]
        neighbours[word] = {vocabulary[i]: float(similarity[i]) for i in near}
    return neighbours
