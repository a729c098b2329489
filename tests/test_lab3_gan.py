"""Lab 3 (GANs): shapes, the gradient penalty, who updates what, quality metrics,
smoke runs per architecture and backend, bad inputs and reloading the models."""

import json

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from common import cli, experiment, runs
from common.callbacks import Snapshots
from common.data import Splits
from common.gradients import value_and_gradients
from common.runs import seed_everything
from labs import lab3_gan as lab

RUN_FILES = ("config.json", "history.csv", "history.json", "metrics.json",
             "model.keras", "generator.keras", "report.md",
             "plots/learning_curves.png", "plots/samples.png", "plots/progress.png",
             "plots/progress.gif", "plots/quality.png",
             "samples/epoch_000.png")  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The lab's thread count (LAB.threads) also for tests that call its parts."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(lab.LAB.threads)
    yield
    torch.set_num_threads(previous)


def arguments(arch, dataset, **overrides):
    """The lab's arguments for ``arch``, with its HYPERPARAMETERS filled in."""
    args = experiment.parse_args(lab.LAB, ["--arch", arch, "--dataset", dataset])
    values = lab.HYPERPARAMETERS[(arch, lab.kind_of(dataset))]
    for key, value in {**dict(zip(lab.COLUMNS, values)), **overrides}.items():
        setattr(args, key, value)
    return args


def ring_data():
    args = experiment.parse_args(lab.LAB, ["--dataset", "ring", "--quick"])
    return lab.load_data(args)


def image_data(count=32, size=16):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (count, size, size, 1)).astype("float32")
    y = rng.integers(0, 10, count)
    names = [str(digit) for digit in range(10)]
    splits = Splits(
        "random", "test", x, y, x[:8], y[:8], x[:8], y[:8], class_names=names
    )
    classifier = lab.build_feature_classifier((size, size, 1), 10)
    outputs = [classifier.get_layer("features").output, classifier.output]
    splits.feature_extractor = keras.Model(classifier.input, outputs)
    return splits


def small_gan(arch, splits, **overrides):
    dataset = "ring" if splits.name == "ring" else "digits"
    return lab.build_model(arguments(arch, dataset, width=16, **overrides), splits)


def weights_of(model):
    return [np.array(ops.convert_to_numpy(v)) for v in model.trainable_variables]


def changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------
def transposed_convolution_reference(x, kernel, stride):
    """TensorFlow's 'same' transposed convolution, one channel, in numpy."""
    size, k = x.shape[0], kernel.shape[0]
    full = np.zeros(((size - 1) * stride + k,) * 2)
    for i in range(size):
        for j in range(size):
            full[i * stride : i * stride + k, j * stride : j * stride + k] += (
                x[i, j] * kernel
            )
    before = max(k - stride, 0) // 2
    return full[before : before + size * stride, before : before + size * stride]


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
@pytest.mark.parametrize("size", [4, 7])
def test_conv2d_transpose_same_stride_2_doubles_the_size_on_torch(kernel_size, size):
    assert keras.backend.backend() == "torch"
    rng = np.random.default_rng(kernel_size * 10 + size)
    layer = keras.layers.Conv2DTranspose(
        1, kernel_size, strides=2, padding="same", use_bias=False
    )
    x = rng.normal(size=(1, size, size, 1)).astype("float32")
    output = ops.convert_to_numpy(layer(x))
    assert output.shape == (1, 2 * size, 2 * size, 1)
    assert tuple(layer.compute_output_shape(x.shape)) == (1, 2 * size, 2 * size, 1)
    kernel = ops.convert_to_numpy(layer.kernel)[:, :, 0, 0]
    expected = transposed_convolution_reference(x[0, :, :, 0], kernel, 2)
    np.testing.assert_allclose(output[0, :, :, 0], expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 16, 1), (28, 28, 1), (32, 32, 3)])
def test_dcgan_networks_fit_the_image_shape(shape):
    generator = lab.build_dcgan_generator(8, shape, width=8)
    discriminator = lab.build_dcgan_discriminator(shape, width=8)
    images = generator(keras.random.normal((2, 8)))
    assert tuple(images.shape) == (2, *shape)
    assert tuple(discriminator(images).shape) == (2, 1)


def test_frechet_distance_matches_scipy():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 0.3
    metric = lab.FrechetDistance(6)
    metric.update_state(a, b)
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (
        np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
        - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real)
    )  # fmt: skip
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    same = lab.FrechetDistance(6)
    same.update_state(a, a)
    assert abs(float(same.result())) < 1e-6


