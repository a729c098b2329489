"""Training speed: the workbook's Keras path against a hand-written torch loop.

    python -m bench.train_step                          # the table, ~3 min
    python -m bench.train_step --models lab1_digits --repeats 7 --threads 1
    python -m bench.train_step --experiments lab1_digits  # where the time goes
    python -m bench.train_step --profile lab1_digits      # docs/profile_keras_step.txt

For each lab model the table gives milliseconds per training step (steady
state) and per epoch for

- Keras: the model built by the lab's own builders, compiled as the lab
  compiles it, trained by ``common.training.fit`` (the labs' path: EarlyStopping,
  HistoryRecorder, TerminateOnNaN, the per-epoch BackupAndRestore checkpoint and
  the progress output) with the lab's own extra callbacks;
- torch: the same layers as ``torch.nn`` modules, the same optimizer settings
  (Adam, epsilon 1e-7 as Keras), batch size, data, per-step training metrics
  and per-epoch validation pass, in a plain loop over tensors held in memory.

A step is the time between the ends of two consecutive training steps in the
same epoch, so it holds everything paid once per batch (fetching the batch,
forward, backward, optimizer, metrics, callbacks); an epoch runs from one epoch
start to the next (training, validation, epoch-end callbacks, checkpoint). The
two runners alternate (Keras first, then torch first, ...) after a warm-up, so
that load from other processes falls on both; figures are medians over the
repeats and the ratio is the median of the paired per-repeat ratios. Before
timing, the Keras weights are copied into the torch model and the two forward
passes compared ("max |diff|"), which shows that both compute the same function.

A third runner, "Keras as shipped", is the same lab path with ``common.speedups``
(the workbook's fixes to Keras's torch backend) turned off, interleaved in the same
repeats (``--no-shipped`` leaves it out).

``--experiments MODEL`` times variants of the Keras path (no callbacks, progress
bar, metrics, data feeding, jit_compile, steps_per_execution, channels_first,
Keras as shipped) against the same torch loop; ``--threads-experiment MODEL``
compares torch thread counts and OpenMP wait policies in fresh processes;
``--profile MODEL`` writes torch.profiler and cProfile top-20 tables of the
steady-state Keras and torch steps. ``--threads`` defaults to 1: on a 2-core
machine shared with other jobs, 2 spinning OpenMP threads make every figure 3-25x
slower and meaningless.

Measured before the labs moved onto the shared runner (2-core CPU, load ~1, 1
torch thread; keras 3.15.1, torch 2.13.0+cpu),
``python -m bench.train_step --repeats 5``, CPU ms per step (wall within 1-3 %),
medians of 5 interleaved triples:

    model                               Keras   as shipped   torch   ratio (shipped)
    Lab 1 baseline CNN, digits 8x8, b64  29.5      38.5       17.7   1.59x (2.12x)
    Lab 1 baseline CNN, 32x32x1, b128   358.1     637.8      365.6   0.98x (1.78x)
    Lab 2 arch 3 LSTM, adding T=50      32.7      94.1       27.8   1.18x (3.39x)
    Lab 2 arch 3 GRU, adding T=50       58.0      92.1       50.5   1.13x (1.90x)
    Lab 3 DCGAN, digits 16x16, b64      61.9      75.0       37.5   1.57x (2.02x)

The 1.10x target is reached on the compute-bound CNN, nearly on the RNNs, not on
the small models: after the fixes both sides spend the same op time (17.9 vs
17.3 ms per digits step); the rest is Keras's per-layer Python. bench/README.md
has the epoch figures, the profiles and the variants tried.
"""

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # as common/__init__.py does
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from common import experiment, speedups, training  # noqa: E402
from common.data import Splits  # noqa: E402
from common.runs import keras_fixes, seed_everything  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_THREADS = torch.get_num_threads()
COMMAND = "python -m bench.train_step"
MODELS = ("lab1_digits", "lab1_32px", "lab2_lstm", "lab2_gru", "lab3_dcgan")
SIZES = {  # training / validation samples the bench uses (the step is the lab's)
    "lab1_32px": (384, 128),
    "lab2_lstm": (1024, 256),
    "lab2_gru": (1024, 256),
    "lab3_dcgan": (640, None),  # a subset of the digits training images
}
ADAM_EPSILON = 1e-7  # keras.optimizers.Adam's default (torch's is 1e-8)
BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default (torch's is 1e-5)


# ----------------------------------------------------------------------------
# Timing: timestamps at every epoch start and at the end of every train step
# ----------------------------------------------------------------------------
class Clock(keras.callbacks.Callback):
    """Epoch starts (a callback hook) and step ends (the train function returns).

    Every timestamp is a pair: wall time (``perf_counter``) and this process's
    CPU time (``process_time``, all its threads). On a machine shared with other
    jobs the wall time also holds the time spent waiting for a core; the CPU time
    is the work itself, and is far less noisy at 1 torch thread.

    The step end is taken by wrapping ``model.train_function`` rather than in
    ``on_train_batch_end``: a batch hook would itself change Keras's callback
    dispatch (it turns off asynchronous batch callbacks).
    """

    def __init__(self, window=None):
        super().__init__()
        self.epochs = []
        self.window = window  # (epoch, first tick, last tick, start, stop)

    @staticmethod
    def now():
        return time.perf_counter(), time.process_time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([self.now()])

    def tick(self):
        self.epochs[-1].append(self.now())
        if self.window and len(self.epochs) - 1 == self.window[0]:
            ticks = len(self.epochs[-1]) - 1
            if ticks == self.window[1]:
                self.window[3]()
            elif ticks == self.window[2]:
                self.window[4]()

    def step_ms(self, which=0):
        """Median time between consecutive step ends within an epoch."""
        gaps = [
            b[which] - a[which]
            for times in self.epochs
            for a, b in zip(times[1:], times[2:])
        ]
        return 1000.0 * statistics.median(gaps) if gaps else math.nan

    def epoch_ms(self, which=0):
        """Median time from one epoch start to the next (needs 2+ epochs)."""
        starts = [times[0][which] for times in self.epochs]
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        return 1000.0 * statistics.median(gaps) if gaps else math.nan

    def figures(self):
        """(wall ms/step, CPU ms/step, wall ms/epoch, CPU ms/epoch)."""
        return (self.step_ms(0), self.step_ms(1), self.epoch_ms(0), self.epoch_ms(1))


def instrument(model, clock):
    """Make ``model``'s train function tick ``clock`` after every step."""
    model.make_train_function()
    inner = getattr(model.train_function, "_bench_inner", model.train_function)

    def timed(data):
        logs = inner(data)
        clock.tick()
        return logs

    timed._bench_inner = inner
    model.train_function = timed


class BenchRun:
    """The part of common.runs.Run that ``common.training.fit`` uses."""

    lab = "bench"
    resumed = False
    initial_rows = ()

    def __init__(self, path):
        self.path = Path(path)
        self.plots = self.path / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)

    def write_config(self, **extra):
        pass

    def write_metrics(self, metrics):
        pass

    def save_model(self, model):
        pass

    def write_report(self, *args, **kwargs):
        pass


