"""Every figure the labs write goes through here: titled, labelled, saved, closed.

Figures are saved at 120 dpi and closed at once; nothing is ever shown on screen.
"""

import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120
CELL_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def wrapped(title, width=120):
    """A long figure title broken into lines of at most ``width`` characters."""
    return "\n".join(textwrap.fill(line, width) for line in str(title).split("\n"))


def save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _metric_pairs(rows):
    """The per-epoch series to plot, as (name, train key, validation key)."""
    skip = {"epoch", "epoch_seconds", "learning_rate"}
    keys = [key for key in rows[0] if key not in skip and not key.startswith("val_")]
    return [(key, key, f"val_{key}") for key in keys]


def learning_curves(
    rows, path, title, best_epoch=None, stopped_epoch=None, boundaries=()
):
    """Loss and metrics per epoch, train and validation, best/stop epochs marked.

    ``rows`` are history rows (dicts with "epoch" counted from 1); ``boundaries``
    is a list of (epoch, label) drawn as dotted lines, e.g. a fine-tuning phase.
    """
    if not rows:
        return None
    pairs = _metric_pairs(rows)
    epochs = [row["epoch"] for row in rows]
    figure, axes = plt.subplots(
        1, len(pairs), figsize=(5.2 * len(pairs), 4), squeeze=False
    )
    for axis, (name, train_key, val_key) in zip(axes[0], pairs):
        train = [row.get(train_key) for row in rows]
        axis.plot(epochs, train, "o-", markersize=3, label=f"train {name}")
        if any(row.get(val_key) is not None for row in rows):
            val = [row.get(val_key) for row in rows]
            axis.plot(epochs, val, "s-", markersize=3, label=f"validation {name}")
        if best_epoch:
            axis.axvline(
                best_epoch,
                color="green",
                linestyle="--",
                label=f"best epoch ({best_epoch})",
            )
        if stopped_epoch:
            axis.axvline(
                stopped_epoch,
                color="red",
                linestyle=":",
                label=f"early stop ({stopped_epoch})",
            )
        for epoch, label in boundaries:
            axis.axvline(epoch, color="purple", linestyle="-.", label=label)
        shown = [v for row in rows for v in (row.get(train_key), row.get(val_key)) if v]
        if shown and min(shown) > 0 and max(shown) / min(shown) > 100:
            axis.set_yscale("log")  # a loss that falls by orders of magnitude
        axis.set_xlabel("epoch")
        axis.set_ylabel(name.replace("_", " "))
        axis.set_title(name.replace("_", " "))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        if len(epochs) < 15:
            axis.set_xticks(epochs)
    figure.suptitle(title)
    return save(figure, path)


