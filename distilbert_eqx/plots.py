"""Figures: a run's ``metrics.jsonl`` against steps, and a comparison's arms minus the control.

matplotlib is an optional extra (``pip install -e ".[plots]"``); it is imported when a figure is drawn, and
its absence is a `UserError` that says how to install it. The figures are written as PNG with the Agg backend,
so no display is needed.
"""

import json
from pathlib import Path
from typing import Any

from .errors import UserError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise UserError('plotting needs matplotlib: pip install -e ".[plots]"') from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or of the one in a run folder), a torn last line skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"cannot read the run's metrics {path}: {e}") from e
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn last line, written by a killed run
    if not any("loss" in r or "val_accuracy" in r for r in records):
        raise UserError(f"{path} holds no train or validation records yet")
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(metrics: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Draw a run's records against steps into the PNG ``out``: the loss and each ``loss_<term>`` (means over
    each record's steps), the learning rate, the gradient norm, and the validation accuracy and loss.

    **Arguments:**

    - `metrics`: a run folder or its ``metrics.jsonl``.
    - `out`: the PNG to write (its folder is made).
    - `title`: the figure's title; the run folder's name by default.

    **Returns:**

    The path written.
    """
    plt = _pyplot()
    records = read_metrics(metrics)
    terms = sorted({k for r in records for k in r if k.startswith("loss_")})
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    losses, lr, grad, validation = axes.flat
    for key in ("loss", *terms):
        steps, values = _series(records, key)
        if steps:
            losses.plot(steps, values, label=key, linewidth=2 if key == "loss" else 1)
    if all(v > 0 for line in losses.get_lines() for v in line.get_ydata()):
        losses.set_yscale("log")  # the terms differ by orders of magnitude
    losses.set_title("train loss (mean over each record's steps)")
    losses.legend(fontsize="small")
    for axis, key, name in ((lr, "lr", "learning rate"), (grad, "grad_norm", "gradient norm (last step)")):
        steps, values = _series(records, key)
        axis.plot(steps, values)
        axis.set_title(name if steps else f"{name}: no records")
    steps, values = _series(records, "val_accuracy")
    validation.plot(steps, [100 * v for v in values], marker="o", color="tab:green", label="val accuracy")
    validation.set_ylabel("val accuracy (%)")
    validation.set_title("validation")
    loss_steps, loss_values = _series(records, "val_loss")
    if loss_steps:
        twin = validation.twinx()
        twin.plot(loss_steps, loss_values, marker="s", color="tab:red", label="val loss")
        twin.set_ylabel("val loss")
        (handles, labels), (twin_handles, twin_labels) = (
            validation.get_legend_handles_labels(),
            twin.get_legend_handles_labels(),
        )
        validation.legend(handles + twin_handles, labels + twin_labels, loc="lower right", fontsize="small")
    for axis in (grad, validation):
        axis.set_xlabel("step")
    source = Path(metrics)
    figure.suptitle(title or (source if source.is_dir() else source.parent).name)
    figure.tight_layout()
    return _save(figure, plt, out)


def plot_comparison(summary: dict[str, Any], out: str | Path, title: str | None = None) -> Path:
    """Draw each arm minus the control, with its 95% interval, for the ``best/`` and the final models: the
    results table as a figure.

    **Arguments:**

    - `summary`: `comparison.summarise`'s result (or a comparison's ``summary.json``).
    - `out`: the PNG to write (its folder is made).
    - `title`: the figure's title; the comparison file's name by default.

    **Returns:**

    The path written.
    """
    plt = _pyplot()
    control = summary["control"]
    arms = [row for row in summary["arms"] if row["arm"] != control]
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.8 * max(len(arms), 1)))
    for offset, model, colour in ((-0.15, "best", "tab:blue"), (0.15, "final", "tab:orange")):
        ys, xs, lows, highs = [], [], [], []
        for i, row in enumerate(arms):
            result = (row.get("minus_control") or {}).get(model)
            if result is None:
                continue  # no seed finished for both
            low, high = result["interval_95"]
            ys.append(i + offset)
            xs.append(result["difference"])
            lows.append(result["difference"] - low)
            highs.append(high - result["difference"])
        label = f"{model}/" if model == "best" else "final model"
        axis.errorbar(xs, ys, xerr=[lows, highs], fmt="o", capsize=4, color=colour, label=label)
    axis.axvline(0, color="grey", linewidth=1)
    axis.set_yticks(range(len(arms)))
    axis.set_yticklabels([f"{row['arm']} ({len(row['finished_seeds'])} seeds)" for row in arms])
    axis.invert_yaxis()
    axis.set_xlabel(
        f"accuracy minus {control}, points\n({summary.get('pooled_splits', 'dev+test')} pooled; "
        "95% bootstrap interval over seeds and sentences)",
        fontsize="small",
    )
    axis.legend(fontsize="small")
    axis.set_title(title or Path(summary["comparison"]).stem)
    figure.tight_layout()
    return _save(figure, plt, out)


def _save(figure: Any, plt: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