# ----------------------------------------------------------------------------
# A model under test: the Keras side, the torch side, and how to feed them
# ----------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    title: str
    batch_size: int
    threads: int | None  # the lab's torch thread setting (None: torch default)
    build_keras: object  # (**compile_overrides) -> compiled Keras model
    fit_args: dict  # x, y, validation_data, monitor, patience for training.fit
    lab_callbacks: object  # (run) -> the lab's own extra callbacks
    torch_loop: object  # TorchLoop
    num_train: int
    copy_weights: object = None  # (keras_model, torch_module) -> None
    compare: object = None  # (keras_model, torch_module) -> max |diff|
    extra: dict = field(default_factory=dict)


class TorchLoop:
    """A plain training loop: shuffled index batches from in-memory tensors."""

    def __init__(self, module, train_step, validate, x, y, batch_size):
        self.module, self.train_step, self.validate = module, train_step, validate
        self.x, self.y, self.batch_size = x, y, batch_size

    def run(self, clock, epochs):
        count = len(self.x)
        history = []
        for epoch in range(epochs):
            clock.on_epoch_begin(epoch)
            self.module.train()
            totals = None
            order = torch.randperm(count)
            for start in range(0, count, self.batch_size):
                index = order[start : start + self.batch_size]
                y = None if self.y is None else self.y[index]
                figures = self.train_step(self.x[index], y)
                totals = (
                    figures
                    if totals is None
                    else [a + b for a, b in zip(totals, figures)]
                )
                clock.tick()
            self.module.eval()
            with torch.no_grad():
                validation = self.validate()
            history.append([float(t) / count for t in totals] + validation)
        return history


def torch_adam(parameters, learning_rate, beta_1=0.9, beta_2=0.999):
    return torch.optim.Adam(
        parameters, lr=learning_rate, betas=(beta_1, beta_2), eps=ADAM_EPSILON
    )


def cosine_decay(optimizer, decay_steps, alpha):
    """keras.optimizers.schedules.CosineDecay as a torch LambdaLR (per step)."""

    def factor(step):
        progress = min(step, decay_steps) / decay_steps
        return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)) + alpha

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(count, batch_size):
    return [slice(start, start + batch_size) for start in range(0, count, batch_size)]


def memory_format(args):
    """The torch side's image layout: channels_last (PyTorch's advice on CPU, and
    what Keras's own conv asks for) or plain NCHW-contiguous."""
    return {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}[
        args.torch_layout
    ]


def to_nchw(x, layout=torch.contiguous_format):
    """NHWC numpy images as an NCHW torch tensor in the given memory format."""
    # clone, not contiguous(): with one channel both layouts count as contiguous,
    # and the strides numpy's transpose leaves would pick channels_last kernels
    return torch.from_numpy(np.transpose(x, (0, 3, 1, 2))).clone(memory_format=layout)


def weight(variable):
    return torch.as_tensor(keras.ops.convert_to_numpy(variable))


# ----------------------------------------------------------------------------
# Lab 1: the baseline CNN (two stages of two conv-BN-relu, max-pooling, head)
# ----------------------------------------------------------------------------
class TorchBaseline(nn.Module):
    """labs.lab1_cnn.build_baseline in torch.nn (NCHW, logits out)."""

    def __init__(self, channels, num_classes, mean, variance, width=32, dropout=0.3):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).reshape(1, -1, 1, 1))
        scale = np.maximum(np.sqrt(variance), keras.config.epsilon())
        self.register_buffer("scale", torch.as_tensor(scale).reshape(1, -1, 1, 1))
        layers, previous = [], channels
        for filters in (width, 2 * width):
            for _ in range(2):
                layers += [
                    nn.Conv2d(previous, filters, 3, padding=1, bias=False),
                    nn.BatchNorm2d(filters, eps=BN_EPSILON, momentum=0.1),
                    nn.ReLU(),
                ]
                previous = filters
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x):
        x = self.features((x - self.mean) / self.scale)
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))


def copy_baseline(model, module):
    norm = model.get_layer("standardize")
    module.mean.copy_(weight(norm.mean).reshape(module.mean.shape))
    scale = np.maximum(
        np.sqrt(keras.ops.convert_to_numpy(norm.variance)), keras.config.epsilon()
    )
    module.scale.copy_(torch.as_tensor(scale).reshape(module.scale.shape))
    convs = [m for m in module.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in module.features if isinstance(m, nn.BatchNorm2d)]
    names = ["stage1a", "stage1b", "stage2a", "stage2b"]
    for name, conv, bn in zip(names, convs, norms):
        conv.weight.copy_(
            weight(model.get_layer(f"{name}_conv").kernel).permute(3, 2, 0, 1)
        )
        keras_bn = model.get_layer(f"{name}_bn")
        bn.weight.copy_(weight(keras_bn.gamma))
        bn.bias.copy_(weight(keras_bn.beta))
        bn.running_mean.copy_(weight(keras_bn.moving_mean))
        bn.running_var.copy_(weight(keras_bn.moving_variance))
    dense = model.get_layer("softmax")
    module.classifier.weight.copy_(weight(dense.kernel).T)
    module.classifier.bias.copy_(weight(dense.bias))


