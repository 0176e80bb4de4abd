"""`recpipe ab-report`: CTR of champion vs challenger in ONE experiment, and a decision.

Units and statistics:
- An experiment (serving/registry.py) is champion version, challenger version, share, salt and
  a planned number of exposures per arm; the server logs its id with every exposure. The
  report analyses one id (default: the one running now) and never pools two: other ids in
  the log, and exposures without an id (logs from before experiments), are only counted.
- An exposure is one /recommend answer (in the event store, serving/event_store.py); it is
  *clicked* (or *purchased*) when a feedback event names its exposure_id (the server stores
  feedback only with the exposure it belongs to), or, for feedback without one (imported from
  old JSON-lines logs), when it is the user's latest exposure before the event (over the whole
  store, so a click goes to the experiment that served what was clicked). CTR = clicked
  exposures / exposures, per variant. Exposures answered by the cold-start fallback after a
  model error are counted apart and left out: they measure the fallback list, not the model.
- Users, not exposures, are randomised (a stable hash), and one user's exposures are
  correlated, so the standard error of a CTR is the user-clustered (delta-method) one; with one
  exposure per user it is exactly the binomial sqrt(p(1-p)/n). The significance test is the
  two-proportion z-test of challenger minus champion with those standard errors.
- The plan: exposures per arm to detect a relative CTR change of `register.ab_mde` from
  `ab_baseline_ctr` at `ab_alpha` with `ab_power`, fixed when the split is set (`recpipe ab`,
  or `--planned-exposures N`) and stored with the experiment; the report inflates it by the
  measured design effect of the clustering.

Decision, only once every arm has reached the (inflated) plan: `promote` (challenger
significantly better and no guardrail broken) or `keep` (significantly worse, a guardrail
broken, or no significant difference). Before that the answer is `need more data`, whatever
the p-value: stopping at the first p < alpha ("peeking") makes false positives far likelier
than alpha. The interim numbers are shown, labelled as not a decision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.serving import event_store

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTE, KEEP, MORE_DATA = "promote", "keep", "need more data"
NO_EXPERIMENT = "(none)"  # exposures logged before servers recorded an experiment id


def attribute(exposures: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """exposures with boolean columns click and purchase (did any such event follow it)."""
    out = exposures.copy()
    out["ts"] = pd.to_datetime(out["ts"], utc=True, format="ISO8601")
    for event in ("click", "purchase"):
        out[event] = False
    if feedback.empty:
        return out
    fb = feedback.copy()
    fb["ts"] = pd.to_datetime(fb["ts"], utc=True, format="ISO8601")
    if "exposure_id" not in fb:
        fb["exposure_id"] = None
    known = fb["exposure_id"].isin(out["exposure_id"])
    loose = fb[~known].sort_values("ts")
    if not loose.empty:  # no (or an unknown) exposure id: the user's latest exposure before the event
        matched = pd.merge_asof(
            loose.drop(columns=["exposure_id"]),
            out[["ts", "user_id", "exposure_id"]].sort_values("ts"),
            on="ts",
            by="user_id",
            direction="backward",
        )
        fb = pd.concat([fb[known], matched], ignore_index=True)
    for event in ("click", "purchase"):
        ids = set(fb.loc[fb["event"] == event, "exposure_id"].dropna())
        out[event] = out["exposure_id"].isin(ids)
    return out


def clustered_rate(df: pd.DataFrame, outcome: str) -> tuple[float, float]:
    """(rate, standard error) of outcome per exposure, with users as clusters (delta method)."""
    per_user = df.groupby("user_id")[outcome].agg(["sum", "count"])
    n_exp = per_user["count"].sum()
    rate = per_user["sum"].sum() / n_exp
    n_users = len(per_user)
    resid = per_user["sum"] - rate * per_user["count"]
    correction = n_users / (n_users - 1) if n_users > 1 else 1.0
    return float(rate), float(np.sqrt(correction * (resid**2).sum()) / n_exp)


def variant_stats(df: pd.DataFrame, alpha: float) -> dict:
    z = norm.ppf(1 - alpha / 2)
    stats = {}
    for variant, part in df.groupby("variant"):
        ctr, se = clustered_rate(part, "click")
        purchase, purchase_se = clustered_rate(part, "purchase")
        binomial_se = np.sqrt(ctr * (1 - ctr) / len(part)) if 0 < ctr < 1 else 0.0
        stats[variant] = {
            "exposures": int(len(part)),
            "users": int(part["user_id"].nunique()),
            "clicks": int(part["click"].sum()),
            "ctr": ctr,
            "ctr_se": se,
            "ctr_ci": [max(0.0, ctr - z * se), min(1.0, ctr + z * se)],
            "purchases": int(part["purchase"].sum()),
            "purchase_rate": purchase,
            "purchase_se": purchase_se,
            "design_effect": float((se / binomial_se) ** 2) if binomial_se > 0 else 1.0,
            "model_versions": sorted(map(str, part["model_version"].unique())),
            "latency_p99_ms": float(np.percentile(part["latency_ms"], 99)) if "latency_ms" in part else None,
        }
    return stats


def z_test(a: dict, b: dict, key: str, se_key: str, alpha: float) -> dict:
    """Two-proportion z-test of b minus a (two-sided p), with the difference's confidence interval."""
    diff = b[key] - a[key]
    se = float(np.hypot(a[se_key], b[se_key]))
    zval = diff / se if se > 0 else 0.0
    half = norm.ppf(1 - alpha / 2) * se
    return {
        "diff": diff,
        "diff_rel": diff / a[key] if a[key] > 0 else None,
        "z": zval,
        "p_value": float(2 * norm.sf(abs(zval))) if se > 0 else 1.0,
        "diff_ci": [diff - half, diff + half],
    }