def test_mode_histogram_counts_modes_and_quality_by_hand():
    modes = lab.ring_modes(8, 2.0)
    metric = lab.ModeHistogram()
    real = np.repeat(modes, 10, axis=0).astype("float32")
    # 4 modes hit exactly, one point per mode just outside 3 std, 8 far away.
    fake = np.concatenate([np.repeat(modes[:4], 10, axis=0),
                           modes[:4] + [0.07, 0.0], np.full((8, 2), 5.0)])  # fmt: skip
    metric.update_state(real, fake.astype("float32"))
    summary = {key: float(value) for key, value in metric.summary().items()}
    assert summary["modes_covered"] == 4
    assert summary["high_quality_share"] == pytest.approx(40 / 52)
    # Real: 1/8 per mode. Fake: 10/52 on 4 modes, 12/52 off every mode.
    assert float(metric.result()) == pytest.approx(
        0.5 * (4 * (10 / 52 - 1 / 8) + 4 / 8 + 12 / 52)
    )


# ----------------------------------------------------------------------------
# The gradient penalty and the train step
# ----------------------------------------------------------------------------
def test_gradient_penalty_is_exact_for_a_linear_critic_and_differentiable():
    """For D(x) = w.x + b, grad_x D = w everywhere: penalty (|w| - 1)^2 and its
    gradient 2 (|w| - 1) w / |w| (this needs the second-order gradient)."""
    inputs = keras.Input((2,))
    critic = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    critic.layers[-1].set_weights([np.array([[3.0], [4.0]]), np.zeros(1)])
    generator = lab.build_mlp_generator(4, (2,), width=8, depth=1)
    gan = lab.GAN(generator, critic, "wasserstein", 1, 1.0)
    rng = np.random.default_rng(0)
    real = ops.convert_to_tensor(rng.normal(size=(16, 2)).astype("float32"))
    fake = ops.convert_to_tensor(rng.normal(size=(16, 2)).astype("float32"))
    _, _, penalty, norm = gan.critic_scores_and_penalty(real, fake)
    assert float(ops.convert_to_numpy(norm)) == pytest.approx(5.0, rel=1e-5)
    assert float(ops.convert_to_numpy(penalty)) == pytest.approx(16.0, rel=1e-5)
    value, (kernel_gradient, bias_gradient) = value_and_gradients(
        lambda: gan.critic_scores_and_penalty(real, fake)[2],
        critic.trainable_variables,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(kernel_gradient).ravel(), [4.8, 6.4], rtol=1e-5
    )
    np.testing.assert_allclose(ops.convert_to_numpy(bias_gradient), [0.0], atol=1e-7)


def critic_gradient_norm(penalty_weight, steps=60):
    """Train only the critic of a ring WGAN; the last logged gradient norm."""
    seed_everything(0)
    splits = ring_data()
    gan = small_gan(
        "wgan-gp", splits, penalty_weight=penalty_weight, learning_rate=3e-3
    )
    real = ops.convert_to_tensor(splits.x_train[:128])
    for _ in range(steps):
        _, terms = gan.discriminator_step(real)
    return float(ops.convert_to_numpy(terms["gradient_norm"]))


def test_gradient_penalty_pulls_the_critic_gradient_norm_to_one():
    with_penalty = critic_gradient_norm(10.0)
    without = critic_gradient_norm(1e-9)
    assert abs(with_penalty - 1.0) < 0.15, with_penalty
    assert without > 3.0, without  # an unconstrained critic keeps steepening


@pytest.mark.parametrize("arch", ["mlp", "wgan-gp", "dcgan"])
def test_each_network_changes_only_in_its_own_step(arch):
    splits = image_data() if arch == "dcgan" else ring_data()
    gan = small_gan(arch, splits)
    real = ops.convert_to_tensor(splits.x_train[:16])
    generator, discriminator = weights_of(gan.generator), weights_of(gan.discriminator)
    gan.discriminator_step(real)
    assert changed(discriminator, weights_of(gan.discriminator))
    assert not changed(generator, weights_of(gan.generator))
    discriminator = weights_of(gan.discriminator)
    gan.generator_step(16)
    assert changed(generator, weights_of(gan.generator))
    assert not changed(discriminator, weights_of(gan.discriminator))
    logs = gan.train_step(real)
    assert all(np.isfinite(float(value)) for value in logs.values())
    if arch == "wgan-gp":
        assert float(logs["gradient_penalty"]) > 0.0


def test_whole_gan_serializes_and_reloads(tmp_path):
    gan = small_gan("wgan-gp", ring_data())
    path = tmp_path / "gan.keras"
    with runs._without_tensorflow():  # as the runner saves: no 5-15 s TF import
        gan.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, lab.GAN)
    assert reloaded.loss_kind == "wasserstein" and reloaded.critic_steps == 5
    np.testing.assert_allclose(
        reloaded.sample(4, seed=3), gan.sample(4, seed=3), atol=1e-6
    )