def lab1_case(name, args):
    from labs import lab1_cnn

    lab_args = experiment.parse_args(lab1_cnn.LAB, ["--arch", "baseline"])
    hyper = vars(lab_args)
    if name == "lab1_digits":
        from common.data import load_images

        data = load_images("digits", seed=0)
        x_train, y_train = data.x_train, data.y_train
        x_val, y_val = data.x_val, data.y_val
        num_classes, batch_size = data.num_classes, hyper["batch_size"]
        title = (
            f"Lab 1 baseline CNN, digits 8x8x1 ({len(x_train)} images), "
            f"batch {batch_size}"
        )
    else:
        rng = np.random.default_rng(0)
        num_train, num_val = SIZES[name]
        x_train = rng.random((num_train, 32, 32, 1), dtype="float32")
        x_val = rng.random((num_val, 32, 32, 1), dtype="float32")
        y_train = rng.integers(0, 10, num_train)
        y_val = rng.integers(0, 10, num_val)
        num_classes, batch_size = 10, 128
        title = (
            f"Lab 1 baseline CNN, synthetic 32x32x1 ({num_train} images), "
            f"batch {batch_size}"
        )
    input_shape = x_train.shape[1:]
    splits = Splits(
        "bench",
        "bench arrays",
        x_train,
        y_train,
        x_val,
        y_val,
        x_val,
        y_val,
        class_names=[str(label) for label in range(num_classes)],
    )

    def build_keras(**compile_overrides):
        """The lab's own build_model (Normalization, baseline, compile); the
        channels_first variant builds the same layers by hand."""
        if not compile_overrides.pop("channels_first", False):
            model = lab1_cnn.build_model(lab_args, splits)
            if compile_overrides:
                model = compile_lab1(model, hyper["learning_rate"], **compile_overrides)
            return model
        previous = keras.config.image_data_format()
        keras.config.set_image_data_format("channels_first")
        try:
            shape = (input_shape[2], *input_shape[:2])
            normalization = keras.layers.Normalization(axis=1, name="standardize")
            normalization.adapt(np.transpose(x_train, (0, 3, 1, 2)))
            inputs = keras.Input(shape, name="image")
            outputs = lab1_cnn.build_baseline(
                normalization(inputs),
                num_classes,
                hyper["width"],
                hyper["dropout"],
                hyper["activation"],
            )
            model = keras.Model(inputs, outputs, name="baseline")
        finally:
            keras.config.set_image_data_format(previous)
        return compile_lab1(model, hyper["learning_rate"], **compile_overrides)

    mean, variance = x_train.mean(axis=(0, 1, 2)), x_train.var(axis=(0, 1, 2))
    layout = memory_format(args)
    module = TorchBaseline(
        input_shape[-1], num_classes, mean, variance, hyper["width"], hyper["dropout"]
    ).to(memory_format=layout)
    optimizer = torch_adam(module.parameters(), hyper["learning_rate"])
    x_t, y_t = to_nchw(x_train, layout), torch.from_numpy(y_train.astype("int64"))
    xv_t, yv_t = to_nchw(x_val, layout), torch.from_numpy(y_val.astype("int64"))

    def train_step(x, y):
        logits = module(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
        return [loss.detach() * len(y), correct]

    def validate():
        loss, correct = 0.0, 0
        for part in batches(len(xv_t), batch_size):
            logits = module(xv_t[part])
            loss += float(F.cross_entropy(logits, yv_t[part], reduction="sum"))
            correct += int((logits.argmax(dim=1) == yv_t[part]).sum())
        return [loss / len(xv_t), correct / len(xv_t)]

    def compare(model, torch_module):
        probe = x_val[:batch_size]
        expected = keras.ops.convert_to_numpy(model(probe, training=False))
        torch_module.eval()
        with torch.no_grad():
            got = torch.softmax(torch_module(to_nchw(probe, layout)), dim=1).numpy()
        return float(np.max(np.abs(expected - got)))

    return Case(
        name,
        title,
        batch_size,
        None,
        build_keras,
        dict(
            x=x_train,
            y=y_train,
            validation_data=(x_val, y_val),
            monitor="val_loss",
            patience=hyper["patience"],
        ),
        lambda run: [],
        TorchLoop(module, train_step, validate, x_t, y_t, batch_size),
        len(x_train),
        copy_baseline,
        compare,
        extra=dict(x_val=x_val, y_val=y_val, channels=input_shape[-1]),
    )


def compile_lab1(model, learning_rate, metrics=None, **overrides):
    """Lab 1's compile (Adam, sparse cross-entropy, accuracy) with overrides."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"] if metrics is None else metrics,
        **overrides,
    )
    return model


# ----------------------------------------------------------------------------
# Lab 2: arch 3 (two stacked recurrent layers, Dense(32, relu), Dense(1))
# ----------------------------------------------------------------------------
class TorchArch3(nn.Module):
    def __init__(self, cell, features, units):
        super().__init__()
        layer = nn.LSTM if cell == "lstm" else nn.GRU
        self.first = layer(features, units, batch_first=True)
        self.second = layer(units, units, batch_first=True)
        self.dense = nn.Linear(units, 32)
        self.output = nn.Linear(32, 1)

    def forward(self, x):
        x, _ = self.first(x)
        x, _ = self.second(x)
        return self.output(torch.relu(self.dense(x[:, -1]))).squeeze(-1)


def copy_arch3(cell):
    def copy(model, module):
        for index, torch_layer in ((1, module.first), (2, module.second)):
            keras_cell = model.get_layer(f"{cell}_{index}").cell
            kernel = weight(keras_cell.kernel)
            recurrent = weight(keras_cell.recurrent_kernel)
            bias = weight(keras_cell.bias)
            units = recurrent.shape[0]
            if cell == "lstm":  # both i, f, c/g, o; one Keras bias
                input_bias, recurrent_bias = bias, torch.zeros_like(bias)
            else:  # Keras z, r, h -> torch r, z, n; bias = [input, recurrent]
                order = torch.cat(
                    [
                        torch.arange(units, 2 * units),
                        torch.arange(units),
                        torch.arange(2 * units, 3 * units),
                    ]
                )
                kernel, recurrent = kernel[:, order], recurrent[:, order]
                input_bias, recurrent_bias = bias[0, order], bias[1, order]
            torch_layer.weight_ih_l0.copy_(kernel.T)
            torch_layer.weight_hh_l0.copy_(recurrent.T)
            torch_layer.bias_ih_l0.copy_(input_bias)
            torch_layer.bias_hh_l0.copy_(recurrent_bias)
        for keras_name, linear in (
            ("dense_32", module.dense),
            ("prediction", module.output),
        ):
            dense = model.get_layer(keras_name)
            linear.weight.copy_(weight(dense.kernel).T)
            linear.bias.copy_(weight(dense.bias))

    return copy


def lab2_case(name, args):
    from labs import lab2_rnn

    cell = name.split("_")[1]
    lab_args = experiment.parse_args(
        lab2_rnn.LAB, ["--dataset", "adding", "--arch", "3", "--cell", cell]
    )
    hyper = vars(lab_args)
    num_train, num_val = SIZES[name]
    seq_len = lab_args.seq_len
    data = lab2_rnn.load_adding(seq_len, num_train, seed=0)
    data.x_val, data.y_val = data.x_val[:num_val], data.y_val[:num_val]
    batch_size = hyper["batch_size"]

    def build_keras(**compile_overrides):
        model = lab2_rnn.build_model(lab_args, data)
        if compile_overrides:
            metrics = compile_overrides.pop("metrics", ["mae"])
            model.compile(
                optimizer=keras.optimizers.Adam(hyper["learning_rate"]),
                loss="mse",
                metrics=metrics,
                **compile_overrides,
            )
        return model

    module = TorchArch3(cell, data.x_train.shape[-1], hyper["units"])
    optimizer = torch_adam(module.parameters(), hyper["learning_rate"])
    x_t, y_t = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xv_t, yv_t = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)

    def train_step(x, y):
        prediction = module(x)
        loss = F.mse_loss(prediction, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            absolute = (prediction - y).abs().sum()
        return [loss.detach() * len(y), absolute]

    def validate():
        squared, absolute = 0.0, 0.0
        for part in batches(len(xv_t), batch_size):
            error = module(xv_t[part]) - yv_t[part]
            squared += float((error**2).sum())
            absolute += float(error.abs().sum())
        return [squared / len(xv_t), absolute / len(xv_t)]

    def compare(model, torch_module):
        probe = data.x_val[:batch_size]
        expected = keras.ops.convert_to_numpy(model(probe, training=False))[:, 0]
        torch_module.eval()
        with torch.no_grad():
            got = torch_module(torch.from_numpy(probe)).numpy()
        return float(np.max(np.abs(expected - got)))

    title = (
        f"Lab 2 arch 3 {cell.upper()}, adding T={seq_len} ({num_train} "
        f"sequences), batch {batch_size}"
    )
    return Case(
        name,
        title,
        batch_size,
        lab2_rnn.LAB.threads,
        build_keras,
        dict(
            x=data.x_train,
            y=data.y_train,
            validation_data=(data.x_val, data.y_val),
            monitor="val_loss",
            patience=hyper["patience"],
        ),
        lambda run: [],
        TorchLoop(module, train_step, validate, x_t, y_t, batch_size),
        num_train,
        copy_arch3(cell),
        compare,
        extra=dict(x_val=data.x_val, y_val=data.y_val),
    )


# ----------------------------------------------------------------------------
# Lab 3: the DCGAN (one discriminator and one generator update per step)
# ----------------------------------------------------------------------------
class TorchGenerator(nn.Module):
    def __init__(self, latent_dim, image_shape, width):
        super().__init__()
        height, width_pixels, channels = image_shape
        self.grid = (2 * width, height // 4, width_pixels // 4)
        self.project = nn.Linear(latent_dim, int(np.prod(self.grid)), bias=False)
        self.project_bn = nn.BatchNorm1d(
            self.project.out_features, eps=BN_EPSILON, momentum=0.01
        )
        self.up_1 = nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False)
        self.up_1_bn = nn.BatchNorm2d(width, eps=BN_EPSILON, momentum=0.01)
        self.up_2 = nn.ConvTranspose2d(width, channels, 4, 2, 1)

    def forward(self, noise):
        x = torch.relu(self.project_bn(self.project(noise)))
        x = x.view(-1, *self.grid)
        x = torch.relu(self.up_1_bn(self.up_1(x)))
        return torch.tanh(self.up_2(x))


class TorchDiscriminator(nn.Module):
    def __init__(self, image_shape, width):
        super().__init__()
        height, width_pixels, channels = image_shape
        self.down_1 = nn.Conv2d(channels, width, 4, 2, 1)
        self.down_2 = nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False)
        self.down_2_bn = nn.BatchNorm2d(2 * width, eps=BN_EPSILON, momentum=0.01)
        self.score = nn.Linear(2 * width * (height // 4) * (width_pixels // 4), 1)

    def forward(self, x):
        x = F.leaky_relu(self.down_1(x), 0.2)
        x = F.leaky_relu(self.down_2_bn(self.down_2(x)), 0.2)
        return self.score(x.flatten(1))


class TorchFeatures(nn.Module):
    """labs.lab3_gan.build_feature_classifier up to its "features" layer."""

    def __init__(self, image_shape, feature_dim):
        super().__init__()
        height, width_pixels, channels = image_shape
        self.conv_1 = nn.Conv2d(channels, 16, 3, padding=1)
        self.conv_2 = nn.Conv2d(16, 32, 3, padding=1)
        self.features = nn.Linear(32 * (height // 4) * (width_pixels // 4), feature_dim)
        self.probabilities = nn.Linear(feature_dim, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv_1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv_2(x)), 2)
        features = torch.relu(self.features(x.flatten(1)))
        return features, torch.softmax(self.probabilities(features), dim=1)


def frechet_distance(real, fake):
    """The lab's Frechet distance (float64, eigh) between two feature batches."""
    statistics_ = []
    for features in (real.double(), fake.double()):
        count = max(len(features), 2)
        mean = features.sum(0) / count
        covariance = (features.T @ features / count - torch.outer(mean, mean)) * (
            count / (count - 1.0)
        )
        statistics_.append((mean, covariance))
    (mean_a, cov_a), (mean_b, cov_b) = statistics_
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = (
        torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp(min=0).sqrt().sum()
    )
    return float(
        ((mean_a - mean_b) ** 2).sum()
        + cov_a.trace()
        + cov_b.trace()
        - 2.0 * trace_root
    )


def nhwc_order(channels, height, width):
    """Keras's (h, w, c) flat index for each torch (c, h, w) flat position."""
    c, h, w = np.meshgrid(
        np.arange(channels), np.arange(height), np.arange(width), indexing="ij"
    )
    return torch.as_tensor(((h * width + w) * channels + c).reshape(-1))


def copy_gan(gan, modules):
    generator, discriminator = modules["generator"], modules["discriminator"]
    g, d = gan.generator, gan.discriminator
    order = nhwc_order(*generator.grid)
    generator.project.weight.copy_(weight(g.get_layer("project").kernel)[:, order].T)
    for keras_name, bn, index in (
        ("project_bn", generator.project_bn, order),
        ("up_1_bn", generator.up_1_bn, None),
        ("down_2_bn", discriminator.down_2_bn, None),
    ):
        layer = (g if keras_name != "down_2_bn" else d).get_layer(keras_name)
        for name, tensor in (
            ("gamma", bn.weight),
            ("beta", bn.bias),
            ("moving_mean", bn.running_mean),
            ("moving_variance", bn.running_var),
        ):
            value = weight(getattr(layer, name))
            tensor.copy_(value if index is None else value[index])
    for keras_name, conv in (("up_1", generator.up_1), ("up_2", generator.up_2)):
        layer = g.get_layer(keras_name)
        conv.weight.copy_(weight(layer.kernel).permute(3, 2, 0, 1))
        if conv.bias is not None:
            conv.bias.copy_(weight(layer.bias))
    for keras_name, conv in (
        ("down_1", discriminator.down_1),
        ("down_2", discriminator.down_2),
    ):
        layer = d.get_layer(keras_name)
        conv.weight.copy_(weight(layer.kernel).permute(3, 2, 0, 1))
        if conv.bias is not None:
            conv.bias.copy_(weight(layer.bias))
    score = d.get_layer("score")
    flat = discriminator.score.in_features
    channels = discriminator.down_2.out_channels
    side = int(round(math.sqrt(flat / channels)))
    order = nhwc_order(channels, side, side)
    discriminator.score.weight.copy_(weight(score.kernel)[order].T)
    discriminator.score.bias.copy_(weight(score.bias))


def lab3_case(name, args):
    from labs import lab3_gan

    lab_args = experiment.parse_args(
        lab3_gan.LAB, ["--arch", "dcgan", "--dataset", "digits"]
    )
    experiment.fill_defaults(lab3_gan.LAB, lab_args)  # as the runner does per run
    hyper = vars(lab_args)
    with contextlib.redirect_stdout(io.StringIO()):  # trains the feature classifier
        data = lab3_gan.load_data(lab_args)
    data.x_train = data.x_train[: SIZES[name][0]]
    batch_size = hyper["batch_size"]
    image_shape = data.input_shape
    steps = hyper["epochs"] * math.ceil(len(data.x_train) / batch_size)

    def build_keras(**compile_overrides):
        if set(compile_overrides) - {"jit_compile"}:
            raise ValueError("the GAN compiles its own two optimizers and metrics")
        gan = lab3_gan.build_model(lab_args, data)
        gan.jit_compile = compile_overrides.get("jit_compile", False)
        return gan

    def lab_callbacks(run):  # the runner's for the lab: samples at chosen epochs
        validation, batch = (data.x_val, data.y_val), lab3_gan.BATCH["images"]
        take = experiment.snapshots(
            lab3_gan.LAB, run, lab_args, data, validation, batch
        )
        return [take]

    layout = memory_format(args)
    generator = TorchGenerator(hyper["latent_dim"], image_shape, hyper["width"]).to(
        memory_format=layout
    )
    discriminator = TorchDiscriminator(image_shape, hyper["width"]).to(
        memory_format=layout
    )
    features = (
        TorchFeatures(image_shape, lab3_gan.FEATURES).to(memory_format=layout).eval()
    )
    modules = nn.ModuleDict(dict(generator=generator, discriminator=discriminator))
    betas = dict(beta_1=hyper["beta_1"], beta_2=hyper["beta_2"])
    g_optimizer = torch_adam(generator.parameters(), hyper["learning_rate"], **betas)
    d_optimizer = torch_adam(
        discriminator.parameters(), hyper["learning_rate"], **betas
    )
    schedules = [  # the lab's cosine decay of both rates, stepped per update
        cosine_decay(optimizer, steps, hyper["final_learning_rate"])
        for optimizer in (g_optimizer, d_optimizer)
    ]
    g_weights = list(generator.parameters())
    d_weights = list(discriminator.parameters())
    bce = nn.BCEWithLogitsLoss()
    x_t, xv_t = to_nchw(data.x_train, layout), to_nchw(data.x_val, layout)
    latent_dim = hyper["latent_dim"]

    def update(loss, weights, optimizer):
        gradients = torch.autograd.grad(loss, weights)
        for parameter, gradient in zip(weights, gradients):
            parameter.grad = gradient
        optimizer.step()

    def train_step(real, _):
        count = len(real)
        fake = generator(torch.randn(count, latent_dim)).detach()
        real_scores, fake_scores = discriminator(real), discriminator(fake)
        d_loss = bce(real_scores, torch.ones_like(real_scores)) + bce(
            fake_scores, torch.zeros_like(fake_scores)
        )
        update(d_loss, d_weights, d_optimizer)
        scores = discriminator(generator(torch.randn(count, latent_dim)))
        g_loss = bce(scores, torch.ones_like(scores))
        update(g_loss, g_weights, g_optimizer)
        for schedule in schedules:
            schedule.step()
        return [d_loss.detach() * count, g_loss.detach() * count]

    def validate():
        distances, confidences = [], []
        for part in batches(len(xv_t), 256):  # the lab's validation batch size
            real = xv_t[part]
            fake = generator(torch.randn(len(real), latent_dim))
            real_features, _ = features(real)
            fake_features, probabilities = features(fake)
            distances.append(frechet_distance(real_features, fake_features))
            confidences.append(float(probabilities.max(dim=1).values.mean()))
        return [distances[-1], statistics.mean(confidences)]

    def compare(gan, torch_modules):
        noise = (
            np.random.default_rng(0)
            .normal(size=(batch_size, latent_dim))
            .astype("float32")
        )
        torch_modules.eval()
        expected = keras.ops.convert_to_numpy(gan.generator(noise, training=False))
        with torch.no_grad():
            got = generator(torch.from_numpy(noise)).numpy().transpose(0, 2, 3, 1)
            scores = discriminator(to_nchw(data.x_val[:batch_size], layout)).numpy()
        expected_scores = keras.ops.convert_to_numpy(
            gan.discriminator(data.x_val[:batch_size], training=False)
        )
        return float(
            max(
                np.max(np.abs(expected - got)), np.max(np.abs(expected_scores - scores))
            )
        )

    loop = TorchLoop(modules, train_step, validate, x_t, None, batch_size)
    title = (
        f"Lab 3 DCGAN, digits 16x16x1 ({len(data.x_train)} images), batch "
        f"{batch_size}, 1 D + 1 G update"
    )
    return Case(
        name,
        title,
        batch_size,
        None,
        build_keras,
        dict(
            x=data.x_train,
            y=None,
            validation_data=(data.x_val,),
            validation_batch_size=lab3_gan.BATCH["images"],
            monitor="val_loss",
            patience=hyper["epochs"] + 1,
        ),
        lab_callbacks,
        loop,
        len(data.x_train),
        copy_gan,
        compare,
        extra=dict(modules=modules),
    )


def make_case(name, args):
    if name.startswith("lab1"):
        return lab1_case(name, args)
    if name.startswith("lab2"):
        return lab2_case(name, args)
    return lab3_case(name, args)


# ----------------------------------------------------------------------------
# Runners
# ----------------------------------------------------------------------------
def lab_fit(case, model, run, clock, epochs):
    """The labs' path: common.training.fit with the lab's callbacks."""
    arguments = dict(case.fit_args)
    x, y = arguments.pop("x"), arguments.pop("y")
    instrument(model, clock)
    training.fit(
        model,
        run,
        x,
        y,
        epochs=epochs,
        batch_size=case.batch_size,
        title=case.name,
        callbacks=[clock, *case.lab_callbacks(run)],
        **arguments,
    )


def checked_pair(case):
    """A Keras model and the torch module holding the same weights, compared."""
    seed_everything(0)
    model = case.build_keras()
    module = case.torch_loop.module
    with torch.no_grad():
        case.copy_weights(model, module)
    difference = case.compare(model, module)
    return model, difference


def set_threads(case, args):
    threads = args.threads or case.threads or DEFAULT_THREADS
    torch.set_num_threads(threads)
    return threads


def paired(keras_values, torch_values):
    ratios = [k / t for k, t in zip(keras_values, torch_values)]
    return (
        statistics.median(keras_values),
        statistics.median(torch_values),
        statistics.median(ratios),
        min(ratios),
        max(ratios),
    )


def measure(case, args, scratch):
    """Interleaved Keras / torch (/ Keras as shipped) timings; the table row."""
    threads = set_threads(case, args)
    model, difference = checked_pair(case)
    run = BenchRun(scratch / case.name)
    runners = ["keras", "torch"] + ([] if args.no_shipped else ["shipped"])
    figures = {runner: [] for runner in runners}
    loads = []
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        shift = repeat % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            clock = Clock()
            if runner == "keras":
                lab_fit(case, model, run, clock, args.epochs)
            elif runner == "shipped":
                with keras_as_shipped():
                    lab_fit(case, model, run, clock, args.epochs)
            else:
                case.torch_loop.run(clock, args.epochs)
            if repeat:
                figures[runner].append(clock.figures())
        loads.append(os.getloadavg()[0])
        print(
            f"  {case.name} repeat {repeat}: "
            + ", ".join(f"{runner} {clock_text(figures[runner])}" for runner in runners)
            + f" ms/step (wall, CPU), load {loads[-1]:.1f}",
            flush=True,
        )

    def against_torch(runner):
        return [
            paired(k, t) for k, t in zip(zip(*figures[runner]), zip(*figures["torch"]))
        ]

    row = dict(
        case=case,
        threads=threads,
        difference=difference,
        figures=against_torch("keras"),
        load=statistics.median(loads),
    )
    if "shipped" in runners:
        row["shipped"] = against_torch("shipped")
    return row


def clock_text(values):
    return f"{values[-1][0]:.1f}, {values[-1][1]:.1f}" if values else "warm-up"


# ----------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------
def machine_line(threads_text):
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"threads {threads_text}, OMP_WAIT_POLICY {policy}, load average {load} "
        f"(1/5/15 min); Python "
        f"{platform.python_version()}, keras {keras.__version__}, torch "
        f"{torch.__version__}, numpy {np.__version__}, backend "
        f"{keras.backend.backend()}, common.speedups {keras_fixes()}"
    )