def required_exposures(
    p_base: float, mde_rel: float, alpha: float, power: float, design_effect: float = 1.0
) -> int | None:
    """Exposures per arm to detect p_base -> p_base*(1+mde_rel) with the given alpha and power."""
    p_new = p_base * (1 + mde_rel)
    if not 0 < p_base < 1 or not 0 < p_new < 1:
        return None
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    n = z**2 * (p_base * (1 - p_base) + p_new * (1 - p_new)) / (p_new - p_base) ** 2
    return int(np.ceil(n * max(1.0, design_effect)))


def guardrail_checks(stats: dict, guardrails: list[str], cfg: dict) -> list[dict]:
    """Challenger must not be significantly worse on purchases, nor slower than the latency budget."""
    checks = []
    champ, chall = stats[CHAMPION], stats[CHALLENGER]
    if "purchase_rate" in guardrails:
        test = z_test(champ, chall, "purchase_rate", "purchase_se", cfg["ab_alpha"])
        worse = test["diff"] < 0 and test["p_value"] < cfg["ab_alpha"]
        checks.append(
            {
                "name": "purchase_rate",
                "passed": not worse,
                "detail": f"purchase rate {chall['purchase_rate']:.4f} vs {champ['purchase_rate']:.4f} "
                f"(p={test['p_value']:.3g})",
            }
        )
    if "latency_p99_ms" in guardrails and chall["latency_p99_ms"] is not None:
        ok = chall["latency_p99_ms"] <= cfg["ab_max_latency_p99_ms"]
        checks.append(
            {
                "name": "latency_p99_ms",
                "passed": ok,
                "detail": f"challenger p99 {chall['latency_p99_ms']:.2f} ms "
                f"vs budget {cfg['ab_max_latency_p99_ms']} ms",
            }
        )
    return checks


def planned_exposures(cfg: dict) -> int | None:
    """The plan from params: exposures per arm for ab_mde at ab_baseline_ctr, ab_alpha, ab_power."""
    return required_exposures(cfg["ab_baseline_ctr"], cfg["ab_mde"], cfg["ab_alpha"], cfg["ab_power"])


def plan_basis(cfg: dict) -> str:
    return (
        f"register.ab_baseline_ctr {cfg['ab_baseline_ctr']:g}, ab_mde {cfg['ab_mde']:g}, "
        f"ab_alpha {cfg['ab_alpha']:g}, ab_power {cfg['ab_power']:g}"
    )


def experiment_plan(experiment: dict, cfg: dict) -> tuple[int | None, str]:
    """(exposures per arm, where that number comes from): the experiment's own, else params' now."""
    if experiment.get("planned_exposures_per_arm"):
        return int(experiment["planned_exposures_per_arm"]), experiment.get("plan_basis") or "stored"
    return planned_exposures(cfg), f"{plan_basis(cfg)} (from params now: the experiment recorded no plan)"