# ----------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------
def check_run(out, captured):
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert captured.out.strip().splitlines()[-1] == f"run: {out}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert (
        metrics["params"]
        == metrics["generator_params"] + metrics["discriminator_params"]
        > 0
    )
    assert metrics["train_seconds"] > 0
    config = json.loads((out / "config.json").read_text())
    updates = metrics["generator_updates"] * config["hyperparameters"]["critic_steps"]
    assert metrics["discriminator_updates"] == updates > 0
    rows = json.loads((out / "history.json").read_text())
    assert len(rows) == metrics["epochs_run"] >= 1
    with Image.open(out / "plots" / "progress.gif") as gif:
        assert gif.n_frames == len(list((out / "samples").glob("epoch_*.png"))) >= 3
    return metrics, rows


def check_models_reload(out, sample_shape):
    """model.keras (the GAN) and generator.keras (a plain functional model) load
    with safe_mode and generate the same samples from the same noise."""
    gan = keras.saving.load_model(out / "model.keras", safe_mode=True)
    generator = keras.saving.load_model(out / "generator.keras", safe_mode=True)
    noise = keras.random.normal((5, generator.input_shape[-1]), seed=1)
    samples = ops.convert_to_numpy(gan.predict(noise, verbose=0))
    assert samples.shape == (5, *sample_shape)
    assert np.all(np.isfinite(samples))
    np.testing.assert_allclose(samples, generator.predict(noise, verbose=0), atol=1e-6)
    return samples