def ratio_text(figures):
    return f"{figures[2]:.2f}x ({figures[3]:.2f}-{figures[4]:.2f})"


def command_line(argv):
    return " ".join([COMMAND, *argv]).strip()


def print_table(rows, args, argv):
    print()
    print(
        f"Keras (common.training.fit, as the labs) vs a hand-written torch loop; "
        f"median of {args.repeats} interleaved repeats of {args.epochs} epochs "
        f"after a warm-up; progress output verbose="
        f"{training.progress_verbosity()}"
    )
    print(f"command: {command_line(argv)}")
    threads = sorted({row["threads"] for row in rows})
    print(machine_line("/".join(str(t) for t in threads)))
    print()
    shipped = all("shipped" in row for row in rows)
    print(
        "| model | threads | wall ms/step Keras / torch | ratio (min-max) | "
        "CPU ms/step Keras / torch | ratio (min-max) | wall ms/epoch Keras / "
        "torch | ratio | CPU ms/epoch ratio |"
        + (
            " Keras as shipped: CPU ms/step | ratio (min-max) | ms/epoch ratio |"
            if shipped
            else ""
        )
        + " steps/epoch | load | max abs diff |"
    )
    print("|---" * (12 + 3 * shipped) + "|")
    for row in rows:
        case = row["case"]
        wall, cpu, epoch, cpu_epoch = row["figures"]
        steps = math.ceil(case.num_train / case.batch_size)
        extra = ""
        if shipped:
            _, shipped_cpu, _, shipped_epoch = row["shipped"]
            extra = (
                f" {shipped_cpu[0]:.1f} | {ratio_text(shipped_cpu)} | "
                f"{shipped_epoch[2]:.2f}x |"
            )
        print(
            f"| {case.title} | {row['threads']} | {wall[0]:.1f} / {wall[1]:.1f} | "
            f"{ratio_text(wall)} | {cpu[0]:.1f} / {cpu[1]:.1f} | {ratio_text(cpu)} "
            f"| {epoch[0]:.0f} / {epoch[1]:.0f} | {epoch[2]:.2f}x | "
            f"{cpu_epoch[2]:.2f}x |{extra} {steps} | {row['load']:.1f} | "
            f"{row['difference']:.1e} |"
        )
    print()
    print(
        "Keras = the labs' path, with common.speedups (the workbook's fixes to "
        "Keras's torch backend); Keras as shipped = the same fit with them off."
    )
    print(
        "ratio = Keras / torch, median of the per-repeat pairs (target <= 1.10). "
        "max abs diff: largest difference of the two forward passes with the "
        "same weights (probabilities, predictions, or generated pixels and "
        "scores)."
    )


