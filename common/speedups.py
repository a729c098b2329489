"""Faster Keras-on-torch training: four fixes to Keras's torch backend.

Keras 3.15.1 on the torch backend does avoidable work in every training step
(measured in bench/README.md, "Where the time goes"):

- **layouts**: before every conv and pooling op it copies the NHWC tensor into
  a contiguous NCHW one. torch's conv and pool kernels take an NHWC tensor as it
  is (an NCHW *view* with channels_last strides); its NCHW max-pool kernel was
  10x slower than the channels_last one here. Fix: the view, no copy (keras PR
  #23199 does the same for conv, merged after 3.15.1).
- **BatchNormalization** runs as a dozen separate ops (moments, rsqrt, multiply,
  add, and their backwards). Fix: torch's fused ``batch_norm`` kernel for the
  normalization; the moving averages are updated as Keras does
  (``Variable.assign`` with the biased batch variance), from the statistics the
  kernel computes anyway.
- **LSTM / GRU** run a Python loop over the time steps on CPU; torch's fused
  ``_VF.lstm`` / ``_VF.gru`` kernels, which Keras already uses on CUDA, are
  taken only when the inputs are on a GPU. Fix: the same fused call on CPU.
  **SimpleRNN** always runs Keras's generic Python loop (a cell call per time
  step); fix: torch's fused ``rnn_tanh`` / ``rnn_relu`` kernels, on any device.

Each fix keeps Keras's own code for every case it does not cover (other layouts,
masks, renorm, mixed precision, custom activations, tracing) and gives the same
outputs and gradients to float32 rounding (tests/test_speedups.py). They replace
private Keras functions, so they are installed only on the torch backend and only
for the Keras versions they were tested with; ``WORKBOOK_KERAS_FIXES=0`` turns
them off (bench/train_step.py compares both). The runner (common.experiment)
installs them explicitly before it builds a model, prints one line saying so (and
how to turn them off), and config.json records ``keras_fixes``.

This is patching another library's internals, which the workbook otherwise
avoids. It is done here because the waste is inside Keras's backend functions,
which no layer subclass of ours would reach (Lab 4's ResNet50V2 comes from
``keras.applications``; students write plain ``Conv2D``/``LSTM``), and because the
labs keep Keras's own layers. Drop a fix when the Keras pin moves past its
upstream change (``TESTED_KERAS`` makes a new Keras run unpatched until then).
"""

import importlib
import os

import keras
import torch
import torch.nn.functional as F

TESTED_KERAS = ("3.15.1",)
TESTED_TORCH = ("2.13.0",)  # they call torch's private _VF kernels too
SWITCH = "WORKBOOK_KERAS_FIXES"

_saved = []  # (owner, attribute, original) while installed


def available():
    """Why the fixes cannot be installed here, or None when they can."""
    if keras.backend.backend() != "torch":
        return f"the Keras backend is {keras.backend.backend()}, not torch"
    if keras.__version__ not in TESTED_KERAS:
        return (
            f"Keras {keras.__version__} is not a version they were tested "
            f"with ({', '.join(TESTED_KERAS)})"
        )
    if torch.__version__.split("+")[0] not in TESTED_TORCH:
        return (
            f"torch {torch.__version__} is not a version they were tested with "
            f"({', '.join(TESTED_TORCH)})"
        )
    if os.environ.get(SWITCH, "1") == "0":
        return f"{SWITCH}=0"
    return None


def installed():
    return bool(_saved)


def install():
    """Install the fixes (idempotent); return why they cannot be, or None."""
    reason = available()
    if reason or _saved:
        return reason
    for owner, attribute, replacement in _replacements():
        _saved.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, replacement)
    return None


def uninstall():
    while _saved:
        owner, attribute, original = _saved.pop()
        setattr(owner, attribute, original)


def _replacements():
    torch_nn = importlib.import_module("keras.src.backend.torch.nn")
    torch_rnn = importlib.import_module("keras.src.backend.torch.rnn")
    batch_norm = importlib.import_module(
        "keras.src.layers.normalization.batch_normalization"
    )
    simple_rnn = importlib.import_module("keras.src.layers.rnn.simple_rnn")
    return [
        (
            torch_nn,
            "_transpose_spatial_inputs",
            _layout_fix(torch_nn._transpose_spatial_inputs),
        ),
        (
            batch_norm.BatchNormalization,
            "call",
            _batch_norm_fix(batch_norm.BatchNormalization.call),
        ),
        (torch_rnn, "_fallback_lstm", _lstm_fix(torch_rnn)),
        (torch_rnn, "_fallback_gru", _gru_fix(torch_rnn)),
        (
            simple_rnn.SimpleRNN,
            "inner_loop",
            _simple_rnn_fix(simple_rnn.SimpleRNN.inner_loop),
        ),
    ]


