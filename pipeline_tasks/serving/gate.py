"""The promotion gate: may the challenger replace the champion?

The gate scores the chosen compression variant (what would serve) and re-scores the
current champion, downloaded from the registry, on *this* run's test split with the same
functions as the evaluate stage (never stale numbers). The challenger passes when:
- NDCG@10 gains at least `register.min_improvement` (relative) over the champion,
- no group of a guarded slice (`register.guarded_slices`: history length, cold-start and
  long-tail targets, ...) with at least `evaluate.min_group_users` users loses more than
  `register.max_slice_drop` (relative) NDCG@10,
- the variant's median (p50) single-user latency and its size, as the compress stage measured them
  (metrics/compress.json), fit `register.max_latency_p50_ms` and `register.max_size_mb`. The median, not
  p99: compress times a few hundred calls, and on a busy machine their tail measures the load (p99
  89 ms under load, 0.95 ms quiet, for one model); the decision names the figure it read and shows p99.
With no champion yet, it must instead clear `register.min_ndcg` (0.0 by default: off, since
NDCG's scale depends on the data) and beat the run's best baseline (plus the same budgets).
A guarded slice name this run's split does not have is refused before anything is scored.
`register.auto_promote: false` leaves a passing challenger to `recpipe promote`.
Alias moves go through pipeline_tasks.serving.registry (audited, all or nothing).
The decision is printed, logged to MLflow (metrics gate.*, tags, gate.json) and stored as
version tags (gate.passed, gate.summary, gate.champion_version, ...) by the register stage.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model.evaluation import model_ranking, slice_metrics, user_slices
from pipeline_tasks.serving.registry import RegistryError, registered_artifact

HEADLINE = "ndcg@10"


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    """The gate's verdict. `passed`: the challenger deserves champion; `promote`: it is promoted now."""

    kind: str  # "first" (no champion yet) | "compare" (against the re-scored champion)
    passed: bool
    promote: bool
    summary: str
    challenger_ndcg: float
    champion_ndcg: float | None
    champion_version: str | None
    checks: list[Check] = field(default_factory=list)
    slice_deltas: dict = field(default_factory=dict)


def score(model_dir: Path, params: dict, split, task, ctx) -> dict:
    """Headline test metrics and guarded-slice NDCG@10 of one saved model on this run's split."""
    cfg = params["evaluate"]
    ranked = model_ranking(split, task, Path(model_dir), M.ranking_length(cfg["ks"]), cfg["batch_size"])
    headline = M.compute_all(ranked, task.targets, ctx, M.metric_set(cfg["ks"]))
    groups = user_slices(split, task, ctx, params)
    slices = {}
    for name in params["register"]["guarded_slices"]:
        if name in groups:
            data = slice_metrics({"m": ranked}, task.targets, groups[name], ctx, cfg["min_group_users"], False)
            slices[name] = {
                g: {"users": n, HEADLINE: data["metrics"]["m"][g][HEADLINE]} for g, n in data["users"].items()
            }
    return {"metrics": headline, "slices": slices}


def check_guarded_slices(names: list[str], available: list[str]) -> None:
    """Every guarded slice must be one this split has: `score` skips unknown names, which would turn a guard off.

    The register stage calls this before scoring, with the slices of this run's split: only then are the
    `user.<attribute>` names known (a users column with at most evaluate.max_attribute_groups values).
    """
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ParamsError(
            f"register.guarded_slices names {', '.join(map(repr, unknown))}, which this run's split has no slice "
            f"for; valid here: {', '.join(available)} (user.<attribute>: a column of data/split/users with at "
            "most evaluate.max_attribute_groups distinct values). Fix params.yaml: an unknown name would "
            "switch that guard off silently."
        )