# ----------------------------------------------------------------------------
# --experiments: variants of the Keras path against the same torch loop
# ----------------------------------------------------------------------------
def workbook_callbacks(run, case, checkpoint=True):
    """The callback list ``common.training.fit`` builds, for a direct model.fit."""
    from common.callbacks import HistoryRecorder, InterruptSafeBackup, early_stopping
    from common.runs import BACKUP

    stopper = early_stopping(
        monitor=case.fit_args["monitor"], patience=case.fit_args["patience"]
    )
    callbacks = [
        stopper,
        HistoryRecorder(run.path, early_stopping=stopper),
        keras.callbacks.TerminateOnNaN(),
        *case.lab_callbacks(run),
    ]
    if checkpoint:
        callbacks.append(
            InterruptSafeBackup(str(run.path / BACKUP), double_checkpoint=True)
        )
    return callbacks


def plain_fit(
    case, model, clock, epochs, verbose=0, callbacks=(), feed="arrays", **kwargs
):
    """``model.fit`` directly: chosen callbacks, verbosity and data feeding."""
    x, y = case.fit_args["x"], case.fit_args["y"]
    validation = case.fit_args["validation_data"]
    batch_size = case.batch_size
    if feed == "channels_first":
        x = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
        validation = (
            np.ascontiguousarray(np.transpose(validation[0], (0, 3, 1, 2))),
            *validation[1:],
        )
    elif feed != "arrays":
        tensors = [torch.from_numpy(np.asarray(x))]
        if y is not None:
            tensors.append(torch.from_numpy(np.asarray(y)))
        if feed == "tensors":
            x, y = tensors[0], tensors[1] if y is not None else None
        else:
            dataset = torch.utils.data.TensorDataset(*tensors)
            if feed == "dataloader":
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=batch_size, shuffle=True
                )
            else:  # "prebatched": the batches cut once, their order shuffled
                prebatched = [
                    tuple(t[part] for t in tensors)
                    for part in batches(len(tensors[0]), batch_size)
                ]
                loader = torch.utils.data.DataLoader(
                    prebatched, batch_size=None, shuffle=True
                )
            x, y, batch_size = loader, None, None
            kwargs.setdefault("shuffle", False)  # the loader shuffles
    instrument(model, clock)
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=verbose,
        callbacks=[clock, *callbacks],
        validation_data=validation,
        validation_batch_size=case.fit_args.get("validation_batch_size"),
        **kwargs,
    )


