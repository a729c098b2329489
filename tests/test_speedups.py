"""common.speedups: the fixed Keras paths give Keras's own results, and are taken."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import importlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from common import speedups  # noqa: E402
from common.runs import load_model  # noqa: E402

layers = keras.layers
TOLERANCE = 2e-5


@pytest.fixture(autouse=True)
def fixes_restored():
    """Each test starts with the fixes as the runner leaves them: on."""
    speedups.install()
    yield
    speedups.install()


def step(model, x, y, training=True):
    """Outputs, loss gradients (weights and inputs) and the weights after."""
    x = torch.tensor(x, requires_grad=True)
    model.zero_grad()
    outputs = model(x, training=training)
    loss = torch.mean((outputs - torch.tensor(y)) ** 2)
    loss.backward()
    gradients = [v.value.grad.numpy().copy() for v in model.trainable_weights]
    return (
        outputs.detach().numpy(),
        gradients + [x.grad.numpy()],
        [w.copy() for w in model.get_weights()],
    )


def fixed_then_original(model, work):
    """``work()`` with the fixes, then without, from the same starting weights."""
    start = model.get_weights()
    results = []
    for switch in (speedups.install, speedups.uninstall):
        switch()
        model.set_weights(start)
        results.append(work())
    return results


def fixed_and_original(model, x, training=True):
    """``step`` with the fixes, then without."""
    y = np.zeros(model.output_shape[1:], "float32")
    return fixed_then_original(model, lambda: step(model, x, y, training))


def assert_same(fixed, original):
    for name, a, b in zip(("outputs", "gradients", "weights after"), fixed, original):
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        assert len(a) == len(b)
        for left, right in zip(a, b):
            scale = max(1.0, float(np.abs(right).max()))
            np.testing.assert_allclose(
                left, right, atol=TOLERANCE * scale, err_msg=name
            )


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


CNN_CASES = {
    "conv valid + max pool": lambda: [
        layers.Conv2D(6, 3, activation="relu"),
        layers.MaxPooling2D(),
    ],
    "conv same, strides 2 + average pool same": lambda: [
        layers.Conv2D(5, 3, strides=2, padding="same"),
        layers.AveragePooling2D(3, strides=1, padding="same"),
    ],
    "depthwise + separable + transpose": lambda: [
        layers.DepthwiseConv2D(3, padding="same"),
        layers.SeparableConv2D(4, 3),
        layers.Conv2DTranspose(3, 3, strides=2),
    ],
    "batch norm (conv) + global pools": lambda: [
        layers.Conv2D(4, 3),
        layers.BatchNormalization(momentum=0.9),
        layers.GlobalMaxPooling2D(keepdims=True),
    ],
    "batch norm without scale and center": lambda: [
        layers.BatchNormalization(scale=False, center=False, epsilon=1e-5)
    ],
    "3-D conv and pool": lambda: [
        layers.Conv3D(3, 2),
        layers.MaxPooling3D(pool_size=2),
    ],
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", sorted(CNN_CASES))
def test_image_layers_match_keras(case, training):
    keras.utils.set_random_seed(0)
    shape = (5, 6, 7, 7, 2) if "3-D" in case else (5, 11, 9, 3)
    inputs = keras.Input(shape[1:])
    outputs = inputs
    for layer in CNN_CASES[case]():
        outputs = layer(outputs)
    model = keras.Model(inputs, layers.Flatten()(outputs))
    fixed, original = fixed_and_original(model, images(shape), training)
    assert_same(fixed, original)


def test_batch_norm_on_dense_features_and_its_moving_statistics():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((7,))
    norm = layers.BatchNormalization(momentum=0.5)
    model = keras.Model(inputs, norm(layers.Dense(6)(inputs)))
    fixed, original = fixed_and_original(model, images((16, 7)) * 3 + 1)
    assert_same(fixed, original)
    # The moving averages moved (training) and moved the same way.
    assert not np.allclose(fixed[2][-1], np.ones(6))
    np.testing.assert_allclose(fixed[2][-2:], original[2][-2:], rtol=1e-5)


RNN_CASES = {
    "lstm": lambda: layers.LSTM(8),
    "lstm, sequences, backwards": lambda: layers.LSTM(
        5, return_sequences=True, go_backwards=True
    ),
    "gru": lambda: layers.GRU(8),
    "gru, sequences, backwards": lambda: layers.GRU(
        5, return_sequences=True, go_backwards=True
    ),
    "lstm without bias (Keras's loop)": lambda: layers.LSTM(4, use_bias=False),
    "gru, relu (Keras's loop)": lambda: layers.GRU(4, activation="relu"),
    "simple rnn": lambda: layers.SimpleRNN(8),
    "simple rnn, relu, sequences, backwards": lambda: layers.SimpleRNN(
        5, activation="relu", return_sequences=True, go_backwards=True
    ),
    "simple rnn without bias": lambda: layers.SimpleRNN(4, use_bias=False),
    "simple rnn, sigmoid (Keras's loop)": lambda: layers.SimpleRNN(
        4, activation="sigmoid"
    ),
    "simple rnn, dropout (Keras's loop)": lambda: layers.SimpleRNN(
        4, dropout=0.0001, recurrent_dropout=0.0001
    ),
    "stacked simple rnn, relu over tanh": lambda: keras.Sequential(
        [
            layers.SimpleRNN(6, return_sequences=True),
            layers.SimpleRNN(3, activation="relu"),
        ]
    ),
}


@pytest.mark.parametrize("case", sorted(RNN_CASES))
def test_recurrent_layers_match_keras(case):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((12, 3))
    model = keras.Model(inputs, layers.Flatten()(RNN_CASES[case]()(inputs)))
    fixed, original = fixed_and_original(model, images((4, 12, 3)))
    assert_same(fixed, original)


def test_masked_sequences_keep_keras_loop_and_results():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 2))
    masked = layers.Masking(0.0)(inputs)
    model = keras.Model(inputs, layers.LSTM(4)(masked))
    x = images((3, 6, 2))
    x[0, 4:] = 0.0  # padded tail
    fixed, original = fixed_and_original(model, x)
    assert_same(fixed, original)


def test_fused_kernels_are_taken_on_cpu(monkeypatch):
    """Not just equal results: the RNNs and BatchNorm run torch's fused kernels."""
    calls = []
    for name in ("lstm", "gru", "rnn_tanh"):
        real = getattr(torch._VF, name)
        monkeypatch.setattr(
            torch._VF,
            name,
            lambda *a, _real=real, _n=name, **k: (calls.append(_n), _real(*a, **k))[1],
        )
    real_batch_norm = torch.native_batch_norm
    monkeypatch.setattr(
        torch,
        "native_batch_norm",
        lambda *a, **k: (calls.append("batch_norm"), real_batch_norm(*a, **k))[1],
    )
    inputs = keras.Input((5, 2))
    model = keras.Model(
        inputs,
        [
            layers.LSTM(3)(inputs),
            layers.GRU(3)(inputs),
            layers.SimpleRNN(3)(inputs),
            layers.BatchNormalization()(inputs[:, 0]),
        ],
    )
    calls.clear()
    model(images((2, 5, 2)), training=True)
    assert sorted(calls) == ["batch_norm", "gru", "lstm", "rnn_tanh"]


