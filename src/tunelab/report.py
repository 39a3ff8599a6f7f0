"""What a user reads: the data report, and the result of a run."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunelab.data.readers import Reject

SHOWN_REJECTS = 5


def print_data_report(
    console: Console, report: dict[str, Any], rejects: Sequence[Reject], rejects_path: Path | None
) -> None:
    """Kept / rejected / truncated per split, token-length percentiles, the first rejects."""
    table = Table(title=f"data (max_length {report['max_length']})", title_justify="left")
    for column in ("split", "kept", "rejected", "truncated", "p50", "p90", "p99", "max tokens"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split in ("train", "val"):
        if split not in report:
            continue
        summary = report[split]
        tokens = summary["tokens"]
        table.add_row(
            split,
            str(summary["kept"]),
            str(summary["rejected"]),
            str(summary["truncated"]),
            *(str(tokens.get(key, "-")) for key in ("p50", "p90", "p99", "max")),
        )
    console.print(table)
    for file in report.get("files", []):
        console.print(
            f"  {file['path']}: {file['format']} format, {file['rows']} rows read, "
            f"{file['rejected']} rejected by the format"
        )
    origin = report.get("val", {}).get("origin", {})
    if origin.get("from") == "split of train":
        console.print(
            f"  val: {report['val']['kept']} rows held out of train "
            f"(fraction {origin['fraction']}, seed {origin['seed']})"
        )
    if "train_fraction" in origin:
        share = origin["train_fraction"]
        console.print(
            f"  train: the first {share['rows_used']} rows (train_fraction {share['fraction']}); "
            f"{share['rows_left_out']} later rows left out"
        )
    if rejects:
        console.print(f"[yellow]{len(rejects)} row(s) rejected[/yellow]")
        for reject in rejects[:SHOWN_REJECTS]:
            console.print(f"  {reject}", markup=False)
        if rejects_path is not None:
            console.print(f"  all of them: {rejects_path}")


CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Heiti SC",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Noto Serif CJK SC",
)
NO_CJK_FONT = (
    "no CJK font found: plots label classes L0, L1, ... (the key is in report.md); "
    "install one, e.g. `apt install fonts-noto-cjk`, for Chinese labels in plots"
)


def find_cjk_font() -> str | None:
    """The first installed font family that has Chinese glyphs, or None."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((family for family in CJK_FAMILIES if family in installed), None)