def experiment_variants(case, run):
    """(label, build kwargs, runner) for every variant of the Keras path."""
    image = case.name.startswith("lab1")

    def lab(model, clock, epochs):
        lab_fit(case, model, run, clock, epochs)

    def direct(verbose=0, callbacks=False, checkpoint=True, **kwargs):
        def runner(model, clock, epochs):
            extra = workbook_callbacks(run, case, checkpoint) if callbacks else []
            plain_fit(
                case, model, clock, epochs, verbose=verbose, callbacks=extra, **kwargs
            )

        return runner

    variants = [
        ("lab path: common.training.fit (verbose=2, all callbacks)", {}, lab),
        (
            "model.fit, workbook callbacks, verbose=1 (terminal bar)",
            {},
            direct(verbose=1, callbacks=True),
        ),
        (
            "model.fit, workbook callbacks, verbose=0",
            {},
            direct(verbose=0, callbacks=True),
        ),
        (
            "model.fit, workbook callbacks but no checkpoint, verbose=2",
            {},
            direct(verbose=2, callbacks=True, checkpoint=False),
        ),
        ("model.fit, no callbacks, verbose=0 (Keras floor)", {}, direct()),
        *(
            []
            if case.name.startswith("lab3")
            else [("  + no metrics (loss only)", {"metrics": []}, direct())]
        ),
        ("  + x, y as torch tensors", {}, direct(feed="tensors")),
        ("  + torch DataLoader(TensorDataset, shuffle)", {}, direct(feed="dataloader")),
        ("  + pre-batched tensors in a DataLoader", {}, direct(feed="prebatched")),
        ("  + jit_compile=True (torch.compile)", {"jit_compile": True}, direct()),
    ]
    if image:
        variants.append(
            (
                "  + channels_first model and NCHW data",
                {"channels_first": True},
                direct(feed="channels_first"),
            )
        )

    def shipped(model, clock, epochs):
        with keras_as_shipped():
            lab(model, clock, epochs)

    variants.append(("lab path, Keras as shipped (no common.speedups)", {}, shipped))
    return variants


