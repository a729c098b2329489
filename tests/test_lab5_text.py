"""Lab 5 (text): the generated reviews, the data sources, the bag-of-words model,
smoke runs of every arch on every backend, and bad input.

Runs are ``--quick`` (256 training reviews, at most 2 epochs) on a small generated
set, so each takes seconds; the whole comparison runs once per backend.
"""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from common import cli, data, experiment, text
from common.runs import load_model
from labs import lab5_text

QUICK = ["--quick", "--num-reviews", "600"]
CLASSIFIERS = ["bow", "textcnn", "bigru-attention", "transformer", "embeddings-mlp"]
RUN_FILES = ("config.json", "metrics.json", "model.keras", "report.md")
PLOTS = ("learning_curves.png", "confusion_matrix.png")


def read_json(path):
    return json.loads(Path(path).read_text())


def parse(*argv):
    return experiment.parse_args(lab5_text.LAB, [*QUICK, *argv])


def words(text):
    return " ".join(text.split())


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """One --compare --quick run on torch, shared by the checks below."""
    out = tmp_path_factory.mktemp("lab5") / "compare"
    metrics = lab5_text.main([*QUICK, "--compare", "--out", str(out)])
    return out, metrics


# ----------------------------------------------------------------------------
# The generated reviews
# ----------------------------------------------------------------------------
def test_generated_reviews_are_deterministic_distinct_and_balanced():
    first = text.generated_reviews(2000, seed=3)
    again = text.generated_reviews(2000, seed=3)
    other = text.generated_reviews(2000, seed=4)
    assert first["train"][0] == again["train"][0]
    assert first["train"][0] != other["train"][0]
    sizes = {part: len(texts) for part, (texts, _) in first.items()}
    assert sizes == {"train": 1400, "val": 200, "test": 400}
    texts = [text for texts, _ in first.values() for text in texts]
    assert len(set(texts)) == len(texts)  # so the splits are disjoint
    share = np.mean(np.concatenate([labels for _, labels in first.values()]))
    assert 0.4 < share < 0.6


