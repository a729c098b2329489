"""Lab 1: smoke runs of every arch and augmentation, the per-dataset recipes, tfds
(mocked) and folder data, search, own data, bad input."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from common import cli, experiment
from labs import lab1_cnn
from tests.test_common import make_image_folder

RUN_FILES = (
    "config.json",
    "history.csv",
    "history.json",
    "metrics.json",
    "model.keras",
    "report.md",
    "classification_report.txt",
)


def run_lab(tmp_path, *flags, name="run"):
    out = tmp_path / name
    metrics = lab1_cnn.main([*flags, "--quick", "--out", str(out)])
    return out, metrics


def check_run(out, metrics, epochs=2):
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    for plot in ("learning_curves", "confusion_matrix"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 5000
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] in ("completed", "early_stopped")
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and 0.0 <= saved["macro_f1"] <= 1.0
    assert saved["params"] > 1000 and saved["train_seconds"] > 0
    assert saved["inference_ms_per_image"] > 0
    assert saved["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history[0])


@pytest.mark.parametrize(
    "arch", ["mlp", "plain", "baseline", "vgg", "resnet", "alexnet"]
)
def test_quick_run_per_arch(tmp_path, arch):
    out, metrics = run_lab(tmp_path, "--arch", arch, "--width", "8")
    check_run(out, metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == arch and config["data"]["embedded"]
    assert config["args"]["recipe"] == "small"
    assert config["keras_fixes"] == "installed"  # the runner installs them on torch


def layer_kinds(model):
    return {type(layer).__name__ for layer in model.layers}


def test_archs_are_what_the_course_bars_state():
    inputs = keras.Input((32, 32, 3))
    plain = keras.Model(inputs, lab1_cnn.build_plain(inputs, 10, 8, 0.5, "relu"))
    assert layer_kinds(plain) == {
        "InputLayer",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
    }
    activations = [
        layer.activation.__name__
        for layer in plain.layers
        if hasattr(layer, "activation")
    ]
    assert activations == ["relu"] * (len(activations) - 1) + ["softmax"]
    vgg = keras.Model(inputs, lab1_cnn.build_vgg(inputs, 10, 8, 0.2, "relu"))
    kinds = [type(layer).__name__ for layer in vgg.layers]
    assert kinds.count("Conv2D") == 6 and kinds.count("Dense") == 3
    assert kinds.count("MaxPooling2D") == 3 and "BatchNormalization" in kinds
    alexnet = keras.Model(inputs, lab1_cnn.build_alexnet(inputs, 10, 8, 0.2, "relu"))
    kinds = [type(layer).__name__ for layer in alexnet.layers]
    assert kinds.count("Conv2D") == 5 and kinds.count("Dense") == 3
    assert all(
        layer.rate >= 0.5
        for layer in alexnet.layers
        if isinstance(layer, keras.layers.Dropout)
    )
    pools = [
        layer
        for layer in alexnet.layers
        if isinstance(layer, keras.layers.MaxPooling2D)
    ]
    assert all(pool.pool_size == (3, 3) and pool.strides == (2, 2) for pool in pools)


# --- recipes: per-dataset defaults, every flag overriding its entry ----------------
def parse(*flags):
    return experiment.parse_args(lab1_cnn.LAB, list(flags))


def test_recipes_by_dataset_name_and_flags_override_them():
    digits, mnist, cifar = (
        parse(),
        parse("--dataset", "mnist"),
        parse("--dataset", "cifar10"),
    )
    assert (digits.recipe, digits.arch, digits.schedule) == (
        "small",
        "baseline",
        "constant",
    )
    assert (mnist.recipe, mnist.arch, mnist.schedule) == ("mnist", "plain", "onecycle")
    assert mnist.label_smoothing > 0 and not mnist.tta and mnist.augment == "none"
    assert (cifar.recipe, cifar.arch, cifar.augment) == ("cifar10", "vgg", "flipcrop")
    assert cifar.tta and cifar.label_smoothing > 0
    mine = parse(
        "--dataset", "cifar10", "--arch", "resnet", "--epochs", "3", "--no-tta"
    )
    assert (mine.arch, mine.epochs, mine.tta, mine.batch_size) == (
        "resnet",
        3,
        False,
        cifar.batch_size,
    )
    forced = parse("--dataset", "cifar10", "--recipe", "small")
    assert (forced.recipe, forced.arch, forced.epochs) == ("small", "baseline", 30)
    assert parse("--dataset", "mnist", "--quick").epochs == 2


@pytest.mark.parametrize(
    "mode, size, flags, recipe",
    [
        ("L", 28, (), "mnist"),
        ("RGB", 32, (), "cifar10"),
        ("RGB", 24, (), "small"),
        ("RGB", 24, ("--image-size", "32"), "cifar10"),
        ("L", 8, (), "small"),
    ],
)
def test_folder_recipe_follows_the_image_shape(tmp_path, mode, size, flags, recipe):
    root = make_image_folder(tmp_path / "images", mode=mode, size=size, per_class=1)
    assert parse("--dataset", f"folder:{root}", *flags).recipe == recipe


def test_onecycle_rises_to_the_peak_then_decays(tmp_path):
    args = parse("--dataset", "mnist", "--epochs", "5", "--batch-size", "10")
    splits = type("Splits", (), {"x_train": np.zeros((100, 2))})()
    schedule = lab1_cnn.learning_rate(args, splits, 1e-2)
    rates = [float(schedule(step)) for step in range(0, 51)]
    peak = int(np.argmax(rates))
    assert peak == 10 and rates[peak] == pytest.approx(1e-2)
    assert rates[0] == pytest.approx(1e-3) and rates[-1] < 2e-4
    assert all(a <= b for a, b in zip(rates[:peak], rates[1 : peak + 1]))
    assert all(a >= b for a, b in zip(rates[peak:-1], rates[peak + 1 :]))
    args.schedule = "constant"
    assert lab1_cnn.learning_rate(args, splits, 1e-2) == 1e-2


@pytest.mark.parametrize(
    "name, shape", [("mnist", [28, 28, 1]), ("cifar10", [32, 32, 3])]
)
def test_tfds_sets_under_mock_data_train_with_their_recipe(tmp_path, name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        out, metrics = run_lab(
            tmp_path, "--dataset", name, "--epochs", "1", "--width", "8"
        )
    check_run(out, metrics, epochs=1)
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["recipe"] == name and config["data"]["input_shape"] == shape
    assert config["data"]["source"] == f"tensorflow-datasets {name}"


def test_quick_transfer_runs_offline_with_a_notice(tmp_path, capsys):
    out, metrics = run_lab(tmp_path, "--arch", "transfer", "--epochs", "1")
    check_run(out, metrics, epochs=1)
    assert "notice:" in capsys.readouterr().out
    assert metrics["params"] > 20_000_000  # ResNet50V2 backbone


def test_saved_model_reloads_with_safe_mode_and_predicts_the_same(tmp_path):
    out, _ = run_lab(
        tmp_path, "--augment", "basic", "--activation", "gelu", "--epochs", "1"
    )
    assert (out / "plots" / "augmentation.png").is_file()
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    from common.data import load_images

    images = load_images("digits").x_test[:16]
    again = keras.saving.load_model(out / "model.keras", safe_mode=True)
    np.testing.assert_allclose(
        model.predict(images, verbose=0), again.predict(images, verbose=0), atol=1e-6
    )
    assert any(layer.name == "augment_basic" for layer in model.layers)


@pytest.mark.parametrize("augment", ["randaugment", "mixup", "cutmix"])
def test_augmentations_train_and_draw_a_gallery(tmp_path, augment):
    out, metrics = run_lab(tmp_path, "--augment", augment, "--epochs", "1")
    check_run(out, metrics, epochs=1)
    assert (out / "plots" / "augmentation.png").stat().st_size > 5000


def test_activation_flag_reaches_the_model(tmp_path):
    out, _ = run_lab(tmp_path, "--activation", "gelu", "--epochs", "1")
    model = keras.saving.load_model(out / "model.keras")
    assert any(layer.name.endswith("_gelu") for layer in model.layers)


def test_search_writes_trials_and_retrains_best(tmp_path):
    out, metrics = run_lab(tmp_path, "--search", "2", "--epochs", "1")
    trials = json.loads((out / "search_trials.json").read_text())
    assert len(trials) == 2
    assert {"learning_rate", "width", "dropout", "activation", "val_accuracy"} <= set(
        trials[0]
    )
    assert (out / "plots" / "search_trials.png").is_file()
    assert metrics["hp_activation"] == trials[0]["activation"]
    assert "Model selection" in (out / "report.md").read_text()


def test_npz_mnist_format(tmp_path):
    from common.data import load_images

    digits = load_images("digits")
    big = np.kron(digits.x_train[..., 0], np.ones((4, 4)))[:, 2:30, 2:30]
    path = tmp_path / "mnist_like.npz"
    np.savez(
        path,
        x_train=(big[:300] * 255).astype("uint8"),
        y_train=digits.y_train[:300],
        x_test=(big[300:400] * 255).astype("uint8"),
        y_test=digits.y_train[300:400],
    )
    out, metrics = run_lab(tmp_path, "--dataset", f"npz:{path}", "--epochs", "1")
    check_run(out, metrics, epochs=1)
    assert json.loads((out / "config.json").read_text())["data"]["input_shape"] == [
        28,
        28,
        1,
    ]


def test_rgb_folder(tmp_path):
    root = make_image_folder(
        tmp_path / "rgb",
        mode="RGB",
        size=24,
        per_class=10,
        classes=("cat", "dog", "fox"),
    )
    out, metrics = run_lab(tmp_path, "--dataset", f"folder:{root}", "--epochs", "1")
    check_run(out, metrics, epochs=1)
    assert json.loads((out / "config.json").read_text())["data"]["num_classes"] == 3


# --- bad input: one paragraph, non-zero exit, nothing overwritten -------------------
@pytest.mark.parametrize(
    "flags",
    [
        ["--arch", "lenet"],
        ["--epochs", "0"],
        ["--epochs", "-3"],
        ["--batch-size", "0"],
        ["--learning-rate", "-1"],
        ["--augment", "flipflop"],
        ["--activation", "sigmoidal"],
        ["--search", "-2"],
        ["--dropout", "1.5"],
    ],
)
def test_usage_errors_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as error:
        experiment.parse_args(lab1_cnn.LAB, flags)
    assert error.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("imagenet22k", "unknown dataset"),
        ("npz:/no/such/file.npz", "no .npz file"),
    ],
)
def test_runtime_errors_exit_1_with_a_paragraph(tmp_path, capsys, dataset, message):
    code = cli.run(lab1_cnn.main, ["--dataset", dataset, "--out", str(tmp_path / "r")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_unreadable_npz_exits_1(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    code = cli.run(lab1_cnn.main, ["--dataset", f"npz:{tmp_path / 'bad.npz'}"])
    assert code == 1 and "cannot read" in " ".join(capsys.readouterr().err.split())


def write_npz(path, x_train, y_train, **arrays):
    arrays = {"x_test": x_train[:20], "y_test": y_train[:20], **arrays}
    np.savez(path, x_train=x_train, y_train=y_train, **arrays)
    return f"npz:{path}"


@pytest.mark.parametrize(
    "case, words",
    [
        ("nan", "x_train holds 1 NaN or infinite value(s), the first at index"),
        ("one_class", "only one class"),
        ("objects", "never unpickles"),
    ],
)
def test_bad_npz_data_is_named_and_never_trains(tmp_path, capsys, case, words):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(60, 8, 8)).astype("float32")
    y = np.arange(60) % 3
    if case == "nan":
        x[7, 2, 3] = np.nan
    if case == "one_class":
        y = np.zeros(60, "int64")
    path = tmp_path / "data.npz"
    if case == "objects":
        np.savez(path, x_train=np.array([object()] * 3), y_train=y[:3])
        spec = f"npz:{path}"
    else:
        spec = write_npz(path, x, y)
    code = cli.run(lab1_cnn.main, ["--dataset", spec, "--out", str(tmp_path / "r")])
    message = " ".join(capsys.readouterr().err.split())
    assert code == 1 and words in message, message
    assert "allow_pickle" not in message and "Traceback" not in message
    assert not (tmp_path / "r").exists()


def test_cifar_shaped_folders_with_a_separate_test_folder(tmp_path):
    classes = ("cat", "dog", "fox")
    train = make_image_folder(tmp_path / "tr", "RGB", 32, per_class=12, classes=classes)
    test = make_image_folder(tmp_path / "te", "RGB", 32, per_class=4, classes=classes)
    out, metrics = run_lab(
        tmp_path,
        *("--dataset", f"folder:{train}", "--test-dataset", f"folder:{test}"),
        *("--epochs", "1", "--width", "8"),
    )
    check_run(out, metrics, epochs=1)
    config = json.loads((out / "config.json").read_text())
    chosen = [config["args"][key] for key in ("recipe", "arch", "tta")]
    assert chosen == ["cifar10", "vgg", True]
    assert config["data"]["num_test"] == 12
    assert (out / "plots" / "augmentation.png").is_file()  # flipcrop's gallery
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert any(layer.name == "augment_flipcrop" for layer in model.layers)


def test_thousands_of_images_are_decoded_once_then_train_from_arrays(
    tmp_path, monkeypatch
):
    from PIL import Image

    from common import data

    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "many", size=8, per_class=1000, classes="abc")
    decoded = []
    original = data._decode
    monkeypatch.setattr(
        data, "_decode", lambda file: decoded.append(1) or original(file)
    )
    first = lab1_cnn.load_data(parse("--dataset", f"folder:{root}"))
    assert len(decoded) == 3000  # each file once, in common.data's thread pool
    assert isinstance(first.x_train, np.ndarray) and first.x_train.shape[1:] == (
        8,
        8,
        1,
    )

    def no_file_reads(*args, **kwargs):
        raise AssertionError("an image file was opened after the first load")

    monkeypatch.setattr(data, "_decode", no_file_reads)
    monkeypatch.setattr(Image, "open", no_file_reads)
    argv = ["--dataset", f"folder:{root}", "--recipe", "small", "--epochs", "1"]
    metrics = lab1_cnn.main(
        [*argv, "--width", "8", "--batch-size", "256", "--out", str(tmp_path / "r")]
    )
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["data"]["num_train"] + saved["data"]["num_val"] == 2400


def test_separate_test_folder(tmp_path):
    train = make_image_folder(tmp_path / "train", size=12, per_class=20)
    test = make_image_folder(tmp_path / "test", size=12, per_class=6)
    out, metrics = run_lab(
        tmp_path, "--dataset", f"folder:{train}", "--test-dataset", f"folder:{test}"
    )
    check_run(out, metrics)
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["num_test"] == 6 * len(list(test.iterdir()))
    assert data["num_train"] + data["num_val"] == 20 * len(list(train.iterdir()))


def test_a_test_folder_with_other_classes_is_refused(tmp_path, capsys):
    train = make_image_folder(tmp_path / "train", size=12, per_class=8)
    test = make_image_folder(
        tmp_path / "test", size=12, per_class=4, classes=("cat", "dog")
    )
    argv = ["--dataset", f"folder:{train}", "--test-dataset", f"folder:{test}"]
    code = cli.run(lab1_cnn.main, [*argv, "--out", str(tmp_path / "r")])
    assert code == 1 and "does not match" in capsys.readouterr().err


def test_command_line_refuses_a_non_empty_out_and_keeps_it(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.json").write_text('{"keep": true}')
    result = subprocess.run(
        [sys.executable, "-m", "labs.lab1_cnn", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "already holds files" in message and "Traceback" not in message
    assert json.loads((out / "metrics.json").read_text()) == {"keep": True}


@pytest.mark.slow
def test_default_run_reaches_98_percent(tmp_path):
    metrics = lab1_cnn.main(["--out", str(tmp_path / "full")])
    assert metrics["test_accuracy"] >= 0.98