def decide(stats: dict, guardrails: list[str], cfg: dict, planned: int | None) -> dict:
    """promote / keep once both arms reached `planned` (x design effect), else need more data."""
    alpha = cfg["ab_alpha"]
    if CHAMPION not in stats or CHALLENGER not in stats:
        return {
            "decision": MORE_DATA,
            "reason": f"exposures of only {sorted(stats)}: set a share with `recpipe ab`",
            "significant": False,
            "test": None,
            "required_exposures": None,
            "guardrails": [],
        }
    champ, chall = stats[CHAMPION], stats[CHALLENGER]
    test = z_test(champ, chall, "ctr", "ctr_se", alpha)
    deff = max(champ["design_effect"], chall["design_effect"])
    needed = int(np.ceil(planned * max(1.0, deff))) if planned else None
    have = min(champ["exposures"], chall["exposures"])
    significant = test["p_value"] < alpha
    checks = guardrail_checks(stats, guardrails, cfg)
    broken = [c["name"] for c in checks if not c["passed"]]
    ci = f"[{test['diff_ci'][0]:+.4f}, {test['diff_ci'][1]:+.4f}]"
    if needed is None:
        decision = MORE_DATA
        reason = (
            "no plan to judge against: register.ab_baseline_ctr * (1 + ab_mde) must be a CTR in (0, 1); "
            "fix params, or set one with `recpipe ab --share S --planned-exposures N`"
        )
    elif have < needed:
        decision = MORE_DATA
        reason = (
            f"{have} of {needed} planned exposures per arm (design effect {deff:.2f} included); "
            f"interim, not a decision: CTR difference {test['diff']:+.4f} {ci}, p={test['p_value']:.3g}"
            + (f"; guardrails broken so far: {broken}" if broken else "")
        )
    elif significant and test["diff"] > 0:
        decision = KEEP if broken else PROMOTE
        reason = f"challenger CTR higher by {test['diff']:+.4f} {ci}, p={test['p_value']:.3g} < {alpha}" + (
            f", but guardrails broken: {broken}" if broken else ""
        )
    elif significant:
        decision, reason = KEEP, f"challenger CTR lower by {test['diff']:+.4f} {ci}, p={test['p_value']:.3g} < {alpha}"
    else:
        decision = KEEP
        reason = (
            f"no significant difference (p={test['p_value']:.3g}, diff {ci}) with {have} >= {needed} exposures per arm"
        )
        reason += f"; guardrails broken: {broken}" if broken else ""
    return {
        "decision": decision,
        "reason": reason,
        "significant": significant,
        "test": test,
        "required_exposures": needed,
        "guardrails": checks,
    }


def experiment_ids(exposures: pd.DataFrame) -> pd.Series:
    """Each exposure's experiment id; NO_EXPERIMENT for lines written before servers logged one."""
    if "experiment_id" not in exposures:
        return pd.Series(NO_EXPERIMENT, index=exposures.index)
    return exposures["experiment_id"].fillna(NO_EXPERIMENT).astype(str)


def fallback_mask(exposures: pd.DataFrame) -> pd.Series:
    if "fallback" not in exposures:
        return pd.Series(False, index=exposures.index)
    return exposures["fallback"].fillna(False).astype(bool)


def analyse(
    exposures: pd.DataFrame, feedback: pd.DataFrame, cfg: dict, guardrails: list[str], experiment: dict
) -> dict:
    """The report of one experiment ({"id", "planned_exposures_per_arm"?, ...}) from the event store (already read)."""
    if exposures.empty:
        raise PipelineError("no exposures to analyse: run `recpipe serve` and send traffic first")
    attributed = attribute(exposures, feedback)  # over the whole log: a click follows its own exposure
    ids = experiment_ids(attributed)
    mine = attributed[ids == experiment["id"]]
    fallback = fallback_mask(mine)
    stats = variant_stats(mine[~fallback], cfg["ab_alpha"])
    planned, basis = experiment_plan(experiment, cfg)
    return {
        "experiment": experiment,
        "variants": stats,
        "fallback_exposures": {str(v): int(n) for v, n in mine[fallback].groupby("variant").size().items()},
        **decide(stats, guardrails, cfg, planned),
        "planned_exposures": planned,
        "plan_basis": basis,
        "other_experiments": {str(i): int(n) for i, n in ids[ids != experiment["id"]].value_counts().items()},
        "alpha": cfg["ab_alpha"],
        "power": cfg["ab_power"],
        "mde": cfg["ab_mde"],
        "feedback_events": int(len(feedback)),
    }