def _tracing():
    """Under torch.compile or TorchScript tracing every fix leaves Keras's code be
    (as Keras does for its own fused CUDA path): measured, jit_compile=True did
    not compile Lab 1's model with them (dynamic batch dimension)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


# ----------------------------------------------------------------------------
# Layouts: NHWC -> an NCHW view with channels_last strides instead of a copy
# ----------------------------------------------------------------------------
_CHANNELS_LAST = {
    4: ((0, 3, 1, 2), torch.channels_last),
    5: ((0, 4, 1, 2, 3), torch.channels_last_3d),
}


def _nchw_view(inputs):
    """(N, H, W, C) -> (N, C, H, W) sharing the memory (a copy only if strided)."""
    order, memory_format = _CHANNELS_LAST[inputs.ndim]
    return inputs.permute(order).contiguous(memory_format=memory_format)


def _layout_fix(original):
    def transpose_spatial_inputs(inputs):
        if inputs.ndim not in _CHANNELS_LAST or _tracing():  # 1-D: Keras's way
            return original(inputs)
        return _nchw_view(inputs)

    return transpose_spatial_inputs


# ----------------------------------------------------------------------------
# BatchNormalization through torch's fused kernel
# ----------------------------------------------------------------------------
def _batch_norm_fix(original):
    def call(self, inputs, training=None, mask=None):
        if (
            mask is not None
            or self.renorm
            or self.synchronized
            or _tracing()
            or inputs.ndim not in (2, 4)
            or self.axis not in (-1, inputs.ndim - 1)
            or inputs.dtype != torch.float32
            or self.compute_dtype != "float32"
            or self.moving_mean.dtype != "float32"
        ):
            return original(self, inputs, training=training, mask=mask)
        x = inputs if inputs.ndim == 2 else _nchw_view(inputs)
        gamma = self.gamma.value if self.scale else None
        beta = self.beta.value if self.center else None
        if training and self.trainable:
            # The kernel's own batch statistics: mean and 1/sqrt(var + eps), the
            # biased variance Keras averages (torch's running_var is unbiased).
            outputs, mean, inverse_std = torch.native_batch_norm(
                x, gamma, beta, None, None, True, 0.0, self.epsilon
            )
            variance = inverse_std.detach() ** -2 - self.epsilon
            momentum = self.momentum
            self.moving_mean.assign(
                self.moving_mean.value * momentum + mean.detach() * (1.0 - momentum)
            )
            self.moving_variance.assign(
                self.moving_variance.value * momentum + variance * (1.0 - momentum)
            )
        else:
            outputs = F.batch_norm(
                x,
                self.moving_mean.value,
                self.moving_variance.value,
                gamma,
                beta,
                training=False,
                eps=self.epsilon,
            )
        return outputs if inputs.ndim == 2 else outputs.permute(0, 2, 3, 1)

    return call


# ----------------------------------------------------------------------------
# LSTM / GRU: torch's fused kernels on CPU, as Keras does on CUDA; SimpleRNN too
# ----------------------------------------------------------------------------
_FUSED_DTYPES = (torch.float32, torch.float64)


def _fused_ok(activation, recurrent_activation, bias, inputs):
    """Keras's own test for the fused path, less its "is this CUDA" part."""
    from keras.src import activations, ops

    return (
        bias is not None
        and activation in (activations.tanh, torch.tanh, ops.tanh)
        and recurrent_activation in (activations.sigmoid, torch.sigmoid, ops.sigmoid)
        and inputs.dtype in _FUSED_DTYPES
        and not _tracing()
    )


def _lstm_fix(rnn):
    original = rnn._fallback_lstm

    def fallback_lstm(
        inputs,
        initial_state_h,
        initial_state_c,
        kernel,
        recurrent_kernel,
        bias,
        activation,
        recurrent_activation,
        return_sequences,
        batch_first,
    ):
        if not _fused_ok(activation, recurrent_activation, bias, inputs):
            return original(
                inputs,
                initial_state_h,
                initial_state_c,
                kernel,
                recurrent_kernel,
                bias,
                activation,
                recurrent_activation,
                return_sequences,
                batch_first,
            )
        sequences = inputs if batch_first else inputs.permute(1, 0, 2)
        last, outputs, states = rnn._cudnn_lstm(
            sequences,
            initial_state_h,
            initial_state_c,
            kernel,
            recurrent_kernel,
            bias,
            return_sequences=return_sequences,
            device=inputs.device,
        )
        if not batch_first:
            outputs = outputs.permute(1, 0, 2)
        return last, outputs, states

    return fallback_lstm


def _gru_fix(rnn):
    original = rnn._fallback_gru

    def fallback_gru(
        inputs,
        initial_state,
        kernel,
        recurrent_kernel,
        bias,
        activation,
        recurrent_activation,
        return_sequences,
    ):
        if not _fused_ok(activation, recurrent_activation, bias, inputs):
            return original(
                inputs,
                initial_state,
                kernel,
                recurrent_kernel,
                bias,
                activation,
                recurrent_activation,
                return_sequences,
            )
        return rnn._cudnn_gru(
            inputs,
            initial_state,
            kernel,
            recurrent_kernel,
            bias,
            return_sequences=return_sequences,
            device=inputs.device,
        )

    return fallback_gru


def _simple_rnn_fix(original):
    from keras.src import activations

    kernels = {activations.tanh: "rnn_tanh", activations.relu: "rnn_relu"}

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        fused = kernels.get(cell.activation)
        if (
            fused is None
            or mask is not None
            or (training and (cell.dropout or cell.recurrent_dropout))
            or sequences.dtype not in _FUSED_DTYPES
            or _tracing()
        ):
            return original(self, sequences, initial_state, mask, training)
        if self.go_backwards:
            sequences = torch.flip(sequences, dims=[1])
        state = initial_state[0]  # RNN.call always passes a list
        # Keras: h = act(x @ kernel + bias + h @ recurrent_kernel); torch keeps
        # (out, in) weights and a second bias, here zero.
        params = [cell.kernel.value.T, cell.recurrent_kernel.value.T]
        if cell.bias is not None:
            params += [cell.bias.value, torch.zeros_like(cell.bias.value)]
        outputs, last_state = getattr(torch._VF, fused)(
            sequences,
            state.unsqueeze(0),
            params,
            cell.bias is not None,
            1,
            0.0,
            torch.is_grad_enabled(),
            False,
            True,
        )
        return outputs[:, -1], outputs, [last_state.squeeze(0)]

    return inner_loop
