"""The model card of a registered version: a markdown page built from the run's own outputs.

It is logged as `model_card.md` next to the model and used as the version's description,
so whoever opens the version in the registry reads what it was trained on, how good it is
(with intervals), for whom it is worse (slices and fairness), what compression cost, what
the gate decided, and what it cannot do. Every number comes from metrics/*.json of the run.
"""

from __future__ import annotations

from typing import Any

# MLflow keeps a model version's description in a 5000-character column.
DESCRIPTION_LIMIT = 5000

KNOWN_LIMITS = [
    "Implicit feedback: every interaction counts as a positive; ratings and dislikes are not modelled.",
    "Offline metrics use leave-one-out by time on one test split; online CTR can disagree (use `recpipe ab`).",
    "Users with no known items get the cold-start list (popular and fresh items), not personal recommendations.",
    "Items absent from the catalogue at training time cannot be recommended until the next run.",
    "Slices with fewer than evaluate.min_group_users users are reported but too noisy to judge.",
]


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def data_section(split_stats: dict, lineage: dict) -> list[str]:
    lines = [
        "## Data",
        "",
        f"- users {fmt(split_stats.get('users'))}, items {fmt(split_stats.get('items'))}, "
        f"train/valid/test rows {fmt(split_stats.get('train_rows'))}/{fmt(split_stats.get('valid_rows'))}/"
        f"{fmt(split_stats.get('test_rows'))} (leave-one-out by time)",
        f"- source: {lineage.get('source', '-')}; DVC md5 of the split data {lineage.get('dataset', '-')}, "
        f"of the model {lineage.get('checkpoint', '-')}",
        f"- git commit {lineage.get('git_commit', '-')}; Airflow run {lineage.get('dag_id', 'none')} / "
        f"{lineage.get('dag_run_id', 'none')}",
        "",
    ]
    return lines


def metrics_section(evaluate: dict) -> list[str]:
    model, intervals = evaluate.get("model"), evaluate.get("intervals", {})
    level = intervals.get("level")
    head = f"{int(level * 100)}% bootstrap interval" if level else "bootstrap interval"
    lines = [
        f"## Metrics (test split, {evaluate.get('users', '-')} users; [{head}])",
        "",
        "| model | NDCG@10 | Recall@10 |",
        "|---|---|---|",
    ]
    for name, values in evaluate.get("models", {}).items():
        cells = []
        for metric in ("ndcg@10", "recall@10"):
            ci = intervals.get(name, {}).get(metric)
            cells.append(
                f"{fmt(values.get(metric))} [{fmt(ci['low'])}, {fmt(ci['high'])}]" if ci else fmt(values.get(metric))
            )
        lines.append(f"| {'**' + name + '**' if name == model else name} | {cells[0]} | {cells[1]} |")
    delta = intervals.get("delta_vs_best_baseline")
    if delta and "ndcg@10" in delta:
        d = delta["ndcg@10"]
        lines += [
            "",
            f"NDCG@10 minus the best baseline ({delta.get('reference')}): {fmt(d['mean'])} "
            f"[{fmt(d['low'])}, {fmt(d['high'])}] (paired bootstrap).",
        ]
    return lines + [""]


def slices_section(evaluate: dict) -> list[str]:
    model = evaluate.get("model")
    lines = ["## Slices and fairness (NDCG@10 of this model; users per group)", ""]
    for name, data in evaluate.get("slices", {}).items():
        per_group = data.get("metrics", {}).get(model, {})
        cells = [f"{g} {fmt(m.get('ndcg@10'))} (n={data['users'].get(g)})" for g, m in per_group.items()]
        line = f"- **{name}**: " + "; ".join(cells)
        fair = data.get("fairness", {}).get(model)
        if fair and fair.get("ratio") is not None:
            line += f" — worst/best ratio {fmt(fair['ratio'])} ({fair['worst']} vs {fair['best']})"
        lines.append(line)
    return lines + [""]


def compression_section(compress: dict) -> list[str]:
    chosen = compress.get("chosen") or compress.get("reference") or "fp32"
    lines = [
        f"## Compression (serving variant: **{chosen}**)",
        "",
        "| variant | size MB | p50 ms | p99 ms | NDCG@10 | drop vs fp32 [interval] | acceptable |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in compress.get("variants", {}).items():
        interval = (
            f" [{fmt(v['ndcg_drop_rel_low'])}, {fmt(v['ndcg_drop_rel_high'])}]" if "ndcg_drop_rel_low" in v else ""
        )
        acceptable = {True: "yes", False: "no"}.get(v.get("acceptable"), "-")
        lines.append(
            f"| {name} | {fmt(v.get('size_mb'))} | {fmt(v.get('latency_p50_ms'))} | {fmt(v.get('latency_p99_ms'))} | "
            f"{fmt(v.get('ndcg@10'))} | {fmt(v.get('ndcg_drop_rel'))}{interval} | {acceptable} |"
        )
    return lines + [""]


def gate_section(decision: dict) -> list[str]:
    lines = [f"## Gate ({decision.get('kind')}): {'PASS' if decision.get('passed') else 'FAIL'}", ""]
    lines += [f"- [{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in decision.get("checks", [])]
    return lines + [""]


def render(name: str, evaluate: dict, compress: dict, split_stats: dict, decision: dict, lineage: dict) -> str:
    """The whole card as markdown."""
    lines = [
        f"# {name} — {evaluate.get('model', 'model')} model card",
        "",
        "Text-aware sequential recommender (transformer item tower over item text + ID embedding, "
        "causal user tower); input a user id or an item history, output top-K item ids and scores.",
        "",
    ]
    lines += data_section(split_stats, lineage) + metrics_section(evaluate) + slices_section(evaluate)
    lines += compression_section(compress) + gate_section(decision)
    lines += ["## Known limits", "", *[f"- {limit}" for limit in KNOWN_LIMITS], ""]
    return "\n".join(lines)


def description(card: str) -> str:
    """The card cut to what the registry's description column holds (the artifact keeps it all)."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = "\n\n(cut here: the full card is the artifact model_card.md of this version's run)"
    return card[: DESCRIPTION_LIMIT - len(note)] + note
