"""Training speed of Lab 2's arch 3 per recurrent cell, on the torch backend.

    python -m bench.rnn_speed                    # T=50, batch 128, as the lab
    python -m bench.rnn_speed --seq-len 100 --repeats 7

Prints one table: milliseconds per training step (median of ``--repeats``
timings of ``--steps`` steps each) for SimpleRNN, LSTM and GRU in Lab 2's
``--arch 3`` (two stacked recurrent layers of 32 units, Dense(32), Dense(1),
Adam) on the adding problem, measured as

- Keras ``fit`` with 1 and with 2 torch threads;
- Keras ``fit`` with a ``Masking`` layer in front (1 thread): a mask makes
  Keras's LSTM/GRU on torch leave their fused path for the generic time loop;
- the reference: the same network written in plain torch (``nn.RNN``/``nn.LSTM``/
  ``nn.GRU``, a hand-written training loop, 1 thread). torch's LSTM/GRU have no
  relu option, so its second LSTM/GRU layer keeps tanh.

The last column is Keras (1 thread) / torch reference, measured in the same run.

Keras runs with ``common.speedups`` installed, as the labs' runner installs it
(``WORKBOOK_KERAS_FIXES=0`` measures Keras as shipped): LSTM/GRU/SimpleRNN go
through torch's fused kernels unless a mask is given.

Measured before the labs moved onto the shared runner, on a 2-core x86_64 CPU
(load average 1.1-1.3), Keras 3.15.1, torch 2.13.0, ``python -m bench.rnn_speed``:

| cell | Keras fit, 1 thread | Keras fit, 2 threads | Keras + Masking, 1 thread | plain torch loop, 1 thread | Keras / torch |
|---|---|---|---|---|---|
| SimpleRNN | 23.7 | 26.2 | 122.1 | 16.4 | 1.45x |
| LSTM | 57.4 | 27.9 | 181.7 | 36.9 | 1.56x |
| GRU | 51.9 | 49.2 | 178.8 | 45.8 | 1.13x |

Before ``common.speedups`` (Keras as shipped, load 7.7-8.4, so slower all round):
SimpleRNN 429.0, LSTM 525.5, GRU 299.7 ms at 1 thread, 10.72x / 3.17x / 1.22x the
torch loop. A mask still sends every cell to Keras's generic time loop (3-7x
slower). With a free core, 2 threads help the LSTM here; on a shared machine
(the load above) 2 spinning threads were 7-20x slower, hence Lab 2's default of 1.
"""  # noqa: E501

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CELLS = ("simple", "lstm", "gru")
NAMES = {"simple": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench.rnn_speed",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure")
    args = parser.parse_args(argv)
    for name in ("seq_len", "batch_size", "units", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seq_len < 2:
        parser.error("--seq-len must be at least 2 for the adding problem")
    return args


def median_ms_per_step(train_steps, steps, repeats):
    """Warm up once, then the median of ``repeats`` timings, in ms per step."""
    train_steps()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_steps()
        timings.append((time.perf_counter() - start) * 1000.0 / steps)
    return statistics.median(timings)


def keras_ms(cell, x, y, args, threads, masked=False):
    import keras
    import torch

    from common.data import Splits
    from common.experiment import parse_args
    from common.runs import seed_everything
    from labs.lab2_rnn import LAB, build_model, recurrent

    torch.set_num_threads(threads)
    seed_everything(0)
    if masked:
        inputs = keras.Input(x.shape[1:])
        hidden = keras.layers.Masking(mask_value=-1.0)(inputs)
        hidden = recurrent(cell, args.units, "first", return_sequences=True)(hidden)
        hidden = recurrent(
            cell,
            args.units,
            "second",
            activation="relu" if cell == "simple" else "tanh",
        )(hidden)
        hidden = keras.layers.Dense(32, activation="relu")(hidden)
        model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    else:
        lab_args = parse_args(
            LAB,
            ["--dataset", "adding", "--arch", "3", "--cell", cell]
            + ["--units", str(args.units), "--learning-rate", "3e-3"],
        )
        data = Splits("adding", "bench", x, y, x, y, x, y, task="regression")
        model = build_model(lab_args, data)

    def train_steps():
        model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)

    return median_ms_per_step(train_steps, args.steps, args.repeats)


def torch_ms(cell, x, y, args):
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    units = args.units

    class Arch3(nn.Module):
        def __init__(self):
            super().__init__()
            if cell == "simple":
                self.first = nn.RNN(2, units, batch_first=True)
                self.second = nn.RNN(
                    units, units, batch_first=True, nonlinearity="relu"
                )
            else:
                layer = nn.LSTM if cell == "lstm" else nn.GRU
                self.first = layer(2, units, batch_first=True)
                self.second = layer(units, units, batch_first=True)
            self.dense = nn.Linear(units, 32)
            self.output = nn.Linear(32, 1)

        def forward(self, inputs):
            sequence, _ = self.first(inputs)
            sequence, _ = self.second(sequence)
            hidden = torch.relu(self.dense(sequence[:, -1]))
            return self.output(hidden).squeeze(-1)

    model = Arch3()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_tensor, y_tensor = torch.from_numpy(x), torch.from_numpy(y)
    batch = args.batch_size

    def train_steps():
        for start in range(0, len(x_tensor), batch):
            optimizer.zero_grad()
            prediction = model(x_tensor[start : start + batch])
            loss = torch.mean((prediction - y_tensor[start : start + batch]) ** 2)
            loss.backward()
            optimizer.step()

    return median_ms_per_step(train_steps, args.steps, args.repeats)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import keras
    import torch

    from common import speedups

    speedups.install()  # as the runner does; WORKBOOK_KERAS_FIXES=0: as shipped
    from common.data import make_adding

    x, y = make_adding(args.steps * args.batch_size, args.seq_len, seed=0)
    rows = []
    for cell in CELLS:
        figures = {
            "keras_1": keras_ms(cell, x, y, args, threads=1),
            "keras_2": keras_ms(cell, x, y, args, threads=2),
            "masked_1": keras_ms(cell, x, y, args, threads=1, masked=True),
            "torch_1": torch_ms(cell, x, y, args),
        }
        rows.append((cell, figures))
        print(
            f"measured {NAMES[cell]}: "
            + ", ".join(f"{key} {value:.1f} ms" for key, value in figures.items()),
            flush=True,
        )
    command = "python -m bench.rnn_speed " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print()
    print(
        f"Lab 2 arch 3 training speed, adding problem, T={args.seq_len}, batch "
        f"{args.batch_size}, {args.units} units; ms per step, median of "
        f"{args.repeats} x {args.steps} steps"
    )
    print(f"command: {command.strip()}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
        f"{load} (1/5/15 min); keras {keras.__version__}, torch "
        f"{torch.__version__}, backend {keras.backend.backend()}"
    )
    print()
    print(
        "| cell | Keras fit, 1 thread | Keras fit, 2 threads | Keras + Masking, "
        "1 thread | plain torch loop, 1 thread | Keras / torch |"
    )
    print("|---|---|---|---|---|---|")
    for cell, figures in rows:
        ratio = figures["keras_1"] / figures["torch_1"]
        print(
            f"| {NAMES[cell]} | {figures['keras_1']:.1f} | {figures['keras_2']:.1f} "
            f"| {figures['masked_1']:.1f} | {figures['torch_1']:.1f} | "
            f"{ratio:.2f}x |"
        )
    return rows


if __name__ == "__main__":
    main()
