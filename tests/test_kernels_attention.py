"""Additive attention pooling: forward, gradients, masking, a BiGRU fit, saving."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels.attention import (  # noqa: E402
    AdditiveAttentionPooling,
    additive_attention,
    reference_additive_attention,
)
from kernels.gradcheck import (  # noqa: E402
    backprop_gradients,
    check_gradients,
    compare_with_reference,
)

SHAPES = [(2, 5, 4, 3), (3, 7, 6, 8), (1, 3, 2, 5)]  # batch, time, features, units


def _inputs(shape, seed, dtype="float32"):
    batch, time, features, units = shape
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((batch, time, features))
    kernel = rng.standard_normal((features, units))
    bias = rng.standard_normal(units)
    score_vector = rng.standard_normal(units)
    mask = np.ones((batch, time))
    mask[0, time // 2 + 1 :] = 0.0  # the first sequence is padded
    return [a.astype(dtype) for a in (values, kernel, bias, score_vector, mask)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
def test_attention_matches_reference_forward_and_gradient(shape, seed):
    output_errors, gradient_errors = compare_with_reference(
        additive_attention, reference_additive_attention, _inputs(shape, seed), seed
    )
    assert max(output_errors) <= 1e-6
    assert max(gradient_errors) <= 1e-5, gradient_errors


def test_attention_gradient_matches_finite_differences():
    *parameters, mask = _inputs((2, 3, 2, 3), 2, "float64")

    def attention(values, kernel, bias, score_vector):
        return additive_attention(values, kernel, bias, score_vector, mask)

    check_gradients(attention, parameters)


def test_weights_sum_to_one_and_ignore_padding():
    values, kernel, bias, score_vector, mask = _inputs((2, 5, 4, 3), 0)
    context, weights = additive_attention(values, kernel, bias, score_vector, mask)
    context = keras.ops.convert_to_numpy(context)
    weights = keras.ops.convert_to_numpy(weights)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(weights[0, 3:] == 0.0)
    np.testing.assert_allclose(
        context, np.einsum("bt,btd->bd", weights, values), atol=1e-6
    )
    # Padded steps change nothing, whatever they hold.
    values[0, 3:] = 1e3
    context_after, _ = additive_attention(values, kernel, bias, score_vector, mask)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(context_after)[0], context[0], atol=1e-5
    )


def test_attention_is_stable_for_huge_inputs():
    inputs = _inputs((2, 4, 3, 5), 0)
    inputs[0] = inputs[0] * 1e4
    context, weights = additive_attention(*inputs)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(context)))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(weights)))
    upstreams = [np.ones((2, 3), "float32"), np.ones((2, 4), "float32")]
    gradients = backprop_gradients(additive_attention, inputs, upstreams)
    assert all(np.all(np.isfinite(g)) for g in gradients)


def _text_model(vocabulary_size=30, sequence_length=8):
    tokens = keras.Input((sequence_length,), dtype="int32")
    embedded = keras.layers.Embedding(vocabulary_size, 8, mask_zero=True)(tokens)
    states = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True))(
        embedded
    )
    context, weights = AdditiveAttentionPooling(5, name="attention")(states)
    outputs = keras.layers.Dense(1, activation="sigmoid")(context)
    return keras.Model(tokens, [outputs, weights], name="bigru_attention")


def _token_data(count=32, sequence_length=8, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 30, (count, sequence_length))
    lengths = rng.integers(3, sequence_length + 1, count)
    tokens[np.arange(sequence_length)[None, :] >= lengths[:, None]] = 0
    labels = (tokens == 7).any(axis=1).astype("float32")[:, None]
    return tokens.astype("int32"), labels


def test_bigru_attention_fit_changes_the_attention_weights():
    tokens, labels = _token_data()
    model = _text_model()
    classifier = keras.Model(model.input, model.outputs[0])
    classifier.compile(
        optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy"
    )
    layer = model.get_layer("attention")
    before = [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]
    history = classifier.fit(tokens, labels, epochs=2, batch_size=32, verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in layer.weights]
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(after, before))
    _, weights = model.predict(tokens[:4], verbose=0)
    lengths = (tokens[:4] > 0).sum(axis=1)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    for row, length in zip(weights, lengths):
        assert np.all(row[length:] == 0.0)


def test_save_and_reload_with_safe_mode(tmp_path):
    model = _text_model()
    tokens, _ = _token_data(count=4)
    path = tmp_path / "bigru_attention.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    layer = reloaded.get_layer("attention")
    assert isinstance(layer, AdditiveAttentionPooling) and layer.units == 5
    for before, after in zip(
        model.predict(tokens, verbose=0), reloaded.predict(tokens, verbose=0)
    ):
        np.testing.assert_allclose(after, before, atol=1e-6)


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="units"):
        AdditiveAttentionPooling(0)
    with pytest.raises(ValueError, match="features"):
        AdditiveAttentionPooling(4)(np.ones((2, 3), "float32"))