@pytest.mark.parametrize("arch", ["mlp", "wgan-gp"])
def test_quick_ring_run_writes_everything(arch, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = lab.main(["--arch", arch, "--quick", "--out", str(out)])
    stored, rows = check_run(out, capsys.readouterr())
    assert stored["modes_covered"] == metrics["modes_covered"]
    assert 0 <= metrics["modes_covered"] <= 8
    assert 0.0 <= metrics["high_quality_share"] <= 1.0
    assert 0.0 <= metrics["mode_distance"] <= 1.0
    assert {"discriminator_loss", "generator_loss", "val_loss",
            "val_modes_covered"} <= set(rows[0])  # fmt: skip
    if arch == "wgan-gp":
        assert rows[0]["gradient_penalty"] > 0
    check_models_reload(out, (2,))


def test_quick_dcgan_defaults_to_digits_and_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    metrics = lab.main(["--arch", "dcgan", "--quick", "--out", str(out)])
    _, rows = check_run(out, capsys.readouterr())
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "digits"
    assert config["data"]["gan_image_shape"] == [16, 16, 1]
    assert 0.0 < metrics["classifier_confidence"] <= 1.0
    assert 0.0 < metrics["classifier_accuracy"] <= 1.0
    for key in ("frechet_distance", "frechet_distance_initial",
                "frechet_distance_real"):  # fmt: skip
        assert np.isfinite(metrics[key]) and metrics[key] >= 0
    assert "val_frechet_distance" in rows[0]
    samples = check_models_reload(out, (16, 16, 1))
    assert samples.min() >= -1.0 and samples.max() <= 1.0


@pytest.mark.parametrize(
    "arch, epochs", [("dcgan", 4), pytest.param("wgan-gp", 3, marks=pytest.mark.slow)]
)
def test_frechet_distance_falls_during_a_short_digits_run(
    arch, epochs, tmp_path, monkeypatch
):
    monkeypatch.setitem(lab.CLASSIFIER, "epochs", 4)
    out = tmp_path / "run"
    metrics = lab.main(["--arch", arch, "--dataset", "digits", "--epochs",
                        str(epochs), "--out", str(out)])  # fmt: skip
    rows = json.loads((out / "history.json").read_text())
    distances = [row["val_frechet_distance"] for row in rows]
    initial = metrics["frechet_distance_initial"]
    assert distances[-1] < 0.85 * initial, (initial, distances)
    assert metrics["frechet_distance"] < 0.85 * initial


@pytest.mark.slow
def test_wgan_gp_covers_at_least_7_ring_modes_with_its_defaults(tmp_path):
    metrics = lab.main(["--arch", "wgan-gp", "--out", str(tmp_path / "run")])
    assert metrics["modes_covered"] >= 7, metrics
    assert metrics["high_quality_share"] > 0.4, metrics


def test_compare_on_the_ring_runs_both_point_architectures(tmp_path, capsys):
    out = tmp_path / "compare"
    metrics = lab.main(["--compare", "--dataset", "ring", "--quick", "--out",
                        str(out)])  # fmt: skip
    assert captured_last_line(capsys) == f"run: {out}"
    for name in ("comparison.md", "comparison.json", "metrics.json", "report.md",
                 "history.csv", "plots/comparison.png", "plots/learning_curves.png",
                 "mlp/model.keras", "wgan-gp/model.keras",
                 "wgan-gp/plots/samples.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "dcgan").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["not_compared"] == "dcgan (convolutional: needs images)"
    assert "dcgan (convolutional: needs images)" in (out / "report.md").read_text()
    assert {"mlp_modes_covered", "wgan-gp_modes_covered"} <= set(metrics)
    assert metrics["best_variant"] in ("mlp", "wgan-gp")
    child = json.loads((out / "wgan-gp" / "config.json").read_text())
    assert child["argv"] == ["--dataset", "ring", "--quick", "--arch", "wgan-gp"]
    assert child["hyperparameters"]["critic_steps"] == 5
    assert (
        json.loads((out / "mlp" / "config.json").read_text())["hyperparameters"][
            "critic_steps"
        ]
        == 1
    )


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    def interrupt(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(Snapshots, "on_epoch_begin", interrupt, raising=False)
    assert cli.run(lab.main, ["--quick", "--out", str(out)]) == 130
    interrupted = json.loads((out / "metrics.json").read_text())
    assert interrupted["status"] == "interrupted"
    gan = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert gan.sample(3).shape == (3, 2)
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.run(lab.main, ["--resume", str(out)]) == 0
    assert captured_last_line(capsys) == f"run: {out}"
    metrics = json.loads((out / "metrics.json").read_text())
    rows = json.loads((out / "history.json").read_text())
    assert metrics["status"] == "completed"
    assert [row["epoch"] for row in rows] == [1, 2]
    assert json.loads((out / "config.json").read_text())["resumed"] == 1
    with Image.open(out / "plots" / "progress.gif") as gif:
        assert gif.n_frames == 3  # epochs 0, 1 (before the interrupt) and 2


def captured_last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


# ----------------------------------------------------------------------------
# Other backends: one subprocess each, every architecture (--compare on digits)
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_every_architecture_runs_on_another_backend(backend, run_lab, tmp_path):
    out = tmp_path / "compare"
    argv = ["--compare", "--quick", "--out", out]  # JAX compiles each step: minutes
    code, output, metrics = run_lab("lab3_gan", argv, backend, timeout=1800)
    assert code == 0, output[-3000:]
    assert not any(word in output for word in ("Traceback", "absl", "oneDNN"))
    assert json.loads((out / "config.json").read_text())["backend"] == backend
    for arch in ("mlp", "dcgan", "wgan-gp"):
        assert metrics[f"{arch}_status"] == "completed"
        assert 0.0 <= metrics[f"{arch}_frechet_distance"] < 1e4
        # Each network's own optimizer moved: on JAX, the state of both passes
        # through the pure train step (GAN.non_trainable_variables).
        steps = metrics[f"{arch}_generator_updates"]
        critic = 3 if arch == "wgan-gp" else 1
        assert metrics[f"{arch}_discriminator_updates"] == critic * steps > 0
    check_models_reload(out / "dcgan", (16, 16, 1))  # saved there, loaded on torch


# ----------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------
def test_dcgan_on_the_ring_exits_1_with_a_clear_message(tmp_path, capsys):
    code = cli.run(lab.main, ["--arch", "dcgan", "--dataset", "ring", "--out",
                              str(tmp_path / "run")])  # fmt: skip
    assert code == 1
    error = " ".join(capsys.readouterr().err.split())
    assert "needs images" in error and "--dataset digits" in error
    assert "Traceback" not in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--critic-steps", "0"],
                                  ["--penalty-weight", "-1"], ["--arch", "gan"],
                                  ["--learning-rate", "nan"]])  # fmt: skip
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as error:
        cli.run(lab.main, argv)
    assert error.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "nonsense"], "unknown dataset"),
    (["--arch", "mlp", "--penalty-weight", "1"], "wgan-gp only"),
    (["--test-dataset", "digits"], "applies to image datasets"),
])  # fmt: skip
def test_bad_choices_exit_1_with_a_message(argv, words, capsys, tmp_path):
    code = cli.run(lab.main, [*argv, "--out", str(tmp_path / "run")])
    assert code == 1
    assert words in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run").exists()


def test_a_run_never_overwrites_another(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("keep me")
    code = cli.run(lab.main, ["--quick", "--out", str(tmp_path)])
    assert code == 1
    assert "already holds files" in " ".join(capsys.readouterr().err.split())
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_a_diverging_run_exits_1_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.run(lab.main, ["--quick", "--learning-rate", "1e8", "--out", str(out)])
    assert code == 1
    assert "diverged" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"