def rescore_champion(client, name: str, version: str, params: dict, split, task, ctx) -> dict:
    """The current champion, downloaded from the registry, scored on *this* run's test split."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = registered_artifact(name, version, C.MODEL_ARTIFACT, Path(tmp))
        if model_dir is None:
            raise RegistryError(
                f"champion v{version} of {name} has no {C.MODEL_ARTIFACT!r} artifact (not registered by recpipe): "
                "promote a version this recpipe registered, or `recpipe rollback --reason TEXT`"
            )
        return score(model_dir, params, split, task, ctx)


def slice_check(challenger: dict, champion: dict, max_drop: float, min_users: int) -> tuple[Check, dict]:
    """Relative NDCG@10 drop of every guarded group big enough to judge; fails above max_drop."""
    deltas: dict = {}
    worst = (0.0, None)
    for name, groups in champion["slices"].items():
        for group, champ in groups.items():
            chall = challenger["slices"].get(name, {}).get(group)
            if chall is None or champ["users"] < min_users:
                continue
            drop = (champ[HEADLINE] - chall[HEADLINE]) / champ[HEADLINE] if champ[HEADLINE] > 0 else 0.0
            deltas.setdefault(name, {})[group] = {
                "champion": champ[HEADLINE],
                "challenger": chall[HEADLINE],
                "drop_rel": drop,
                "users": champ["users"],
            }
            if drop > worst[0]:
                worst = (drop, f"{name}/{group}")
    judged = sum(len(g) for g in deltas.values())
    detail = (
        f"worst guarded slice drop {worst[0]:.1%} ({worst[1]}) vs max {max_drop:.1%}"
        if worst[1]
        else f"no guarded slice group dropped ({judged} groups with >= {min_users} users judged)"
    )
    return Check("guarded_slices", worst[0] <= max_drop, detail), deltas


def budget_checks(budget: dict, cfg: dict) -> list[Check]:
    """The serving variant's median latency and size (its metrics/compress.json entry) against the budgets."""
    p50, size, limit = budget.get("latency_p50_ms"), budget.get("size_mb"), cfg["max_latency_p50_ms"]
    if p50 is None:
        latency = (
            f"no median latency (latency_p50_ms) for the serving variant in metrics/compress.json vs budget {limit} ms "
            "(register.max_latency_p50_ms): re-run the compress stage"
        )
    else:
        calls, p99 = budget.get("latency_calls"), budget.get("latency_p99_ms")
        read = f"median of {calls} calls" if calls else "median"
        tail = "" if p99 is None else f"; p99 {p99:.2f} ms shown, not judged"
        latency = f"p50 {p50:.2f} ms ({read}{tail}) vs budget {limit} ms (register.max_latency_p50_ms)"
    return [
        Check("latency_budget", p50 is not None and p50 <= limit, latency),
        Check(
            "size_budget",
            size is not None and size <= cfg["max_size_mb"],
            f"size {size if size is None else round(size, 1)} MB vs budget {cfg['max_size_mb']} MB",
        ),
    ]