def test_a_bag_of_words_cannot_read_the_generated_reviews():
    """Word order decides the label, so logistic regression on which words occur
    stays far from what a sequence model reaches (1.0 on this set)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    data = text.generated_reviews(3000, seed=0)
    bag = CountVectorizer(binary=True).fit(data["train"][0])
    regression = LogisticRegression(max_iter=3000)
    regression.fit(bag.transform(data["train"][0]), data["train"][1])
    accuracy = regression.score(bag.transform(data["test"][0]), data["test"][1])
    assert 0.55 < accuracy < 0.72


def test_a_negation_or_but_flips_the_label():
    rng = np.random.default_rng(0)
    seen = defaultdict(list)
    for _ in range(400):
        review, label = text.generated_review(rng)
        if all(word not in review for word in (" but ", " and ", "although")):
            clause = [part for part in review.split(". ") if part.startswith("the ")][0]
            if clause.split()[-1].rstrip(".") in text.POSITIVE.split():
                seen[clause.split()[3] in text.NEGATIONS].append(label)
    assert set(seen[True]) == {0} and set(seen[False]) == {1}


# ----------------------------------------------------------------------------
# Data sources
# ----------------------------------------------------------------------------
def write_texts(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for index, content in enumerate(texts):
        (folder / f"{index}_1.txt").write_text(content)


def test_aclimdb_folder_layout_ignores_unsup_and_skips_empty_files(tmp_path, capsys):
    root = tmp_path / "aclImdb"
    for part, count in (("train", 12), ("test", 6)):
        write_texts(root / part / "pos", [f"a great film {i}" for i in range(count)])
        write_texts(root / part / "neg", [f"an awful film {i}" for i in range(count)])
    write_texts(root / "train" / "unsup", ["no label here"] * 5)
    (root / "test" / "neg" / "empty.txt").write_text("   ")
    splits = lab5_text.load_data(parse("--dataset", f"folder:{root}"))
    assert splits.class_names == ["neg", "pos"]
    assert (len(splits.x_train) + len(splits.x_val), len(splits.x_test)) == (24, 12)
    assert "skipped 1 unreadable or empty" in words(capsys.readouterr().out)
    assert splits.x_train.dtype == np.int32 and splits.x_train.shape[1] == 400
    assert splits.vocabulary[:2] == ["", "[UNK]"]


def test_csv_with_three_classes_runs_end_to_end(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = ["text,label,extra"]
    for i in range(30):
        rows += [
            f"great fun {i},pos,x",
            f"awful mess {i},neg,x",
            f"it was fine {i},mid,x",
        ]
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    metrics = lab5_text.main([*QUICK, "--dataset", f"csv:{path}", "--out", str(out)])
    assert metrics["test_accuracy"] >= 0.0
    assert read_json(out / "config.json")["data"]["num_classes"] == 3
    assert load_model(out / "model.keras").output_shape == (None, 3)


def test_imdb_reviews_under_tfds_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        splits = lab5_text.load_data(parse("--dataset", "imdb_reviews"))
    assert splits.class_names == ["negative", "positive"]
    assert len(splits.x_test) == 40 and splits.x_train.shape[1] == 400


def test_pre_pad_moves_padding_to_the_front():
    ids = np.array([[5, 6, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0], [7, 0, 0, 8]])
    np.testing.assert_array_equal(
        text.pre_pad(ids), [[0, 0, 5, 6], [1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 7, 8]]
    )


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3])
def test_bow_keras_model_predicts_what_scikit_learn_fitted(classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    vocabulary = ["", "[UNK]"] + [f"w{i}" for i in range(30)]
    tokens = text.pre_pad(rng.integers(0, 32, (120, 10)).astype("int32"))
    labels = rng.integers(0, classes, 120)
    splits = text.TextSplits("toy", "toy", tokens, labels, vocabulary=vocabulary)
    splits.class_names = [str(c) for c in range(classes)]
    model = lab5_text.build_bow(None, splits)
    features = text.bag_of_words(tokens, len(vocabulary))
    solver = "liblinear" if classes == 2 else "lbfgs"  # as the lab fits them
    regression = LogisticRegression(C=1.0, solver=solver).fit(features, labels)
    lab5_text.set_logistic_regression(model, regression)
    np.testing.assert_allclose(
        model.predict(tokens, verbose=0), regression.predict_proba(features), atol=1e-5
    )


def test_skipgram_pairs_come_from_the_window_with_negatives_after():
    tokens = np.array([[0, 0, 2, 3, 4, 5]], "int32")
    frequencies = np.array([0, 0, 1e-4, 1e-4, 1e-4, 1e-4])  # rare: none dropped
    x, labels = text.skipgram_pairs(tokens, frequencies, seed=0, window=2)
    true_pairs = {
        (int(t), int(c)) for t, c in zip(x["target"][:, 0], x["context"][:, 0])
    }
    assert true_pairs == {
        (a, b) for a in range(2, 6) for b in range(2, 6) if 0 < abs(a - b) <= 2
    }
    assert labels.shape == x["context"].shape == (len(true_pairs), 5)
    assert (labels[:, 0] == 1).all() and labels[:, 1:].sum() == 0
    assert (x["context"][:, 1:] >= 2).all()  # negatives: never padding or unknown


def test_word_frequencies_and_nearest_words():
    frequencies = text.word_frequencies(np.array([[0, 1, 2, 2, 3]]), 5)
    np.testing.assert_allclose(frequencies, [0, 0, 2 / 3, 1 / 3, 0])
    vocabulary = ["", "[UNK]", "good", "great", "bad"]
    vectors = np.array([[0, 0], [0, 0], [1, 0.1], [1, 0.2], [-1, 0]], "float32")
    near = text.nearest_words(vectors, vocabulary, ["good", "absent"], count=2)
    assert list(near) == ["good"] and list(near["good"]) == ["great", "bad"]
    assert near["good"]["great"] > 0.99 and near["good"]["bad"] < -0.99


# ----------------------------------------------------------------------------
# Smoke runs (torch, in-process)
# ----------------------------------------------------------------------------
def test_compare_runs_every_classifier_and_writes_the_comparison(comparison):
    out, metrics = comparison
    for arch in CLASSIFIERS:
        assert 0.0 <= metrics[f"{arch}_test_accuracy"] <= 1.0
        assert 0.0 <= metrics[f"{arch}_macro_f1"] <= 1.0
        for name in (*RUN_FILES, *(f"plots/{plot}" for plot in PLOTS)):
            assert (out / arch / name).is_file(), f"{arch}/{name} missing"
        report = (out / arch / "report.md").read_text()
        assert "Misclassified test texts" in report
    for arch in ("bigru-attention", "transformer"):
        assert (out / arch / "plots" / "attention.png").is_file()
    assert metrics["best_variant"] in CLASSIFIERS
    assert (out / "comparison.md").is_file() and (
        out / "plots/comparison.png"
    ).is_file()
    assert metrics["embeddings-mlp_encoder"].startswith("word2vec trained here")
    assert metrics["bow_epochs_run"] == 0 and metrics["bow_bow_c"] > 0


def test_saved_models_reload_with_safe_mode_and_predict_the_same(comparison):
    out, _ = comparison
    splits = lab5_text.load_data(parse())
    for arch in CLASSIFIERS:
        model = load_model(out / arch / "model.keras")
        saved = np.load(out / arch / "predictions.npz")
        predicted = model.predict(splits.x_test, verbose=0).argmax(axis=-1)
        np.testing.assert_array_equal(predicted, saved["y_pred"], err_msg=arch)
        np.testing.assert_array_equal(saved["y_true"], splits.y_test)


def test_word2vec_writes_neighbours_a_word_map_and_a_probe(tmp_path):
    out = tmp_path / "word2vec"
    metrics = lab5_text.main([*QUICK, "--arch", "word2vec", "--out", str(out)])
    neighbours = read_json(out / "neighbours.json")
    assert {"good", "bad", "not"} <= set(neighbours)
    assert all(len(near) == 5 for near in neighbours.values())
    assert (out / "plots" / "word_vectors_2d.png").stat().st_size > 20000
    assert metrics["evaluation"].startswith("linear probe")
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    history = read_json(out / "history.json")
    assert {"loss", "val_loss", "accuracy"} <= set(history[0])
    model = load_model(out / "model.keras")
    assert model.get_layer("word_vectors").get_weights()[0].shape[1] == 64
    assert "Nearest neighbours" in (out / "report.md").read_text()


def test_embeddings_mlp_uses_a_local_keras_hub_preset(tmp_path, capsys):
    keras_hub = pytest.importorskip("keras_hub")
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary += sorted(set(" ".join(text.FILLERS).split()))
    vocabulary += ["the", "not", "good", "bad", "but", "plot", "was", "acting"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=sorted(set(vocabulary)))
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=64,
    )
    preset = tmp_path / "tiny_bert"
    preprocessor.save_to_preset(str(preset))
    backbone.save_to_preset(str(preset))
    out = tmp_path / "run"
    argv = [*QUICK, "--arch", "embeddings-mlp", "--encoder", str(preset)]
    metrics = lab5_text.main([*argv, "--sequence-length", "32", "--out", str(out)])
    assert metrics["encoder"].startswith(f"keras-hub preset {preset}")
    assert "notice" not in capsys.readouterr().out
    assert load_model(out / "model.keras").input_shape == (None, 8)


# ----------------------------------------------------------------------------
# TensorFlow and JAX: one subprocess each (make test-backends). The comparison's
# embeddings-mlp trains the word2vec model first (offline), so the skip-gram model
# runs on each backend too; word2vec's evaluation is numpy and scikit-learn.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_compare_on_other_backends(run_lab, tmp_path, backend):
    out = tmp_path / backend
    code, output, metrics = run_lab(
        "lab5_text", [*QUICK, "--compare", "--out", out], backend
    )
    assert code == 0, output[-3000:]
    for arch in CLASSIFIERS:
        assert 0.0 <= metrics[f"{arch}_test_accuracy"] <= 1.0
    assert read_json(out / "textcnn" / "config.json")["backend"] == backend
    for noise in ("absl::", "cudart", "oneDNN", "Traceback"):
        assert noise not in output


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "lstm"], "invalid choice: 'lstm'"),
        (["--sequence-length", "0"], "must be at least 1"),
        (["--vocabulary-size", "2"], "at least 3"),
        (["--num-reviews", "5"], "at least 20"),
    ],
)
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        parse(*argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def bad_csv(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return f"csv:{path}"


@pytest.mark.parametrize(
    "content, message",
    [
        ("review,label\nfine,pos\n", "has no text column (header: review, label)"),
        ("text,label\n", "has no data rows"),
        (
            "text,label\ngood,pos\n,neg\n",
            "1 row(s) have an empty text, the first on line 3",
        ),
        ("text,label\n" + "good film,pos\n" * 30, "only one class ('pos')"),
    ],
)
def test_bad_csv_is_one_paragraph_exit_1_and_writes_nothing(
    tmp_path, capsys, content, message
):
    out = tmp_path / "run"
    code = cli.run(
        lab5_text.main,
        [*QUICK, "--dataset", bad_csv(tmp_path, content), "--out", str(out)],
    )
    error = capsys.readouterr().err
    assert code == 1
    assert message in words(error) and "Traceback" not in error
    assert not out.exists()


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("folder:{tmp}/empty", "no readable text files under"),
        ("csv:{tmp}/missing.csv", "cannot read"),
        ("sentiment140", "unknown dataset 'sentiment140'"),
    ],
)
def test_missing_or_unknown_data_is_exit_1(tmp_path, capsys, dataset, message):
    (tmp_path / "empty" / "pos").mkdir(parents=True)
    argv = [
        *QUICK,
        "--dataset",
        dataset.format(tmp=tmp_path),
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli.run(lab5_text.main, argv) == 1
    assert message in words(capsys.readouterr().err)


def test_a_non_empty_out_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.run(lab5_text.main, [*QUICK, "--out", str(out)]) == 1
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(path.name for path in out.iterdir()) == ["keep.txt"]


def test_one_class_folder_and_unreadable_files_are_reported(tmp_path, capsys):
    root = tmp_path / "reviews"
    write_texts(root / "pos", [f"a fine film {i}" for i in range(20)])
    (root / "neg").mkdir()
    (root / "pos" / "broken.txt").mkdir()  # a folder named like a text: unreadable
    (root / "pos" / "blank.txt").write_text("\n  \n")
    out = tmp_path / "run"
    argv = [*QUICK, "--dataset", f"folder:{root}", "--out", str(out)]
    assert cli.run(lab5_text.main, argv) == 1
    captured = capsys.readouterr()
    assert "skipped 2 unreadable or empty text file(s)" in words(captured.out)
    assert "only one class ('pos')" in words(captured.err)
    assert "Traceback" not in captured.err and not out.exists()


def test_a_csv_file_given_as_folder_and_a_separate_test_folder(tmp_path):
    path = tmp_path / "train.csv"
    rows = ["label,text"] + [f"pos,a great film {i}" for i in range(15)]
    path.write_text("\n".join(rows + [f"neg,an awful film {i}" for i in range(15)]))
    test = tmp_path / "test"
    write_texts(test / "neg", ["awful and dull", "an awful mess"])
    write_texts(test / "pos", ["great fun", "a great cast"])
    argv = ["--dataset", f"folder:{path}", "--test-dataset", f"folder:{test}"]
    splits = lab5_text.load_data(parse(*argv))
    assert (len(splits.x_train) + len(splits.x_val), len(splits.x_test)) == (30, 4)
    assert splits.texts["test"] == [
        "awful and dull",
        "an awful mess",
        "great fun",
        "a great cast",
    ]
    write_texts(test / "mid", ["it was fine"])
    with pytest.raises(cli.WorkbookError, match="same classes"):
        lab5_text.load_data(parse(*argv))


def test_imdb_offline_stops_at_once_with_the_remedy(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "network_reachable", lambda *a, **k: False)
    out = tmp_path / "run"
    argv = [*QUICK, "--dataset", "imdb_reviews", "--out", str(out)]
    assert cli.run(lab5_text.main, argv) == 1
    message = words(capsys.readouterr().err)
    assert "'imdb_reviews' is not available offline" in message
    assert "--dataset reviews" in message and "TFDS_DATA_DIR" in message
    assert "--dataset digits" not in message and "folder:PATH" in message
    assert not out.exists()
