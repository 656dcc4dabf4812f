"""The PNG figures a run writes: training curves and confusion matrices (matplotlib, headless)."""

from __future__ import annotations

import io
from contextlib import contextmanager


@contextmanager
def figure(*args, **kwargs):
    """A matplotlib figure on the headless Agg backend; yields (fig, axes) and a bytes holder
    whose `png` is set on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    result = _PNG()
    try:
        yield fig, axes, result
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        result.png = buffer.getvalue()
    finally:
        plt.close(fig)


class _PNG:
    png: bytes = b""


def training_curves(history: list[dict]) -> bytes:
    """Loss and top-1 accuracy per epoch, train and validation, as a PNG."""
    epochs = [row["epoch"] for row in history]
    with figure(1, 2, figsize=(10, 4)) as (_, (ax_loss, ax_acc), out):
        for key, label in (("loss", "train"), ("val_loss", "val")):
            ax_loss.plot(epochs, [row[key] for row in history], marker="o", label=label)
        for key, label in (("accuracy", "train"), ("val_accuracy", "val")):
            ax_acc.plot(epochs, [row[key] for row in history], marker="o", label=label)
        ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
        ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="Accuracy")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
    return out.png


def confusion_matrix(confusion, names: list[str], split: str) -> bytes:
    """Rows = true class, columns = predicted class, counts written in the cells up to 30 classes."""
    n = len(names)
    size = min(4 + 0.4 * n, 20)
    with figure(figsize=(size, size)) as (_, ax, out):
        ax.imshow(confusion, cmap="Blues")
        if n <= 30:
            ax.set_xticks(range(n), names, rotation=90)
            ax.set_yticks(range(n), names)
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({split})")
    return out.png


def objective_vs_size(rows: list[dict], objective: str, maximise: bool, tuner: str) -> bytes:
    """A search's objective against parameters and multiply-adds, per shortcut, with the best-by-size frontier."""
    done = [r for r in rows if r["objective"] is not None and r["params"]]
    with figure(1, 2, figsize=(11, 4.5)) as (fig, axes, out):
        _objective_axes(fig, axes, done, objective, maximise, tuner)
    return out.png


def _objective_axes(fig, axes, done, objective, maximise, tuner):
    for ax, key, label in ((axes[0], "params", "trainable parameters"), (axes[1], "multiply_adds", "multiply-adds")):
        for shortcut, marker in (("A", "o"), ("B", "s")):
            pts = [r for r in done if r["shortcut"] == shortcut]
            if pts:
                ax.scatter(
                    [r[key] for r in pts],
                    [r["objective"] for r in pts],
                    marker=marker,
                    alpha=0.8,
                    label=f"shortcut {shortcut}",
                )
        for r in done:
            ax.annotate(
                f"{r['depth']}x{r['width']:g}",
                (r[key], r["objective"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
        # The frontier: the best objective reached at or below each size.
        front, best = [], None
        for r in sorted(done, key=lambda r: r[key]):
            if best is None or (r["objective"] > best if maximise else r["objective"] < best):
                best = r["objective"]
                front.append((r[key], best))
        if front:
            ax.step(
                [p[0] for p in front],
                [p[1] for p in front],
                where="post",
                color="grey",
                alpha=0.6,
                label="best so far by size",
            )
        ax.set(xscale="log", xlabel=label, ylabel=objective, title=f"{objective} vs {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{tuner} search, {len(done)} completed trials")