def confusion_matrix(y_true, y_pred, class_names, path, title):
    """Row-normalized confusion matrix (recall per true class) with counts."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    labels = list(range(len(class_names)))
    counts = sk_confusion_matrix(y_true, y_pred, labels=labels)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = max(4.5, 0.55 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, label="share of true class")
    if len(class_names) <= 20:
        for row in range(len(labels)):
            for column in range(len(labels)):
                value = normalized[row, column]
                axis.text(
                    column,
                    row,
                    f"{value:.2f}\n({counts[row, column]})",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.5 else "black",
                )
    axis.set_xticks(labels, class_names, rotation=45, ha="right")
    axis.set_yticks(labels, class_names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    caption = f"{title}\n(normalized by true class; accuracy {accuracy:.3f})"
    axis.set_title(wrapped(caption, int(10 * size)))
    return save(figure, path)


def image_grid(images, titles, path, title, columns=8, title_colors=None):
    """A grid of images (N, H, W, C) in [0, 1] with a caption each."""
    images = np.asarray(images)
    count = len(images)
    if count == 0:
        return None
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.8 * rows + 0.6), squeeze=False
    )
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        image = np.clip(images[index], 0, 1)
        if image.ndim == 3 and image.shape[-1] == 1:
            axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            axis.imshow(image)
        color = title_colors[index] if title_colors else "black"
        axis.set_title(titles[index], fontsize=8, color=color)
    figure.suptitle(title)
    return save(figure, path)


def _short(value):
    """A bar's label: 3 significant digits, thousands as k and millions as M."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def bar_chart(names, panels, path, title, xlabel="model", errors=None):
    """One bar panel per quantity: ``panels`` is {"label (unit)": [value per name]};
    ``errors`` ({label: [spread per name]}) draws error bars on those panels."""
    errors = errors or {}
    slanted = sum(len(str(name)) for name in names) > 30  # long names: slant them
    width = max(4.0, 0.5 * len(names) + 1.5)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels), 4.2), squeeze=False
    )
    colors = [CELL_COLORS[index % len(CELL_COLORS)] for index in range(len(names))]
    for axis, (label, values) in zip(axes[0], panels.items()):
        spread = errors.get(label)
        bars = axis.bar(names, values, color=colors, yerr=spread, capsize=4)
        shown = [_short(value) for value in values]
        if spread is not None:
            shown = [f"{text}\n± {_short(e)}" for text, e in zip(shown, spread)]
        axis.bar_label(bars, labels=shown, fontsize=7, padding=2)
        if spread is not None:  # zoom in: the bars' tops and their error bars
            low = min(v - 3 * e for v, e in zip(values, spread))
            high = max(v + 3 * e for v, e in zip(values, spread))
            span = (high - low) or abs(high) * 0.1 or 1.0
            axis.set_ylim(low - 0.1 * span, high + 0.3 * span)
        axis.set_title(label)
        axis.set_ylabel(label)
        axis.set_xlabel(xlabel)
        if slanted:
            plt.setp(axis.get_xticklabels(), rotation=35, ha="right", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
        axis.margins(y=0.2)
    figure.suptitle(wrapped(title, int(30 * width * len(panels) / 4)))
    return save(figure, path)


def curves(series, path, title, xlabel, ylabel, log_y=False, markers=None, style="o-"):
    """Several named lines on one axis: ``series`` is {name: (x, y)}."""
    figure, axis = plt.subplots(figsize=(9 if style == "-" else 7, 4.5))
    for name, (x, y) in series.items():
        axis.plot(x, y, style, markersize=3, linewidth=1.2, label=name)
    for value, label in markers or ():
        axis.axhline(value, color="gray", linestyle="--", label=label)
    if log_y:
        axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return save(figure, path)


def variant_learning_curves(histories, path, title, monitor="val_loss"):
    """Every variant of a comparison on one figure: validation (solid) and
    training (dashed) loss, and the first other metric, per epoch.

    ``histories`` is {variant: history rows}.
    """
    first = next(iter(histories.values()))[0]
    skip = {"epoch", "epoch_seconds", "learning_rate", "loss"}
    others = [k for k in first if k not in skip and not k.startswith("val_")]
    keys = ["loss"] + others[:1]
    figure, axes = plt.subplots(
        1, len(keys), figsize=(6 * len(keys), 4.4), squeeze=False
    )
    for index, (name, rows) in enumerate(histories.items()):
        color = CELL_COLORS[index % len(CELL_COLORS)]
        epochs = [row["epoch"] for row in rows]
        for axis, key in zip(axes[0], keys):
            if any(row.get(f"val_{key}") is not None for row in rows):
                axis.plot(
                    epochs,
                    [row.get(f"val_{key}") for row in rows],
                    "o-",
                    color=color,
                    markersize=3,
                    label=f"{name} (validation)",
                )
            axis.plot(
                epochs,
                [row.get(key) for row in rows],
                "--",
                color=color,
                alpha=0.6,
                label=f"{name} (training)",
            )
    for axis, key in zip(axes[0], keys):
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_xlabel("epoch")
        axis.set_ylabel(key.replace("_", " "))
        axis.set_title(key.replace("_", " ") + " per epoch")
        axis.grid(alpha=0.3)
        many = len(histories) > 5  # two columns of small entries
        axis.legend(fontsize=6 if many else 7, ncol=2 if many else 1)
    figure.suptitle(wrapped(title, 100))
    return save(figure, path)


def comparison_bars(rows, key, path, title, best=None, errors=None):
    """plots/comparison.png: the headline metric, parameters, train time and (when
    measured) inference time per variant; the best variant's name is starred.
    ``errors`` names a figure of the rows (a spread over seeds) drawn as error
    bars on the headline panel."""
    headline = key.replace("_", " ")
    if errors:
        headline += f"\n(error bars: {errors.replace('_', ' ')})"
    panels = {headline: key}
    if key != "macro_f1" and any("macro_f1" in row for row in rows):
        panels["macro F1"] = "macro_f1"
    panels["parameters (count)"] = "params"
    panels["train time (s)"] = "train_seconds"
    for extra in ("inference_ms_per_image", "inference_ms_per_sample"):
        if any(extra in row for row in rows):
            panels[extra.replace("_", " ").replace("ms per", "(ms per") + ")"] = extra
    names = [row["variant"] + (" *" if row["variant"] == best else "") for row in rows]
    values = {
        label: [float(row.get(name) or 0.0) for row in rows]
        for label, name in panels.items()
    }
    spreads = {headline: [float(row.get(errors) or 0.0) for row in rows]}
    title = f"{title}\n(* best by {key.replace('_', ' ')})" if best else title
    errors = spreads if errors else None
    return bar_chart(names, values, path, title, xlabel="variant", errors=errors)


def scatter_groups(rows, x_key, y_key, group_key, path, title, xlabel, ylabel):
    """One point per row (e.g. a tuner trial), coloured by ``group_key``, log x."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for group in dict.fromkeys(row[group_key] for row in rows):
        chosen = [row for row in rows if row[group_key] == group]
        axis.scatter(
            [row[x_key] for row in chosen],
            [row[y_key] for row in chosen],
            label=str(group),
            alpha=0.8,
        )
    axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(title=group_key.replace("_", " "))
    return save(figure, path)


def predicted_vs_true(truth, predicted, path, title, unit):
    """A regression's test predictions against the targets, with the y = x line."""
    figure, axis = plt.subplots(figsize=(6, 5))
    mse = float(np.mean((np.asarray(predicted) - np.asarray(truth)) ** 2))
    axis.scatter(truth, predicted, s=6, alpha=0.4, label=f"test sample (MSE {mse:.4g})")
    low, high = float(np.min(truth)), float(np.max(truth))
    axis.plot(
        [low, high], [low, high], color="black", linewidth=1, label="perfect (y = x)"
    )
    axis.set_xlabel(f"true {unit}")
    axis.set_ylabel(f"predicted {unit}")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)


