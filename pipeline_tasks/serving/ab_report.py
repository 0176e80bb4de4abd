"""`recpipe ab-report`: CTR of champion vs challenger from the serving logs, and a decision.

Units and statistics:
- An exposure is one /recommend answer (exposure log); it is *clicked* (or *purchased*) when a
  feedback event names its exposure_id, or, for feedback without one, when it is the user's
  latest exposure before the event. CTR = clicked exposures / exposures, per variant.
- Users, not exposures, are randomised (a stable hash), and one user's exposures are
  correlated, so the standard error of a CTR is the user-clustered (delta-method) one; with one
  exposure per user it is exactly the binomial sqrt(p(1-p)/n). The significance test is the
  two-proportion z-test of challenger minus champion with those standard errors.
- Power: the exposures per arm needed to detect a relative CTR change of `register.ab_mde`
  at `ab_alpha` with `ab_power`, inflated by the measured design effect of the clustering.

Decision: `promote` (challenger significantly better and no guardrail broken), `keep`
(significantly worse, a guardrail broken, or no difference although the test had its
sample size), or `need more data` (neither significant nor the sample size reached).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipeline_tasks.core.errors import PipelineError

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTE, KEEP, MORE_DATA = "promote", "keep", "need more data"


def read_jsonl(path: Path) -> pd.DataFrame:
    """Every JSON line of an append-only log; a truncated last line (a crash mid-write) is skipped."""
    if not path.exists():
        return pd.DataFrame()
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return pd.DataFrame(rows)


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


def decide(stats: dict, guardrails: list[str], cfg: dict) -> dict:
    alpha = cfg["ab_alpha"]
    if CHAMPION not in stats or CHALLENGER not in stats:
        return {
            "decision": MORE_DATA,
            "reason": f"exposures of only {sorted(stats)}: set a share with `recpipe ab`",
            "test": None,
            "required_exposures": None,
            "guardrails": [],
        }
    champ, chall = stats[CHAMPION], stats[CHALLENGER]
    test = z_test(champ, chall, "ctr", "ctr_se", alpha)
    deff = max(champ["design_effect"], chall["design_effect"])
    needed = required_exposures(champ["ctr"], cfg["ab_mde"], alpha, cfg["ab_power"], deff)
    enough = needed is not None and min(champ["exposures"], chall["exposures"]) >= needed
    significant = test["p_value"] < alpha
    checks = guardrail_checks(stats, guardrails, cfg)
    broken = [c["name"] for c in checks if not c["passed"]]
    ci = f"[{test['diff_ci'][0]:+.4f}, {test['diff_ci'][1]:+.4f}]"
    if significant and test["diff"] > 0:
        decision = KEEP if broken else PROMOTE
        reason = f"challenger CTR higher by {test['diff']:+.4f} {ci}, p={test['p_value']:.3g} < {alpha}" + (
            f", but guardrails broken: {broken}" if broken else ""
        )
    elif significant:
        decision, reason = KEEP, f"challenger CTR lower by {test['diff']:+.4f} {ci}, p={test['p_value']:.3g} < {alpha}"
    elif enough:
        decision, reason = (
            KEEP,
            (
                f"no significant difference (p={test['p_value']:.3g}, diff {ci}) with "
                f"{min(champ['exposures'], chall['exposures'])} >= {needed} exposures per arm"
            ),
        )
    else:
        decision, reason = (
            MORE_DATA,
            (
                f"not significant (p={test['p_value']:.3g}) and "
                f"{min(champ['exposures'], chall['exposures'])} exposures per arm "
                f"< {needed if needed else '?'} needed for a {cfg['ab_mde']:.0%} relative change"
            ),
        )
    return {
        "decision": decision,
        "reason": reason,
        "significant": significant,
        "test": test,
        "required_exposures": needed,
        "guardrails": checks,
    }


def analyse(exposures: pd.DataFrame, feedback: pd.DataFrame, cfg: dict, guardrails: list[str]) -> dict:
    """The whole report from the two logs (already read)."""
    if exposures.empty:
        raise PipelineError("no exposures to analyse: run `recpipe serve` and send traffic first")
    stats = variant_stats(attribute(exposures, feedback), cfg["ab_alpha"])
    return {
        "variants": stats,
        **decide(stats, guardrails, cfg),
        "alpha": cfg["ab_alpha"],
        "power": cfg["ab_power"],
        "mde": cfg["ab_mde"],
        "feedback_events": int(len(feedback)),
    }


def run(params: dict, root: str | Path, guardrails: list[str] | None = None) -> dict:
    cfg = params["register"]
    root = Path(root)
    exposures, feedback = read_jsonl(root / cfg["exposure_log"]), read_jsonl(root / cfg["feedback_log"])
    if exposures.empty:
        raise PipelineError(
            f"no exposures in {root / cfg['exposure_log']}: run `recpipe serve` and send traffic "
            "first (or point register.exposure_log at the server's log)"
        )
    return analyse(exposures, feedback, cfg, cfg["ab_guardrails"] if guardrails is None else guardrails)


def format_report(result: dict) -> str:
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
    test = result.get("test")
    if test:
        lines.append(
            f"challenger - champion CTR: {test['diff']:+.4f} [{test['diff_ci'][0]:+.4f}, {test['diff_ci'][1]:+.4f}], "
            f"z={test['z']:.2f}, p={test['p_value']:.3g} (two-proportion z-test, user-clustered SE)"
        )
        lines.append(
            f"sample size: {result['required_exposures'] or '?'} exposures per arm to detect a "
            f"{result['mde']:.0%} relative change (alpha {result['alpha']}, power {result['power']})"
        )
    lines += [
        f"guardrail {c['name']}: {'ok' if c['passed'] else 'BROKEN'} ({c['detail']})" for c in result["guardrails"]
    ]
    lines.append(f"decision: {result['decision'].upper()} — {result['reason']}")
    return "\n".join(lines)