def run(params: dict, root: str | Path, experiment: dict | None, guardrails: list[str] | None = None) -> dict:
    """The report of `experiment` (a registry record, or {"id": ...}) from the event store.

    None (no experiment running: the registry has no champion) is refused, naming the store's ids.
    """
    cfg = params["register"]
    store = event_store.open_store(params, root)
    try:
        exposures, feedback = store.frames()
    finally:
        store.dispose()
    if exposures.empty:
        raise PipelineError(
            f"no exposures in the event store {store.where}: run `recpipe serve` and send traffic first "
            f"(point ${event_store.URL_ENV} or register.event_store at the server's store; logs of older servers: "
            "`recpipe events import-jsonl`)"
        )
    if experiment is None:
        counts = experiment_ids(exposures).value_counts()
        raise PipelineError(
            "no experiment is running (the registry has no champion) and none was asked for: pass "
            f"--experiment ID; ids in {store.where} (exposures): " + ", ".join(f"{i} ({n})" for i, n in counts.items())
        )
    return analyse(exposures, feedback, cfg, cfg["ab_guardrails"] if guardrails is None else guardrails, experiment)


def format_report(result: dict) -> str:
    exp = result["experiment"]
    lines = [experiment_line(exp), variants_table(result)]
    if result["fallback_exposures"]:
        counts = ", ".join(f"{v} {n}" for v, n in sorted(result["fallback_exposures"].items()))
        lines.append(f"fallback exposures (cold-start list after a model error; not in the CTR): {counts}")
    test = result.get("test")
    interim = "INTERIM, not a decision: " if result["decision"] == MORE_DATA else ""
    if test:
        lines.append(
            f"{interim}challenger - champion CTR: {test['diff']:+.4f} [{test['diff_ci'][0]:+.4f}, "
            f"{test['diff_ci'][1]:+.4f}], z={test['z']:.2f}, p={test['p_value']:.3g} "
            "(two-proportion z-test, user-clustered SE)"
        )
    lines.append(
        f"plan: {result['planned_exposures'] or '?'} exposures per arm ({result['plan_basis']}); "
        f"{result['required_exposures'] or '?'} with the measured design effect, to detect a "
        f"{result['mde']:.0%} relative change (alpha {result['alpha']}, power {result['power']})"
    )
    lines += [
        f"guardrail {c['name']}: {'ok' if c['passed'] else 'BROKEN'} ({c['detail']})" for c in result["guardrails"]
    ]
    lines += other_experiments_lines(result["other_experiments"])
    lines.append(f"decision: {result['decision'].upper()} — {result['reason']}")
    return "\n".join(lines)


def experiment_line(exp: dict) -> str:
    if "champion" not in exp:
        return f"experiment {exp['id']} (no record in the registry: plan from params)"
    recorded = "" if exp.get("recorded", True) else " [UNRECORDED: an alias was moved outside recpipe]"
    return (
        f"experiment {exp['id']}{recorded}: champion v{exp['champion']} vs challenger v{exp.get('challenger') or '-'}, "
        f"share {exp['share']:g}, salt {exp['salt'] or '-'}, started {exp.get('started_at') or '?'}"
    )


def variants_table(result: dict) -> str:
    lines = [
        f"{'variant':<11} {'versions':<9} {'users':>7} {'exposures':>9} {'clicks':>7} {'CTR':>7} "
        f"{100 * (1 - result['alpha']):.0f}% CI{'':<12} {'purchases':>9} {'p99 ms':>7}"
    ]
    for name, s in sorted(result["variants"].items()):
        lines.append(
            f"{name:<11} {','.join(s['model_versions']):<9} {s['users']:>7} {s['exposures']:>9} {s['clicks']:>7} "
            f"{s['ctr']:>7.4f} [{s['ctr_ci'][0]:.4f}, {s['ctr_ci'][1]:.4f}] {s['purchases']:>9} "
            f"{'-' if s['latency_p99_ms'] is None else round(s['latency_p99_ms'], 2):>7}"
        )
    return "\n".join(lines)


def other_experiments_lines(others: dict[str, int]) -> list[str]:
    """The log's other ids, never pooled: pick one with `recpipe ab-report --experiment ID`."""
    lines = []
    unassigned = others.get(NO_EXPERIMENT)
    if unassigned:
        lines.append(
            f"{unassigned} exposures carry no experiment id (logged before experiments were recorded): not analysed"
        )
    named = {i: n for i, n in others.items() if i != NO_EXPERIMENT}
    if named:
        listing = ", ".join(f"{i} ({n})" for i, n in sorted(named.items(), key=lambda kv: -kv[1]))
        lines.append(f"other experiments in the store (exposures; see one with --experiment ID): {listing}")
    return lines