def run_experiments(name, args, argv, scratch):
    case = make_case(name, args)
    threads = set_threads(case, args)
    run = BenchRun(scratch / name)
    variants = experiment_variants(case, run)
    if args.variants:
        words = [word.strip() for word in args.variants.split(",") if word.strip()]
        variants = [
            variant for variant in variants if any(word in variant[0] for word in words)
        ]
    models = []
    for label, build_kwargs, _ in variants:
        seed_everything(0)
        try:
            models.append(case.build_keras(**build_kwargs))
        except Exception as error:  # noqa: BLE001 - reported in the table
            models.append(error)
            print(f"  {label}: cannot build: {error}")
    figures = {label: [] for label, _, _ in variants}
    torch_figures = []
    for repeat in range(args.repeats + 1):
        order = list(range(len(variants)))
        order = order[repeat % len(order) :] + order[: repeat % len(order)]
        clock = Clock()
        case.torch_loop.run(clock, args.epochs)
        if repeat:
            torch_figures.append(clock.figures())
        for index in order:
            label, _, runner = variants[index]
            model = models[index]
            if isinstance(model, Exception):
                continue
            clock = Clock()
            try:
                runner(model, clock, args.epochs)
            except Exception as error:  # noqa: BLE001 - reported in the table
                models[index] = error
                print(f"  {label}: {type(error).__name__}: {error}")
                continue
            if repeat:
                figures[label].append(clock.figures())
        print(f"  repeat {repeat} done, load {os.getloadavg()[0]:.1f}", flush=True)
    spe = steps_per_execution_check()
    reference = [statistics.median(column) for column in zip(*torch_figures)]
    print()
    print(
        f"{case.title}: variants of the Keras path vs the torch loop, median of "
        f"{args.repeats} repeats of {args.epochs} epochs (order rotated)"
    )
    print(f"command: {command_line(argv)}")
    print(machine_line(str(threads)))
    print()
    print(
        "| Keras variant | wall ms/step | / torch | CPU ms/step | / torch | "
        "wall ms/epoch | / torch | CPU ms/epoch | / torch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        "| hand-written torch loop (reference) | "
        + " | ".join(f"{value:.1f} | 1.00x" for value in reference)
        + " |"
    )
    for (label, _, _), model in zip(variants, models):
        if not figures[label]:
            reason = (
                f"{type(model).__name__}"
                if isinstance(model, Exception)
                else "no figure"
            )
            print(f"| {label} | failed: {reason} |" + " |" * 7)
            continue
        medians = [statistics.median(column) for column in zip(*figures[label])]
        print(
            f"| {label} | "
            + " | ".join(
                f"{value:.1f} | {value / base:.2f}x"
                for value, base in zip(medians, reference)
            )
            + " |"
        )
    print(f"| steps_per_execution=2 | {spe} |" + " |" * 7)
    saves = checkpoint_ms(case, run)
    print()
    print(
        f"per-epoch checkpoint (InterruptSafeBackup, double_checkpoint): "
        f"{saves[0]:.1f} ms wall, {saves[1]:.1f} ms CPU per save (median of 7)"
    )


