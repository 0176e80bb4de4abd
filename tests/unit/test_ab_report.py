"""`recpipe ab-report` on simulated traffic with known true CTRs.

Users are bucketed with the server's own hash, each user has a personal click propensity
around the variant's true CTR (so exposures of one user are correlated, as in real
traffic), and the events are written in the server's format to a real event store (SQLite). Each
simulation is one experiment (its id on every exposure), analysed against a stated plan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.serving import ab_report, event_store
from pipeline_tasks.serving.server import assign


@pytest.fixture
def cfg(monkeypatch) -> dict:
    monkeypatch.delenv(event_store.URL_ENV, raising=False)  # the project's own SQLite store
    return P.defaults()["register"]


# Planned exposures per arm to see 0.10 -> 0.13 (+30%): about 1,770; the simulations below with
# 4000 users give each arm ~6,000, enough even after the design effect.
PLAN_30_PERCENT = ab_report.required_exposures(0.10, 0.30, 0.05, 0.8)


def experiment(plan: int | None, experiment_id: str = "exp-a") -> dict:
    return {"id": experiment_id, "planned_exposures_per_arm": plan, "plan_basis": "test"}


def simulate(
    n_users: int,
    true_ctr: dict,
    seed: int,
    share: float = 0.5,
    per_user: int = 3,
    purchase_given_click: dict | None = None,
    latency_ms: dict | None = None,
    heterogeneity: float = 20.0,
    experiment_id: str = "exp-a",
    challenger_version: str = "2",
    start: str = "2026-11-01",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exposure and feedback logs of n_users; a user's CTR ~ Beta around the variant's true CTR."""
    rng = np.random.default_rng(seed)
    purchase_given_click = purchase_given_click or {"champion": 0.2, "challenger": 0.2}
    latency_ms = latency_ms or {"champion": 5.0, "challenger": 5.0}
    users = np.array([f"user{u}" for u in range(n_users)])
    variants = np.array([assign(user, share, "sim") for user in users])
    p = np.where(variants == "challenger", true_ctr["challenger"], true_ctr["champion"])
    propensity = rng.beta(p * heterogeneity, (1 - p) * heterogeneity)
    counts = rng.integers(1, 2 * per_user, size=n_users)  # 1 .. 2*per_user-1 exposures per user
    row_user = np.repeat(np.arange(n_users), counts)
    nth = np.arange(len(row_user)) - np.repeat(np.cumsum(counts) - counts, counts)
    start = pd.Timestamp(start, tz="UTC")
    ts = start + pd.to_timedelta(row_user * 60 + nth * 10, unit="s")
    row_variant = variants[row_user]
    exposures = pd.DataFrame(
        {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "exposure_id": [f"{experiment_id}-e{u}-{j}" for u, j in zip(row_user, nth)],
            "user_id": users[row_user],
            "variant": row_variant,
            "model_version": np.where(row_variant == "champion", "1", challenger_version),
            "k": 10,
            "cold_start": False,
            "fallback": False,
            "experiment_id": experiment_id,
            "latency_ms": rng.gamma(
                4, np.where(row_variant == "champion", latency_ms["champion"], latency_ms["challenger"]) / 4
            ),
        }
    )
    clicked = rng.random(len(exposures)) < propensity[row_user]
    buy_p = np.where(row_variant == "champion", purchase_given_click["champion"], purchase_given_click["challenger"])
    bought = clicked & (rng.random(len(exposures)) < buy_p)
    click_ts = (ts + pd.Timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    frames = [
        pd.DataFrame(
            {
                "ts": click_ts[mask],
                "user_id": exposures["user_id"][mask],
                "item_id": "i1",
                "event": event,
                "exposure_id": exposures["exposure_id"][mask],
                "variant": exposures["variant"][mask],
            }
        )
        for event, mask in (("click", clicked), ("purchase", bought))
    ]
    return exposures, pd.concat(frames, ignore_index=True)


def write_logs(root: Path, cfg: dict, exposures: pd.DataFrame, feedback: pd.DataFrame) -> None:
    """The simulated events into the project's event store, as the server's rows (items: one list)."""
    store = event_store.open_store({"register": cfg}, root)
    exposures = exposures.assign(items=[["i1"]] * len(exposures))
    with store.engine.begin() as conn:  # one transaction: the server's one-per-event is needlessly slow here
        conn.execute(event_store.exposures.insert(), records(exposures))
        if len(feedback):
            conn.execute(event_store.feedback.insert(), records(feedback))
    store.dispose()


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows with missing values as None (NULL), not NaN."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def test_a_better_challenger_is_detected_and_promoted(tmp_path, cfg):
    exposures, feedback = simulate(4000, {"champion": 0.10, "challenger": 0.13}, seed=1)
    write_logs(tmp_path, cfg, exposures, feedback)
    result = ab_report.run({"register": cfg}, tmp_path, experiment(PLAN_30_PERCENT))
    assert result["decision"] == ab_report.PROMOTE and result["significant"]
    champ, chall = result["variants"]["champion"], result["variants"]["challenger"]
    assert abs(champ["ctr"] - 0.10) < 3 * champ["ctr_se"] and abs(chall["ctr"] - 0.13) < 3 * chall["ctr_se"]
    assert result["test"]["diff_ci"][0] > 0 and all(c["passed"] for c in result["guardrails"])
    assert "PROMOTE" in ab_report.format_report(result)


def test_an_a_a_test_claims_no_difference(tmp_path, cfg):
    exposures, feedback = simulate(30000, {"champion": 0.10, "challenger": 0.10}, seed=2)
    write_logs(tmp_path, cfg, exposures, feedback)
    plan = ab_report.required_exposures(0.10, 0.10, 0.05, 0.8)  # +10% from a 10% CTR: ~14,750 per arm
    result = ab_report.run({"register": cfg}, tmp_path, experiment(plan))
    assert not result["significant"] and result["decision"] == ab_report.KEEP
    assert result["test"]["diff_ci"][0] < 0 < result["test"]["diff_ci"][1]
    assert min(v["exposures"] for v in result["variants"].values()) >= result["required_exposures"]
    assert "no significant difference" in result["reason"]


def test_a_a_false_positive_rate_stays_at_alpha_with_correlated_exposures(cfg):
    """Many A/A experiments: the user-clustered test is wrong about 5% of the time, not more."""
    false_positives = covered = 0
    runs = 200
    for seed in range(runs):
        exposures, feedback = simulate(600, {"champion": 0.2, "challenger": 0.2}, seed=100 + seed, heterogeneity=2.0)
        result = ab_report.analyse(exposures, feedback, cfg, [], experiment(1))
        false_positives += result["significant"]
        low, high = result["variants"]["champion"]["ctr_ci"]
        covered += low <= 0.2 <= high
    # alpha = 0.05; 3 binomial standard deviations above it over 200 runs is 0.096.
    assert false_positives / runs <= 0.096, false_positives
    assert covered / runs >= 0.90, covered  # the 95% interval holds the true CTR (3 sd below 0.95: 0.904)


def test_too_little_traffic_needs_more_data(cfg):
    exposures, feedback = simulate(300, {"champion": 0.10, "challenger": 0.11}, seed=3)
    result = ab_report.analyse(exposures, feedback, cfg, [], experiment(ab_report.planned_exposures(cfg)))
    assert result["decision"] == ab_report.MORE_DATA and not result["significant"]
    assert result["required_exposures"] > max(v["exposures"] for v in result["variants"].values())


def test_a_broken_guardrail_keeps_the_champion(cfg):
    exposures, feedback = simulate(
        4000,
        {"champion": 0.10, "challenger": 0.13},
        seed=4,
        purchase_given_click={"champion": 0.5, "challenger": 0.05},
        latency_ms={"champion": 5.0, "challenger": 40.0},
    )
    result = ab_report.analyse(
        exposures, feedback, cfg, ["purchase_rate", "latency_p99_ms"], experiment(PLAN_30_PERCENT)
    )
    assert result["significant"] and result["decision"] == ab_report.KEEP
    assert {c["name"] for c in result["guardrails"] if not c["passed"]} == {"purchase_rate", "latency_p99_ms"}


def test_feedback_without_exposure_id_goes_to_the_users_latest_exposure():
    ts = ["2026-11-01T00:00:00+00:00", "2026-11-01T00:01:00+00:00", "2026-11-01T00:05:00+00:00"]
    exposures = pd.DataFrame(
        {
            "ts": ts,
            "exposure_id": ["a", "b", "c"],
            "user_id": ["u1", "u1", "u2"],
            "variant": ["champion"] * 3,
            "model_version": ["1"] * 3,
        }
    )
    feedback = pd.DataFrame(
        {
            "ts": ["2026-11-01T00:02:00+00:00", "2026-11-01T00:06:00+00:00"],
            "user_id": ["u1", "u2"],
            "item_id": ["x", "y"],
            "event": ["click", "purchase"],
        }
    )
    out = ab_report.attribute(exposures, feedback).set_index("exposure_id")
    assert out["click"].to_dict() == {"a": False, "b": True, "c": False}
    assert out["purchase"].to_dict() == {"a": False, "b": False, "c": True}


def test_sample_size_matches_the_textbook_formula():
    # Baseline 10%, +10% relative, alpha 0.05 two-sided, power 0.8: about 14,750 per arm.
    assert 14700 < ab_report.required_exposures(0.10, 0.10, 0.05, 0.8) < 14800
    assert ab_report.required_exposures(0.10, 0.10, 0.05, 0.8, design_effect=2.0) > 29000
    assert ab_report.required_exposures(0.0, 0.10, 0.05, 0.8) is None


def test_cli_reports_and_refuses_an_empty_log(tmp_path, capsys, monkeypatch):
    from pipeline_tasks.ops.cli import main

    # mlflow.set_tracking_uri (an earlier test) exports MLFLOW_TRACKING_URI, which wins over params.
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(event_store.URL_ENV, raising=False)

    params = P.defaults()
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    P.dump(params, tmp_path / "params.yaml")
    assert main(["--root", str(tmp_path), "ab-report"]) == 2
    assert "no exposures" in capsys.readouterr().err
    exposures, feedback = simulate(4000, {"champion": 0.10, "challenger": 0.13}, seed=5, experiment_id="exp-cli")
    write_logs(tmp_path, params["register"], exposures, feedback)
    # This store has no champion, so no experiment is running: the report asks for one and names the log's ids.
    assert main(["--root", str(tmp_path), "ab-report"]) == 2
    assert "pass --experiment ID" in (err := capsys.readouterr().err) and "exp-cli (" in err
    assert main(["--root", str(tmp_path), "ab-report", "--experiment", "exp-cli"]) == 0
    out = capsys.readouterr().out
    # Not in the registry, so the plan is params' (baseline CTR 5%: ~31,000 per arm): no decision yet.
    assert "experiment exp-cli (no record in the registry" in out and "INTERIM, not a decision" in out
    assert "decision: NEED MORE DATA" in out and "two-proportion z-test" in out and "exposures per arm" in out


# --- one experiment at a time -----------------------------------------------------------------------


def test_the_report_of_the_current_experiment_counts_only_its_own_exposures(tmp_path, cfg):
    """Challenger v2 (clearly better) ran first, then the nightly run made v3 (no better) challenger:
    a new experiment. Pooled, v2's lead would promote v3; the report of v3's experiment must not see it."""
    old_exp, old_fb = simulate(4000, {"champion": 0.10, "challenger": 0.20}, seed=6, experiment_id="exp-v2")
    new_exp, new_fb = simulate(
        4000,
        {"champion": 0.10, "challenger": 0.10},
        seed=7,
        experiment_id="exp-v3",
        challenger_version="3",
        start="2026-11-02",
    )
    legacy = old_exp.head(50).drop(columns=["experiment_id"]).assign(exposure_id=lambda f: "legacy-" + f["exposure_id"])
    write_logs(tmp_path, cfg, pd.concat([legacy, old_exp, new_exp]), pd.concat([old_fb, new_fb]))
    result = ab_report.run({"register": cfg}, tmp_path, experiment(PLAN_30_PERCENT, "exp-v3"))
    counted = sum(v["exposures"] for v in result["variants"].values())
    assert counted == len(new_exp)
    assert result["variants"]["challenger"]["model_versions"] == ["3"]
    assert (
        result["variants"]["challenger"]["clicks"] + result["variants"]["champion"]["clicks"]
        == (new_fb["event"] == "click").sum()
    )
    assert result["decision"] == ab_report.KEEP and not result["significant"]
    assert result["other_experiments"] == {"exp-v2": len(old_exp), ab_report.NO_EXPERIMENT: 50}
    report = ab_report.format_report(result)
    assert "exp-v2 (" in report and "50 exposures carry no experiment id" in report


def test_fallback_exposures_are_counted_apart_and_not_credited_to_the_model(cfg):
    exposures, feedback = simulate(4000, {"champion": 0.10, "challenger": 0.13}, seed=8)
    # A broken challenger: some of its answers were the cold-start list, and users clicked those too.
    rng = np.random.default_rng(8)
    broken = (exposures["variant"] == "challenger") & (rng.random(len(exposures)) < 0.2)
    exposures.loc[broken, "fallback"] = True
    fallback_clicks = pd.DataFrame(
        {
            "ts": exposures.loc[broken, "ts"],
            "user_id": exposures.loc[broken, "user_id"],
            "item_id": "popular-item",
            "event": "click",
            "exposure_id": exposures.loc[broken, "exposure_id"],
        }
    )
    result = ab_report.analyse(
        exposures, pd.concat([feedback, fallback_clicks], ignore_index=True), cfg, [], experiment(PLAN_30_PERCENT)
    )
    chall = result["variants"]["challenger"]
    model_served = exposures[(exposures["variant"] == "challenger") & ~broken]
    model_clicks = feedback[(feedback["event"] == "click") & feedback["exposure_id"].isin(model_served["exposure_id"])]
    assert result["fallback_exposures"] == {"challenger": int(broken.sum())}
    assert chall["exposures"] == len(model_served) and chall["clicks"] == len(model_clicks)
    assert chall["ctr"] == pytest.approx(len(model_clicks) / len(model_served))
    assert f"challenger {int(broken.sum())}" in ab_report.format_report(result)


def test_a_significant_difference_before_the_planned_size_is_no_decision(cfg):
    """No peeking: p < alpha on the way is reported as interim, the call waits for the plan."""
    exposures, feedback = simulate(4000, {"champion": 0.10, "challenger": 0.13}, seed=9)
    early = ab_report.analyse(exposures, feedback, cfg, [], experiment(50_000))
    assert early["significant"] and early["decision"] == ab_report.MORE_DATA
    assert "interim, not a decision" in early["reason"] and "of " in early["reason"]
    assert "INTERIM, not a decision" in ab_report.format_report(early)
    done = ab_report.analyse(exposures, feedback, cfg, [], experiment(PLAN_30_PERCENT))
    assert done["decision"] == ab_report.PROMOTE


def arm(exposures: int, ctr: float) -> dict:
    """A variant's numbers with no clustering (design effect 1): the plan applies as is."""
    se = float(np.sqrt(ctr * (1 - ctr) / exposures))
    return {"exposures": exposures, "ctr": ctr, "ctr_se": se, "design_effect": 1.0}


@pytest.mark.parametrize(
    "have, decision", [(9_999, ab_report.MORE_DATA), (10_000, ab_report.PROMOTE), (12_000, ab_report.PROMOTE)]
)
def test_the_decision_comes_exactly_at_the_planned_size(cfg, have, decision):
    stats = {"champion": arm(have, 0.10), "challenger": arm(have, 0.13)}
    result = ab_report.decide(stats, [], cfg, planned=10_000)
    assert result["significant"] and result["decision"] == decision and result["required_exposures"] == 10_000


def test_the_plan_comes_from_the_baseline_ctr_in_params(cfg):
    cfg = {**cfg, "ab_baseline_ctr": 0.10, "ab_mde": 0.10}
    assert ab_report.planned_exposures(cfg) == ab_report.required_exposures(0.10, 0.10, 0.05, 0.8)
    planned, basis = ab_report.experiment_plan({"id": "x"}, cfg)
    assert planned == ab_report.planned_exposures(cfg) and "from params now" in basis
    assert ab_report.experiment_plan({"id": "x", "planned_exposures_per_arm": 123, "plan_basis": "b"}, cfg) == (
        123,
        "b",
    )