def test_no_layout_copy_before_conv_and_pool():
    transpose = importlib.import_module(
        "keras.src.backend.torch.nn"
    )._transpose_spatial_inputs
    nhwc = torch.zeros((2, 5, 5, 3))
    nchw = transpose(nhwc)
    assert nchw.shape == (2, 3, 5, 5)
    assert nchw.data_ptr() == nhwc.data_ptr()  # a view, not a copy
    speedups.uninstall()
    copied = importlib.import_module(
        "keras.src.backend.torch.nn"
    )._transpose_spatial_inputs(nhwc)
    assert copied.data_ptr() != nhwc.data_ptr()


def test_switch_version_gate_and_uninstall(monkeypatch):
    speedups.install()
    assert speedups.installed() and speedups.available() is None
    assert speedups.install() is None  # idempotent: installed once
    speedups.uninstall()
    assert not speedups.installed()
    monkeypatch.setenv(speedups.SWITCH, "0")
    assert speedups.install() == f"{speedups.SWITCH}=0"
    assert not speedups.installed()
    monkeypatch.delenv(speedups.SWITCH)
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    assert "not a version they were tested with" in speedups.install()
    assert not speedups.installed()
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "2.99.0+cpu")
    assert "torch 2.99.0+cpu is not a version" in speedups.install()
    assert not speedups.installed()


def test_the_runner_installs_them_and_says_so(capsys):
    from common import experiment

    speedups.uninstall()
    assert experiment.install_speedups() == "installed"
    assert speedups.installed()
    assert f"{speedups.SWITCH}=0 turns them off" in capsys.readouterr().out


def test_fit_save_and_reload_with_the_fixes(tmp_path):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(layers.ReLU()(x))
    sequence = layers.Reshape((4, 16))(x)
    outputs = layers.Dense(2, activation="softmax")(layers.GRU(6)(sequence))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    data = images((64, 8, 8, 1))
    labels = (data.mean(axis=(1, 2, 3)) > 0).astype("int64")
    history = model.fit(data, labels, epochs=8, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "model.keras")
    reloaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        reloaded.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-6
    )


@pytest.mark.parametrize("cell", [layers.SimpleRNN, layers.LSTM, layers.GRU])
def test_stateful_recurrent_layers_carry_the_same_state(cell):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 3), batch_size=2)
    model = keras.Model(inputs, cell(4, stateful=True)(inputs))
    batches = [images((2, 6, 3), seed) for seed in (1, 2)]

    def two_batches():
        model.layers[-1].reset_state()
        return [keras.ops.convert_to_numpy(model(x)) for x in batches]

    results = fixed_then_original(model, two_batches)
    np.testing.assert_allclose(results[0], results[1], atol=TOLERANCE)
    assert not np.allclose(results[0][0], results[0][1])  # the state moved on


def test_mixed_precision_keeps_keras_paths():
    """float16/bfloat16 compute: BatchNorm and the RNNs fall back to Keras's code."""
    keras.utils.set_random_seed(6)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((8, 8, 2))
        x = layers.BatchNormalization()(layers.Conv2D(3, 3)(inputs))
        x = layers.LSTM(4)(layers.Reshape((6, 18))(x))
        model = keras.Model(inputs, layers.Dense(2, dtype="float32")(x))
        outputs = fixed_then_original(
            model,
            lambda: keras.ops.convert_to_numpy(
                model(images((3, 8, 8, 2)), training=True)
            ),
        )
    finally:
        keras.config.set_dtype_policy("float32")
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-2)


def test_jit_compile_fit_runs_with_the_fixes_installed():
    """torch.compile traces Keras's own code: the fixes step aside while tracing."""
    from labs.lab1_cnn import build_baseline

    keras.utils.set_random_seed(7)
    data = images((96, 8, 8, 1))
    labels = np.arange(96) % 10
    inputs = keras.Input((8, 8, 1))
    outputs = build_baseline(inputs, 10, width=4, dropout=0.3, activation="relu")
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    history = model.fit(data, labels, epochs=2, batch_size=32, verbose=0)
    assert speedups.installed()
    assert np.isfinite(history.history["loss"]).all()