def decide(
    challenger: dict,
    champion: tuple[str, dict] | None,
    params: dict,
    budget: dict,
    best_baseline: tuple[str, float] | None,
) -> Decision:
    """Every check of the gate; the challenger passes only if all pass."""
    cfg = params["register"]
    ndcg = challenger["metrics"][HEADLINE]
    deltas: dict = {}
    if champion is None:
        floor = f"{cfg['min_ndcg']:.4f}" if cfg["min_ndcg"] > 0 else "0 (register.min_ndcg: off)"
        checks = [Check("ndcg_floor", ndcg >= cfg["min_ndcg"], f"NDCG@10 {ndcg:.4f} vs floor {floor}")]
        if best_baseline is None:
            checks.append(Check("beats_best_baseline", True, "no baseline in this run"))
        else:
            base_name, base = best_baseline
            checks.append(Check("beats_best_baseline", ndcg > base, f"NDCG@10 {ndcg:.4f} vs {base_name} {base:.4f}"))
        champ_version = champ_ndcg = None
        head = "first champion (no champion yet)"
    else:
        champ_version, champ_scores = champion
        champ_ndcg = champ_scores["metrics"][HEADLINE]
        gain = (ndcg - champ_ndcg) / champ_ndcg if champ_ndcg > 0 else (float("inf") if ndcg > 0 else 0.0)
        checks = [
            Check(
                "ndcg_improvement",
                ndcg > champ_ndcg and gain >= cfg["min_improvement"],
                f"NDCG@10 {ndcg:.4f} vs champion v{champ_version} re-scored {champ_ndcg:.4f} "
                f"({gain:+.1%}, needs >= {cfg['min_improvement']:+.1%})",
            )
        ]
        slices, deltas = slice_check(
            challenger, champ_scores, cfg["max_slice_drop"], params["evaluate"]["min_group_users"]
        )
        checks.append(slices)
        head = f"challenger vs champion v{champ_version} re-scored on this run's test split"
    checks += budget_checks(budget, cfg)
    passed = all(c.passed for c in checks)
    failed = [c.name for c in checks if not c.passed]
    verdict = "PASS" if passed else f"FAIL ({', '.join(failed)})"
    action = (
        ("promoted" if cfg["auto_promote"] else "awaiting `recpipe promote` (register.auto_promote=false)")
        if passed
        else "champion kept"
        if champion
        else "no champion"
    )
    summary = f"{head}: {verdict}; {action}. " + "; ".join(c.detail for c in checks)
    return Decision(
        kind="first" if champion is None else "compare",
        passed=passed,
        promote=passed and cfg["auto_promote"],
        summary=summary,
        challenger_ndcg=ndcg,
        champion_ndcg=champ_ndcg,
        champion_version=champ_version,
        checks=checks,
        slice_deltas=deltas,
    )


def best_baseline(evaluate_metrics: dict) -> tuple[str, float] | None:
    name = evaluate_metrics.get("best_baseline")
    return (name, float(evaluate_metrics["models"][name][HEADLINE])) if name else None


def variant_budget(root: Path, variant: str) -> dict:
    """Latency (p50, p99, calls) and size of the chosen variant as the compress stage measured them."""
    compress = io.read_json(root / C.METRICS_DIR / "compress.json")
    return compress.get("variants", {}).get(variant, {})


def report(decision: Decision) -> str:
    lines = [f"gate ({decision.kind}): {'PASS' if decision.passed else 'FAIL'}"]
    lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in decision.checks]
    return "\n".join(lines)


def log_gate(decision: Decision) -> None:
    """Numbers as metrics, the verdict as tags, the whole decision as gate.json (no-op without a run)."""
    import mlflow

    if not tracking.active():
        return
    numbers = {
        "challenger_ndcg": decision.challenger_ndcg,
        "champion_ndcg": decision.champion_ndcg,
        "passed": float(decision.passed),
        "promoted": float(decision.promote),
        **{f"check.{c.name}": float(c.passed) for c in decision.checks},
        **{
            f"slice_drop.{s}.{g}": d["drop_rel"]
            for s, groups in decision.slice_deltas.items()
            for g, d in groups.items()
        },
    }
    tracking.log_metrics({k: v for k, v in numbers.items() if v is not None}, prefix="gate.")
    mlflow.set_tags({"gate.passed": str(decision.passed).lower(), "gate.summary": decision.summary[:5000]})
    mlflow.log_dict(asdict(decision), "gate.json")


def gate_tags(decision: Decision) -> dict[str, str]:
    return {
        "gate.passed": str(decision.passed).lower(),
        "gate.summary": decision.summary[:5000],
        "gate.kind": decision.kind,
        "gate.challenger_ndcg": f"{decision.challenger_ndcg:.5f}",
        "gate.champion_version": decision.champion_version or "",
        "gate.champion_ndcg": "" if decision.champion_ndcg is None else f"{decision.champion_ndcg:.5f}",
    }