def checkpoint_ms(case, run, repeats=7):
    """Wall and CPU ms of one end-of-epoch save of the workbook's backup callback."""
    from common.callbacks import InterruptSafeBackup

    seed_everything(0)
    model = case.build_keras()
    backup = InterruptSafeBackup(
        str(run.path / "backup_timing"), double_checkpoint=True
    )
    backup.set_model(model)
    timings = []
    for epoch in range(repeats + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        backup.on_epoch_end(epoch)
        if epoch:
            timings.append((time.perf_counter() - wall, time.process_time() - cpu))
    shutil.rmtree(run.path / "backup_timing", ignore_errors=True)
    return [1000.0 * statistics.median(column) for column in zip(*timings)]


def steps_per_execution_check():
    """What compile(steps_per_execution=2) does on this backend (any model)."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mse", steps_per_execution=2)
    try:
        model.fit(
            np.zeros((8, 4), "float32"),
            np.zeros((8, 1), "float32"),
            batch_size=2,
            epochs=1,
            verbose=0,
        )
    except ValueError as error:
        return f"refused by Keras: {str(error).split(' Received')[0]}"
    return "runs"


# ----------------------------------------------------------------------------
# --threads-experiment: thread count and OpenMP wait policy, fresh processes
# ----------------------------------------------------------------------------
THREAD_SETTINGS = (("1", None), ("2", None), ("2", "PASSIVE"), ("1", "PASSIVE"))


def run_threads_experiment(name, args, argv):
    """Each setting in its own process (OMP_WAIT_POLICY is read at torch import).

    Every child runs the usual interleaved warm-up + one Keras/torch pair; the
    settings rotate from round to round so that they share the machine's load.
    """
    results = {setting: [] for setting in THREAD_SETTINGS}
    for repeat in range(args.repeats):
        shift = repeat % len(THREAD_SETTINGS)
        for threads, policy in THREAD_SETTINGS[shift:] + THREAD_SETTINGS[:shift]:
            environment = dict(os.environ)
            environment.pop("OMP_WAIT_POLICY", None)
            if policy:
                environment["OMP_WAIT_POLICY"] = policy
            command = [
                sys.executable,
                "-m",
                "bench.train_step",
                "--models",
                name,
                "--repeats",
                "1",
                "--epochs",
                str(args.epochs),
                "--threads",
                threads,
                "--torch-layout",
                args.torch_layout,
                "--json",
            ]
            child = subprocess.run(
                command,
                cwd=ROOT,
                env=environment,
                text=True,
                capture_output=True,
                timeout=900,
            )
            lines = [
                line for line in child.stdout.splitlines() if line.startswith("JSON ")
            ]
            if child.returncode or not lines:
                print(
                    f"  {threads} thread(s), {policy}: failed "
                    f"({child.stderr.strip().splitlines()[-1:]})"
                )
                continue
            row = json.loads(lines[-1][5:])[0]
            results[(threads, policy)].append(row)
            wall = row["figures"][0]
            print(
                f"  round {repeat + 1}: {threads} thread(s), OMP_WAIT_POLICY "
                f"{policy or 'unset'}: Keras {wall[0]:.1f}, torch {wall[1]:.1f} "
                f"ms/step, load {row['load']:.1f}",
                flush=True,
            )
    print()
    print(
        f"{name}: torch threads and OpenMP wait policy, one process per "
        f"measurement, median of {args.repeats} rounds (settings rotated)"
    )
    print(f"command: {command_line(argv)}")
    print(machine_line("see table"))
    print()
    print(
        "| torch threads | OMP_WAIT_POLICY | Keras wall ms/step | torch wall ms/step "
        "| ratio | Keras CPU ms/step | torch CPU ms/step | load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (threads, policy), rows in results.items():
        if not rows:
            print(f"| {threads} | {policy or 'unset'} | failed |" + " |" * 5)
            continue
        wall = [
            statistics.median(row["figures"][0][i] for row in rows) for i in range(2)
        ]
        cpu = [
            statistics.median(row["figures"][1][i] for row in rows) for i in range(2)
        ]
        ratio = statistics.median(row["figures"][0][2] for row in rows)
        load = statistics.median(row["load"] for row in rows)
        print(
            f"| {threads} | {policy or 'unset'} | {wall[0]:.1f} | {wall[1]:.1f} | "
            f"{ratio:.2f}x | {cpu[0]:.1f} | {cpu[1]:.1f} | {load:.1f} |"
        )


@contextlib.contextmanager
def keras_as_shipped():
    """Keras 3.15.1's own torch backend: common.speedups off for the block."""
    speedups.uninstall()
    try:
        yield
    finally:
        speedups.install()


# ----------------------------------------------------------------------------
# --profile: where the Keras step's time goes
# ----------------------------------------------------------------------------
def run_profile(name, args, argv, scratch):
    """torch.profiler and cProfile over steps 2..N of a second epoch, both sides."""
    from torch.profiler import ProfilerActivity, profile

    case = make_case(name, args)
    threads = set_threads(case, args)
    model, _ = checked_pair(case)
    run = BenchRun(scratch / name)
    lab_fit(case, model, run, Clock(), 2)  # warm-up
    case.torch_loop.run(Clock(), 2)
    steps = math.ceil(case.num_train / case.batch_size)
    window = steps - 1  # step periods profiled: from the end of step 1 to the last

    def keras_work(clock):
        lab_fit(case, model, run, clock, 2)

    def torch_work(clock):
        case.torch_loop.run(clock, 2)

    sections, totals = [], {}
    for label, work in (
        ("Keras (common.training.fit)", keras_work),
        ("torch loop", torch_work),
    ):
        profiler = profile(activities=[ProfilerActivity.CPU])
        clock = Clock(window=(1, 1, steps, profiler.start, profiler.stop))
        work(clock)
        averages = profiler.key_averages()
        total_ms = sum(event.self_cpu_time_total for event in averages) / 1000.0
        totals[label] = total_ms / window
        table = averages.table(sort_by="self_cpu_time_total", row_limit=20)
        sections.append(
            (
                f"torch.profiler, {label}: {window} steady-state steps of epoch 2 "
                f"(data, step, metrics, callbacks; no validation), top 20 by self CPU "
                f"time; {total_ms / window:.1f} ms of op CPU time per step",
                table,
            )
        )
    for label, work in (
        ("Keras (common.training.fit)", keras_work),
        ("torch loop", torch_work),
    ):
        profiler = cProfile.Profile()
        clock = Clock(window=(1, 1, steps, profiler.enable, profiler.disable))
        work(clock)
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats(25)
        text = "\n".join(
            line.replace(str(ROOT / ".venv"), "<venv>").rstrip()
            for line in stream.getvalue().splitlines()
            if line.strip()
        )
        sections.append(
            (
                f"cProfile, {label}: the same {window} steps, top 20 by own "
                "time, then top 25 by cumulative time",
                text,
            )
        )
    header = [
        f"Profile of the steady-state training step: {case.title}",
        f"command: {command_line(argv)}",
        machine_line(str(threads)),
        "op CPU time per step (torch.profiler, sum of self times): "
        + ", ".join(f"{label} {value:.1f} ms" for label, value in totals.items()),
    ]
    text = (
        "\n".join(header)
        + "\n\n"
        + "\n\n".join(f"== {title} ==\n{body}" for title, body in sections)
        + "\n"
    )
    path = (
        Path(args.profile_out)
        if args.profile_out
        else (ROOT / "docs" / f"profile_{name}.txt")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written: {path}")


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated, from {', '.join(MODELS)}",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed Keras/torch pairs per model (after a warm-up)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs per timed run (2+ for an epoch figure)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads for both sides; 0: each lab's "
        "own setting (lab 2: 1, others: torch's default)",
    )
    parser.add_argument(
        "--torch-layout",
        choices=("channels_last", "nchw"),
        default="channels_last",
        help="memory format of the torch side's images",
    )
    parser.add_argument(
        "--experiments",
        metavar="MODEL",
        choices=MODELS,
        help="time variants of the Keras path for MODEL",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="--experiments: only the variants whose label holds "
        "one of these comma-separated words",
    )
    parser.add_argument(
        "--threads-experiment",
        metavar="MODEL",
        choices=MODELS,
        help="MODEL at 1 and 2 threads, and 2 threads with "
        "OMP_WAIT_POLICY=PASSIVE, each in a fresh process",
    )
    parser.add_argument(
        "--no-shipped",
        action="store_true",
        help="leave out the third runner: the lab path on Keras as "
        "shipped, without common.speedups",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        metavar="MODEL",
        choices=MODELS,
        help="profile one epoch of MODEL, Keras and torch",
    )
    parser.add_argument(
        "--profile-out",
        default=None,
        help="file for --profile (default docs/profile_MODEL.txt)",
    )
    args = parser.parse_args(argv)
    args.model_list = [name.strip() for name in args.models.split(",") if name]
    unknown = [name for name in args.model_list if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    for name in ("repeats", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (an epoch runs start to start)")
    if args.threads < 0:
        parser.error("--threads must be 0 (the labs' settings) or more")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    speedups.install()  # as the runner does; WORKBOOK_KERAS_FIXES=0: as shipped
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    try:
        if args.profile:
            return run_profile(args.profile, args, argv, scratch)
        if args.experiments:
            return run_experiments(args.experiments, args, argv, scratch)
        if args.threads_experiment:
            return run_threads_experiment(args.threads_experiment, args, argv)
        rows = []
        for name in args.model_list:
            case = make_case(name, args)
            print(f"measuring {case.title} ...", flush=True)
            rows.append(measure(case, args, scratch))
        print_table(rows, args, argv)
        if args.json:
            print(
                "JSON "
                + json.dumps(
                    [
                        {
                            "model": row["case"].name,
                            "threads": row["threads"],
                            "load": row["load"],
                            "figures": row["figures"],
                        }
                        for row in rows
                    ]
                )
            )
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
