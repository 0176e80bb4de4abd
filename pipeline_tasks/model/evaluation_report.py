"""The evaluate stage's reports: a Markdown summary and two plots (metrics with intervals, slices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline_tasks.model.evaluation import CI_METRICS, FAIRNESS_METRIC


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def ci_cell(ci: dict) -> str:
    return f"{fmt(ci['mean'])} [{fmt(ci['low'])}, {fmt(ci['high'])}]"


def markdown_report(result: dict) -> str:
    """A human summary of the returned dict: headline table with CIs, then one table per slice."""
    models = result["models"]
    metric_names = list(next(iter(models.values())))
    lines = [
        f"# Evaluation ({result['users']} test users)",
        "",
        f"Trained model: **{result['model']}**; best baseline: **{result['best_baseline']}**.",
        "",
        "| model | " + " | ".join(metric_names) + " |",
        "|---" * (len(metric_names) + 1) + "|",
    ]
    for name, values in models.items():
        lines.append(f"| {name} | " + " | ".join(fmt(values[m]) for m in metric_names) + " |")
    intervals = result["intervals"]
    ci_names = [f"{m}@{k}" for m, k in CI_METRICS]
    lines += [
        "",
        "## Bootstrap intervals",
        "",
        "| model | " + " | ".join(ci_names) + " |",
        "|---" * (len(ci_names) + 1) + "|",
    ]
    for name in models:
        cells = [ci_cell(intervals[name][m]) for m in ci_names] if name in intervals else ["-"] * len(ci_names)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    delta = intervals.get("delta_vs_best_baseline")
    if delta:
        cells = [ci_cell(delta[m]) for m in ci_names]
        lines.append(f"| {result['model']} - {delta['reference']} | " + " | ".join(cells) + " |")
    for slice_name, data in result["slices"].items():
        groups = list(data["users"])
        lines += [
            "",
            f"## Slice: {slice_name} ({FAIRNESS_METRIC})",
            "",
            "| model | "
            + " | ".join(f"{g} (n={data['users'][g]})" for g in groups)
            + (" | worst/best |" if "fairness" in data else " |"),
            "|---" * (len(groups) + 1 + ("fairness" in data)) + "|",
        ]
        for name, per_group in data["metrics"].items():
            row = f"| {name} | " + " | ".join(fmt(per_group[g][FAIRNESS_METRIC]) for g in groups)
            if "fairness" in data:
                row += f" | {fmt(data['fairness'][name]['ratio'])}"
            lines.append(row + " |")
    return "\n".join(lines) + "\n"


def plot_metrics(result: dict, path: Path) -> None:
    """Grouped bars of NDCG@10 and Recall@10 per model, bootstrap intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    width = 0.8 / len(CI_METRICS)
    for j, (m, k) in enumerate(CI_METRICS):
        metric = f"{m}@{k}"
        heights = np.array([result["models"][n][metric] for n in names])
        ci = result["intervals"]
        errors = np.array(
            [
                [heights[i] - ci[n][metric]["low"], ci[n][metric]["high"] - heights[i]] if n in ci else [0.0, 0.0]
                for i, n in enumerate(names)
            ]
        ).T
        ax.bar(np.arange(len(names)) + j * width, heights, width, yerr=np.maximum(errors, 0), capsize=3, label=metric)
    ax.set_xticks(np.arange(len(names)) + width * (len(CI_METRICS) - 1) / 2, names)
    ax.set_ylabel("test score")
    level = result["intervals"].get("level", 0.95)
    ax.set_title(f"Test metrics ({result['users']} users, {100 * level:g}% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_slices(result: dict, path: Path) -> None:
    """One panel per slice: NDCG@10 of every model in every group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = result["slices"]
    fig, axes = plt.subplots(len(slices), 1, figsize=(9, 3 * len(slices)), squeeze=False)
    for ax, (slice_name, data) in zip(axes[:, 0], slices.items()):
        groups, names = list(data["users"]), list(data["metrics"])
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            heights = [data["metrics"][name][g][FAIRNESS_METRIC] for g in groups]
            ax.bar(np.arange(len(groups)) + j * width, heights, width, label=name)
        crowded = len(groups) > 6  # e.g. occupations: tilt the labels so they stay legible
        ax.set_xticks(
            np.arange(len(groups)) + width * (len(names) - 1) / 2,
            [f"{g} (n={data['users'][g]})" if crowded else f"{g}\n(n={data['users'][g]})" for g in groups],
            fontsize=7 if crowded else 8,
            rotation=35 if crowded else 0,
            ha="right" if crowded else "center",
        )
        ax.set_title(f"{slice_name}: {FAIRNESS_METRIC}", fontsize=10)
    axes[0, 0].legend(fontsize=8, ncol=min(5, len(result["models"])))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(result: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "evaluate.md", folder / "evaluate_metrics.png", folder / "evaluate_slices.png"]
    paths[0].write_text(markdown_report(result), encoding="utf-8")
    plot_metrics(result, paths[1])
    plot_slices(result, paths[2])
    return paths