def write_eval(folder: Path, result: Any, history: Sequence[dict[str, Any]] = ()) -> list[str]:
    """metrics.json, predictions.jsonl/.csv, report.md and PNG plots; returns notes to show."""
    import csv
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(
        json.dumps(result.summary(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    with (folder / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for row in result.rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    columns = list(dict.fromkeys(key for row in result.rows for key in row))
    with (folder / "predictions.csv").open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(
            {
                k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v
                for k, v in row.items()
            }
            for row in result.rows
        )
    notes, keys = plot_eval(folder, result, history)
    notes = [*getattr(result, "notes", []), *notes]
    (folder / "report.md").write_text(eval_markdown(result, keys, notes), encoding="utf-8")
    return notes


def plot_eval(
    folder: Path, result: Any, history: Sequence[dict[str, Any]]
) -> tuple[list[str], dict[str, list[str]]]:
    """Confusion matrices of label tasks and the loss curves; notes and label keys."""
    font = find_cjk_font()
    notes: list[str] = []
    keys: dict[str, list[str]] = {}
    for task, metrics in result.tasks.items():
        confusion = metrics.get("classification", {}).get("confusion")
        if not confusion:
            continue
        labels = confusion["columns"]
        needs_cjk = any(not label.isascii() for label in labels)
        if needs_cjk and font is None:
            keys[task] = labels
            if NO_CJK_FONT not in notes:
                notes.append(NO_CJK_FONT)
        # without a CJK font a Chinese task name would print as empty boxes
        title = f"{result.name}: {task}" if task.isascii() or font else result.name
        plot_confusion(
            confusion, folder / f"confusion_{slug(task)}.png", title, font, needs_cjk and not font
        )
    if history:
        plot_losses(history, folder / "loss_curves.png")
    return notes, keys


def plot_confusion(
    confusion: dict[str, Any], path: Path, title: str, font: str | None, coded: bool
) -> None:
    """A confusion matrix with counts in the cells (rows: reference, columns: prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns, matrix = confusion["rows"], confusion["columns"], confusion["matrix"]
    names = [f"L{i}" for i in range(len(columns))] if coded else columns
    size = 1.0 + 0.6 * len(columns)
    family = [font, "DejaVu Sans"] if font else ["DejaVu Sans"]
    with matplotlib.rc_context({"font.family": family}), warnings.catch_warnings():
        # a missing glyph is said once, in the notes, not once per character
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        figure, axes = plt.subplots(figsize=(size + 1.5, size))
        image = axes.imshow(matrix, cmap="Blues")
        axes.set_xticks(range(len(columns)), names, rotation=45, ha="right")
        axes.set_yticks(range(len(rows)), names[: len(rows)])
        axes.set_xlabel("prediction")
        axes.set_ylabel("reference")
        axes.set_title(title)
        peak = max((max(r) for r in matrix), default=0) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                axes.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    color="white" if count > peak / 2 else "black",
                )
        figure.colorbar(image, ax=axes)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


def plot_losses(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Training and eval loss against the step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in history if r.get("eval_loss") is not None]
    figure, axes = plt.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def eval_markdown(result: Any, keys: dict[str, list[str]], notes: Sequence[str]) -> str:
    """report.md: the headline, a table per task, the label keys of coded plots."""
    lines = [f"# Evaluation: {result.name}", "", f"**{result.metric}: {result.score:.4f}**", ""]
    lines += [
        _md("task", "rows", "headline", "correct", "partial", "wrong", "invalid", "invalid rate")
    ]
    lines += [_md("---", *["---:"] * 7)]
    for task, m in result.tasks.items():
        s = m["status"]
        headline = f"{m['headline_metric']} {m['headline']:.4f}"
        lines.append(
            _md(
                task,
                m["rows"],
                headline,
                s["correct"],
                s["partial"],
                s["wrong"],
                s["invalid"],
                f"{m['invalid_rate']:.3f}",
            )
        )
    for task, m in result.tasks.items():
        lines += _per_class_lines(task, m.get("classification") or {})
        extra = {k: v for k, v in m.items() if k in ("exact_match", "bleu", "rouge_l")}
        if extra:
            lines += ["", f"{task}: " + ", ".join(f"{k} {v}" for k, v in extra.items())]
    for task, labels in keys.items():
        key = ", ".join(f"L{i} = {label}" for i, label in enumerate(labels))
        lines += ["", f"Plot key for {task}: {key}"]
    lines += [f"\n> {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _per_class_lines(task: str, report: dict[str, Any]) -> list[str]:
    if "per_class" not in report:
        return []
    lines = ["", f"## {task}: per class", "", _md("label", "precision", "recall", "f1", "support")]
    lines.append(_md("---", "---:", "---:", "---:", "---:"))
    for label, c in report["per_class"].items():
        lines.append(
            _md(label, *(f"{c[k]:.3f}" for k in ("precision", "recall", "f1")), c["support"])
        )
    macro = report["macro"]
    lines.append(_md("macro", *(f"{macro[k]:.3f}" for k in ("precision", "recall", "f1")), ""))
    return lines


def _md(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def print_comparison(console: Console, results: Sequence[Any]) -> None:
    """Models side by side, per task, on the same rows, with the fine-tuned model's gap to
    each other column (the base model, the classic baseline)."""
    tuned = next((i for i, r in enumerate(results) if r.name == "fine-tuned"), len(results) - 1)
    others = [
        i for i in range(len(results)) if i != tuned and getattr(results[i], "gap_shown", True)
    ]
    rows = len(results[tuned].rows) or next(iter(results[tuned].tasks.values()), {}).get("rows", 0)
    per_task = list(results[tuned].tasks) != ["all"]  # a single-task set needs no task column
    table = Table(title=f"evaluation ({rows} rows)", title_justify="left")
    for column in (*(["task"] if per_task else []), "metric", *(r.name for r in results)):
        table.add_column(
            column, justify="left" if column in ("task", "metric") else "right", no_wrap=True
        )
    for i in others:
        table.add_column(f"vs {results[i].name}", justify="right", no_wrap=True)
    for task, metrics in results[tuned].tasks.items():
        for metric in _shown_metrics(metrics):
            values = [_metric_value(r, task, metric, metrics["headline_metric"]) for r in results]
            cells = [f"{v:.4f}" if v is not None else "-" for v in values]
            gaps = [
                f"{values[tuned] - values[i]:+.4f}"
                if None not in (values[tuned], values[i])
                else "-"
                for i in others
            ]
            table.add_row(*([task] if per_task else []), metric, *cells, *gaps)
    console.print(table)


def _shown_metrics(metrics: dict[str, Any]) -> list[str]:
    extra = ("accuracy", "macro_f1", "exact_match", "bleu", "rouge_l", "invalid_rate")
    return list(dict.fromkeys([metrics["headline_metric"], *(k for k in extra if k in metrics)]))


def _metric_value(result: Any, task: str, metric: str, headline: str) -> float | None:
    values = result.tasks.get(task, {})
    value = values.get(metric, values.get("headline") if metric == headline else None)
    return float(value) if isinstance(value, int | float) else None


def slug(text: str) -> str:
    """A name usable in a file name."""
    return "".join(c if c.isalnum() else "_" for c in text) or "task"