def layer_heatmaps(panels, path, title, label, log=True):
    """Side-by-side heatmaps of a per-layer quantity over training, on one colour
    scale: ``panels`` is {name: (layer names, values of shape (epochs, layers))},
    drawn layer (first at the top) by epoch (0 = before training), log10 by
    default. Lab 9 draws gradient norms with it (common.callbacks.GradientNorms)."""
    grids = [np.asarray(values, dtype=float).T for _, values in panels.values()]
    if log:
        grids = [np.log10(np.maximum(grid, 1e-12)) for grid in grids]
    size = (3.4 * len(grids) + 2.5, 0.22 * max(len(grid) for grid in grids) + 2.8)
    figure, axes = plt.subplots(
        1, len(grids), figsize=size, squeeze=False, layout="constrained"
    )
    low, high = min(map(np.min, grids)), max(map(np.max, grids))
    for axis, (name, (layers, _)), grid in zip(axes[0], panels.items(), grids):
        image = axis.imshow(grid, aspect="auto", cmap="magma", vmin=low, vmax=high)
        axis.set_yticks(range(len(layers)), layers, fontsize=7)
        axis.set_xticks(range(0, grid.shape[1], 1 + grid.shape[1] // 12))
        axis.set(xlabel="epoch (0 = before training)", ylabel="layer (input first)")
        axis.set_title(name)
    colorbar = f"log10 {label}" if log else label
    figure.colorbar(image, ax=list(axes[0]), label=colorbar)
    figure.suptitle(textwrap.fill(title, int(10 * size[0])), fontsize=10)
    figure.savefig(path, dpi=DPI)  # constrained layout: one colour bar for all panels
    plt.close(figure)
    return path


def feature_maps(image, rows, path, title, channels=8):
    """One image and, a row each, the first ``channels`` planes of named (H, W, C)
    arrays: a network's feature maps at several depths, or its filters. Rows
    whose name starts with "filter" are drawn red (+) / blue (-) around 0; feature
    maps get a colour scale each. ``rows`` is [(name, array)]."""
    size = (1.3 * (channels + 1), 1.3 * len(rows) + 1.0)
    figure, axes = plt.subplots(len(rows), channels + 1, figsize=size, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    image = np.asarray(image)
    axes[0][0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
    axes[0][0].set_title("input", fontsize=8)
    for row, (name, planes) in enumerate(rows):
        if row:
            axes[row][0].text(0.5, 0.5, name, ha="center", va="center", fontsize=8)
        for channel in range(min(channels, planes.shape[-1])):
            plane, axis = planes[..., channel], axes[row][channel + 1]
            if name.startswith("filter"):
                limit = float(np.abs(plane).max()) or 1.0
                axis.imshow(plane, cmap="RdBu_r", vmin=-limit, vmax=limit)
            else:
                axis.imshow(plane, cmap="viridis")
            axis.set_title(f"{name} {channel}", fontsize=7)
    title += " (feature maps: each on its own colour scale, yellow high)"
    figure.suptitle(textwrap.fill(title, int(12 * size[0])), fontsize=10)
    return save(figure, path)


def tile(images, columns=8):
    """(N, H, W, C) images in [0, 1] as one (rows*(H+1), columns*(W+1), C) picture,
    1-pixel white gaps between them; N a multiple of ``columns``."""
    count, height, width, channels = np.shape(images)
    tiles = np.ones((count, height + 1, width + 1, channels))
    tiles[:, 1:, 1:] = np.clip(images, 0.0, 1.0)
    tiles = tiles.reshape(-1, columns, height + 1, width + 1, channels).swapaxes(1, 2)
    return tiles.reshape(-1, columns * (width + 1), channels).squeeze()


def progress(paths, gif_path, png_path, picks=6):
    """Frames of training (figures of one size, saved in order): an animated GIF
    of all of them, the last held longer, and a PNG of ``picks`` evenly spaced
    ones, 3 per row."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in paths]
    frames = [image.quantize(colors=128) for image in images]
    durations = [600] * (len(frames) - 1) + [2000]
    gif = dict(save_all=True, append_images=frames[1:], duration=durations, loop=0)
    frames[0].save(gif_path, **gif)
    chosen = sorted({round(k * (len(images) - 1) / (picks - 1)) for k in range(picks)})
    width, height = images[0].size
    columns, rows = min(3, len(chosen)), -(-len(chosen) // 3)
    grid = Image.new("RGB", (width * columns, height * rows), "white")
    for slot, index in enumerate(chosen):
        grid.paste(images[index], (slot % 3 * width, slot // 3 * height))
    grid.save(png_path)
    return png_path
