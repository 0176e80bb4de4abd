"""Audited alias moves in the MLflow registry: promote, rollback, history, and the A/B config.

Aliases: `champion` (what serves), `challenger` (the last registered version), and
`previous_champion` (where `rollback` goes). Every move is audited twice, inside the
registry itself so any client of the store sees it:
- version tags on the versions involved (`champion.promoted_at/by/reason`, `champion.retired_at`);
- an append-only history: one registered-model tag per event, `recpipe.audit.<UTC time>.<random>`,
  whose value is the event as JSON. A tag per event (rather than one growing JSON list) is
  written in one call, never rewritten, and two writers can never overwrite each other's
  event; sorting the keys gives the time order.

Consistency: an alias points at exactly one version, so "two champions" cannot exist; the
danger is a half-done move. `move_champion` writes `previous_champion` first (servers never
read it), then `champion` (one row: the commit point), then the audit. If anything after the
commit point fails, it puts both aliases back and re-raises, so a failure at any step leaves
either the old state or the complete new one — never no champion when there was one.

The A/B configuration (challenger share, bucketing salt, guardrail metrics, planned exposures per
arm) is one registered-model tag (`recpipe.ab`, JSON), next to the aliases, so every server sees
the same split.

The experiment: champion version, challenger version, share, salt and the planned sample size,
with an id and a start time, in one registered-model tag (`recpipe.experiment`, JSON). Every
action here that changes one of those parts (set_challenger, promote, rollback, set_ab_config)
starts a new one (new id, new start), audited just before the action's own event, so the
action's event stays its last write. A failed action puts the old record back with the old
aliases. Servers log the id with every exposure so `recpipe ab-report` never pools two of them;
a record that does not name the aliased versions (an alias moved by hand) is not used:
`served_experiment` derives an `unrecorded-` id from what is served instead.

Longer than most modules on purpose: every alias move and its audit trail live together, so the
all-or-nothing rule of a move can be read (and reviewed) in one place.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import tracking
from pipeline_tasks.core.errors import PipelineError, TransientError

log = logging.getLogger("recpipe.registry")
AUDIT_PREFIX = "recpipe.audit."
AB_TAG = "recpipe.ab"
EXPERIMENT_TAG = "recpipe.experiment"
# What defines an experiment: a change of any of these starts a new one.
EXPERIMENT_PARTS = ("champion", "challenger", "share", "salt", "planned_exposures_per_arm")
# What decides which model a user sees: a record that disagrees on these is not what is served.
SERVED_PARTS = ("champion", "challenger", "share", "salt")
HEADLINE_TAG = "metric.ndcg_at_10"  # written by register (tracking.metric_key("metric.ndcg@10"))


class RegistryError(PipelineError):
    """An alias move was refused or failed; the message says what state the registry is in."""


class RegistryUnavailable(TransientError):
    """The registry could not be read (not: the model does not exist). Retry; never read as "no champion"."""


# promote()'s expected_champion when the caller does not check what the champion is.
ANY_CHAMPION = object()


# --- small readers ---------------------------------------------------------------------------


def client_for(params: dict, root: str | Path = "."):
    """An MlflowClient on this project's store (the experiment is created if missing)."""
    from mlflow import MlflowClient

    tracking.setup(params, root)
    return MlflowClient()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def actor(explicit: str | None = None) -> str:
    """Who moves an alias: --actor, else the Airflow DAG run (from its task env), else the OS user."""
    if explicit:
        return explicit
    # RECPIPE_DAG_* are exported by our DAGs into stage processes; AIRFLOW_CTX_* exist inside a task.
    dag = os.environ.get("RECPIPE_DAG_ID") or os.environ.get("AIRFLOW_CTX_DAG_ID")
    run = os.environ.get("RECPIPE_DAG_RUN_ID") or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if dag:
        return f"airflow:{dag}/{run or '?'}"
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


def aliases(client, name: str) -> dict[str, str]:
    """{alias: version} of the registered model; {} only when the model does not exist yet.

    Any other failure (a locked SQLite file, an HTTP 5xx, a timeout) raises RegistryUnavailable:
    read as "no champion", a blink would let the gate apply the first-run rule and replace the
    live champion.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise unavailable(name, err) from err
    except Exception as err:  # noqa: BLE001 - a driver error (sqlite3 / SQLAlchemy / HTTP) under the client
        raise unavailable(name, err) from err
    return {a: str(v) for a, v in model.aliases.items()}


def unavailable(name: str, err: Exception) -> RegistryUnavailable:
    return RegistryUnavailable(
        f"could not read the aliases of {name!r} from the MLflow registry ({type(err).__name__}: "
        f"{str(err)[:300]}); nothing was changed. The store may be busy or down: the task is retried; "
        "if it keeps failing, check the MLflow server / database (mlflow.tracking_uri)"
    )


def require_model(client, name: str) -> Any:
    try:
        return client.get_registered_model(name)
    except Exception as err:  # noqa: BLE001
        raise RegistryError(
            f"no registered model {name!r} in this MLflow store: run the pipeline "
            "(`make run`) to register one, or check mlflow.tracking_uri"
        ) from err


def require_version(client, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except Exception as err:  # noqa: BLE001
        known = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
        raise RegistryError(
            f"{name} has no version {version!r} (versions: {known}); pick one from `recpipe history` or the MLflow UI"
        ) from err


def registered_artifact(name: str, version: str, key: str, dest: Path) -> Path | None:
    """One artifact of a registered version (C.MODEL_ARTIFACT, C.WEIGHTS_ARTIFACT, ...), downloaded
    alone under dest; None when the version has no artifact of that name. Its path inside the version
    comes from the version's MLmodel file (MLflow decides it: artifacts sharing a folder name get nested),
    so neither the gate nor the warm start assumes a layout, nor downloads the whole model to read one part."""
    import mlflow
    import yaml

    uri = f"models:/{name}/{version}"
    mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/MLmodel", dst_path=str(dest / "MLmodel.d"))
    flavor = (yaml.safe_load(Path(mlmodel).read_text(encoding="utf-8")) or {}).get("flavors", {})
    artifacts = flavor.get("python_function", {}).get("artifacts") or {}
    if key not in artifacts:
        return None
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{artifacts[key]['path']}", dst_path=str(dest)))


def headline(client, name: str, version: str | None) -> float | None:
    """NDCG@10 a version recorded when it was registered (its own run's test split)."""
    if version is None:
        return None
    value = client.get_model_version(name, version).tags.get(HEADLINE_TAG)
    return float(value) if value not in (None, "") else None


# --- the audit history -------------------------------------------------------------------------


def append_audit(client, name: str, event: dict) -> str:
    """Append one event to the registered model's history; returns its tag key."""
    key = f"{AUDIT_PREFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.{uuid.uuid4().hex[:6]}"
    client.set_registered_model_tag(name, key, json.dumps(event, sort_keys=True))
    return key


def history(client, name: str) -> list[dict]:
    """Every audited event, oldest first."""
    tags = require_model(client, name).tags
    return [json.loads(tags[key]) for key in sorted(k for k in tags if k.startswith(AUDIT_PREFIX))]


def format_history(events: list[dict], current: dict[str, str]) -> str:
    """The champion's whole history, one line per event, then the aliases now."""
    lines = [
        f"{'when (UTC)':<27} {'action':<16} {'alias':<12} {'from':>5} -> {'to':<5} {'by':<24} "
        f"{'NDCG@10 delta':>13}  why"
    ]
    for e in events:
        delta = (e.get("metrics") or {}).get("ndcg@10", {}).get("delta")
        lines.append(
            f"{e.get('at', '')[:26]:<27} {e.get('action', ''):<16} {e.get('alias', ''):<12} "
            f"{str(e.get('from_version') or '-'):>5} -> {str(e.get('to_version') or '-'):<5} "
            f"{str(e.get('actor', ''))[:24]:<24} {'' if delta is None else f'{delta:+.4f}':>13}  "
            f"{'[FORCED] ' if e.get('forced') else ''}{e.get('reason', '')}"
        )
    lines.append("aliases now: " + (", ".join(f"{a}=v{v}" for a, v in sorted(current.items())) or "none"))
    return "\n".join(lines)


def metric_deltas(client, name: str, from_version: str | None, to_version: str, gate: dict | None) -> dict:
    """NDCG@10 of both ends of a move: the gate's re-scored numbers when there are some, else as registered."""
    if gate and gate.get("champion_ndcg") is not None and str(gate.get("champion_version")) == str(from_version):
        before, after, source = gate["champion_ndcg"], gate["challenger_ndcg"], "gate re-score on one test split"
    else:
        before, after = headline(client, name, from_version), headline(client, name, to_version)
        source = "as registered (each on its own run's test split)"
    delta = after - before if before is not None and after is not None else None
    return {"ndcg@10": {"from": before, "to": after, "delta": delta, "source": source}}


# --- alias moves -----------------------------------------------------------------------------


def set_or_delete_alias(client, name: str, alias: str, version: str | None) -> None:
    if version is None:
        from mlflow.exceptions import MlflowException

        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException as err:  # deleting an alias that does not exist is fine; anything else is not
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    else:
        client.set_registered_model_alias(name, alias, str(version))


def move_champion(client, name: str, to_version: str, new_previous: str | None, event: dict) -> dict:
    """Point `champion` at to_version and `previous_champion` at new_previous, audited, all or nothing.

    Order: previous_champion (no server reads it), champion (the commit point), the version
    tags, the new experiment, then the audit. A failure after the commit point restores both
    aliases and the experiment record that names them.
    """
    before = aliases(client, name)
    old_champion, old_previous = before.get(C.ALIAS_CHAMPION), before.get(C.ALIAS_PREVIOUS_CHAMPION)
    saved, written = saved_tags(client, name, EXPERIMENT_TAG), []
    try:
        set_or_delete_alias(client, name, C.ALIAS_PREVIOUS_CHAMPION, new_previous)
        client.set_registered_model_alias(name, C.ALIAS_CHAMPION, str(to_version))
        stamp = event["at"]
        client.set_model_version_tag(name, str(to_version), "champion.promoted_at", stamp)
        client.set_model_version_tag(name, str(to_version), "champion.promoted_by", event["actor"])
        client.set_model_version_tag(name, str(to_version), "champion.reason", event["reason"][:5000])
        if old_champion and old_champion != str(to_version):
            client.set_model_version_tag(name, old_champion, "champion.retired_at", stamp)
        restart_experiment(client, name, event, written)
        written.append(append_audit(client, name, event))
    except Exception as err:
        restored = restore_aliases(client, name, old_champion, old_previous)
        forget_move_tags(client, name, str(to_version), old_champion)
        restored = put_tags_back(client, name, saved, written) and restored
        state = (
            f"aliases and experiment restored (champion=v{old_champion or '-'})"
            if restored
            else "could not restore everything; champion is unchanged or the new one, and servers log an "
            "`unrecorded-` experiment until the record matches the aliases; check `recpipe history`"
        )
        raise RegistryError(
            f"{event['action']} to v{to_version} failed midway ({type(err).__name__}: {err}); "
            f"{state}. Fix the store and run the command again."
        ) from err
    return event


def restore_aliases(client, name: str, champion: str | None, previous: str | None) -> bool:
    """Put champion (first: servers read it) and previous_champion back; False if a write failed."""
    try:
        if champion is not None:
            client.set_registered_model_alias(name, C.ALIAS_CHAMPION, champion)
        set_or_delete_alias(client, name, C.ALIAS_PREVIOUS_CHAMPION, previous)
        return True
    except Exception:  # noqa: BLE001 - report, the original error is re-raised by the caller
        return False


def forget_move_tags(client, name: str, to_version: str, old_champion: str | None) -> None:
    """Remove the version tags of a move that was undone (best effort: they are documentation)."""
    tags = [(to_version, k) for k in ("champion.promoted_at", "champion.promoted_by", "champion.reason")]
    if old_champion and old_champion != to_version:
        tags.append((old_champion, "champion.retired_at"))
    for version, key in tags:
        try:
            client.delete_model_version_tag(name, version, key)
        except Exception as err:  # noqa: BLE001 - absent tag, or the store is still down
            log.info("tag %s of %s v%s not removed (%s); it only documents an undone move", key, name, version, err)


def gate_passed_against(version_tags: dict, champion: str | None) -> bool:
    """Did this version pass the gate against the champion that is current *now*?"""
    return version_tags.get("gate.passed") == "true" and version_tags.get("gate.champion_version", "") == (
        champion or ""
    )


def promote(
    client,
    name: str,
    version: str,
    reason: str | None = None,
    who: str | None = None,
    gate: dict | None = None,
    expected_champion: Any = ANY_CHAMPION,
) -> dict:
    """Make `version` the champion (the old one becomes previous_champion).

    Without a passed gate against the current champion, `reason` is required and the move
    is recorded as forced. `expected_champion` (a version, or None for "no champion"): the
    champion the caller's gate compared against; if another is champion now, nothing moves.
    """
    require_model(client, name)
    target = require_version(client, name, str(version))
    version = str(target.version)
    current = aliases(client, name).get(C.ALIAS_CHAMPION)
    if expected_champion is not ANY_CHAMPION and current != expected_champion:
        raise RegistryError(
            f"not promoted: the champion moved since the gate read it (the gate compared v{version} against "
            f"v{expected_champion or '-'}, the champion is now v{current or '-'}), so its verdict is stale. "
            f"v{version} stays challenger; the next run gates against the new champion, or promote it by hand "
            "with `recpipe promote VERSION --reason TEXT`"
        )
    if current == version:
        raise RegistryError(f"v{version} is already the champion of {name}; nothing to do")
    passed = gate_passed_against(target.tags, current) if gate is None else bool(gate.get("passed"))
    if not passed and not reason:
        summary = target.tags.get("gate.summary", "no gate result recorded")
        raise RegistryError(
            f"v{version} did not pass the gate against the current champion "
            f"v{current or '-'} ({summary}); a forced promotion needs --reason TEXT, which is recorded"
        )
    gate_summary = (gate or {}).get("summary") or target.tags.get("gate.summary", "")
    event = {
        "at": now(),
        "action": "first_champion" if current is None else "promote",
        "alias": C.ALIAS_CHAMPION,
        "from_version": current,
        "to_version": version,
        "actor": actor(who),
        "reason": reason or f"gate passed: {gate_summary}",
        "forced": not passed,
        "gate_passed": passed,
        "gate": gate_summary,
        "metrics": metric_deltas(client, name, current, version, gate),
    }
    return move_champion(client, name, version, current, event)


def earlier_champion(events: list[dict], version: str) -> str | None:
    """The champion before `version` last became champion (where a second rollback would go)."""
    for e in reversed(events):
        if e.get("alias") == C.ALIAS_CHAMPION and str(e.get("to_version")) == version:
            previous = e.get("from_version")
            return str(previous) if previous not in (None, version) else None
    return None


def rollback(client, name: str, reason: str | None = None, who: str | None = None, check=None) -> dict:
    """Champion back to previous_champion, after `check(name, version)` proves that version loads and answers."""
    require_model(client, name)
    now_aliases = aliases(client, name)
    current, target = now_aliases.get(C.ALIAS_CHAMPION), now_aliases.get(C.ALIAS_PREVIOUS_CHAMPION)
    if target is None:
        raise RegistryError(
            f"{name} has no previous_champion to roll back to; use `recpipe promote VERSION "
            "--reason TEXT` to pick a version (see `recpipe history`)"
        )
    if target == current:
        raise RegistryError(
            f"previous_champion and champion are both v{target}; pick a version with "
            "`recpipe promote VERSION --reason TEXT`"
        )
    (check or load_check)(client, name, target)
    event = {
        "at": now(),
        "action": "rollback",
        "alias": C.ALIAS_CHAMPION,
        "from_version": current,
        "to_version": target,
        "actor": actor(who),
        "reason": reason or "rollback",
        "forced": True,
        "gate_passed": None,
        "metrics": metric_deltas(client, name, current, target, None),
    }
    return move_champion(client, name, target, earlier_champion(history(client, name), target), event)


def load_check(client, name: str, version: str) -> None:
    """Load the version as a server would and ask it for 5 items for a known user."""
    import mlflow
    import pandas as pd

    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        inner = model.unwrap_python_model()
        user = next(iter(inner.histories), "unknown-user")
        out = model.predict(pd.DataFrame({"user_id": [user], "k": [5]}))
        items = list(out.loc[0, "item_ids"])
    except Exception as err:  # noqa: BLE001 - any failure means "do not serve this version"
        raise RegistryError(
            f"v{version} of {name} fails its load check ({type(err).__name__}: {err}); "
            "the champion was not moved. Promote another version with "
            "`recpipe promote VERSION --reason TEXT`"
        ) from err
    if not items:
        raise RegistryError(f"v{version} of {name} loads but recommends nothing for user {user!r}; champion not moved")


def set_challenger(client, name: str, version: str, reason: str, who: str | None = None) -> dict:
    """Point `challenger` at a newly registered version (a new experiment), audited, all or nothing."""
    before = aliases(client, name).get(C.ALIAS_CHALLENGER)
    event = {
        "at": now(),
        "action": "register",
        "alias": C.ALIAS_CHALLENGER,
        "from_version": before,
        "to_version": str(version),
        "actor": actor(who),
        "reason": reason,
        "forced": False,
    }
    saved, written = saved_tags(client, name, EXPERIMENT_TAG), []
    try:
        client.set_registered_model_alias(name, C.ALIAS_CHALLENGER, str(version))
        restart_experiment(client, name, event, written)
        written.append(append_audit(client, name, event))
    except Exception:
        # Undone so no record names a challenger that is not aliased; the caller sees the original error.
        try:
            set_or_delete_alias(client, name, C.ALIAS_CHALLENGER, before)
        except Exception as undo_err:  # noqa: BLE001 - the store is down: servers fall back to an unrecorded id
            log.warning("could not put alias %s of %s back to %s (%s)", C.ALIAS_CHALLENGER, name, before, undo_err)
        put_tags_back(client, name, saved, written)
        raise
    return event


# --- the experiment ----------------------------------------------------------------------------


def experiment(client, name: str) -> dict | None:
    """The stored experiment record, or None (no champion yet, or written before experiments existed)."""
    raw = aliases_tags(client, name).get(EXPERIMENT_TAG)
    return json.loads(raw) if raw else None


def experiment_parts(client, name: str) -> dict:
    """The experiment the registry defines right now: aliases plus the A/B config."""
    now_aliases, ab = aliases(client, name), ab_config(client, name)
    return {
        "champion": now_aliases.get(C.ALIAS_CHAMPION),
        "challenger": now_aliases.get(C.ALIAS_CHALLENGER),
        "share": float(ab.get("share", 0.0)),
        "salt": str(ab.get("salt", "")),
        "planned_exposures_per_arm": ab.get("planned_exposures_per_arm"),
        "plan_basis": ab.get("plan_basis"),
    }


def restart_experiment(client, name: str, cause: dict, written: list[str]) -> dict | None:
    """Start a new experiment if `cause` (an action's event) changed one of its parts.

    The new id goes into `cause` (its audit event names it); the audit key of the restart is
    appended to `written` so a failed action can remove it. Without a champion nothing is
    served, so there is no experiment: an old record is removed.
    """
    parts, old = experiment_parts(client, name), experiment(client, name)
    if parts["champion"] is None:
        if old is not None:
            client.delete_registered_model_tag(name, EXPERIMENT_TAG)
        return None
    if old is not None and all(old.get(k) == parts[k] for k in EXPERIMENT_PARTS):
        return None
    record = {
        "id": secrets.token_hex(4),
        **parts,
        "started_at": cause["at"],
        "started_by": cause["actor"],
        "reason": f"{cause['action']}: {cause.get('reason', '')}"[:1000],
    }
    client.set_registered_model_tag(name, EXPERIMENT_TAG, json.dumps(record, sort_keys=True))
    cause["experiment_id"] = record["id"]
    written.append(append_audit(client, name, experiment_event(record, old)))
    return record


def experiment_event(record: dict, old: dict | None) -> dict:
    plan = record["planned_exposures_per_arm"]
    return {
        "at": record["started_at"],
        "action": "experiment",
        "alias": "",
        "from_version": None,
        "to_version": None,
        "actor": record["started_by"],
        "forced": False,
        "reason": f"experiment {record['id']} (was {(old or {}).get('id', '-')}): champion v{record['champion']} "
        f"vs challenger v{record['challenger'] or '-'}, share {record['share']:g}, salt {record['salt'] or '-'}, "
        f"plan {plan or '?'} exposures/arm",
        "experiment": record,
    }


def experiments(client, name: str) -> list[dict]:
    """Every experiment ever started (from the audit history), oldest first."""
    return [e["experiment"] for e in history(client, name) if e.get("action") == "experiment" and "experiment" in e]


def served_experiment(record: dict | None, champion: str, challenger: str | None, ab: dict) -> dict:
    """The experiment a server runs: `record` when it names what the aliases serve, else an unrecorded one.

    An alias moved by hand (MLflow UI) bypasses the restart; the id is then derived from the
    served versions, share and salt, so every server agrees on it and the report never pools it.
    """
    parts = {"champion": champion, "challenger": challenger, "share": float(ab.get("share", 0.0))}
    parts["salt"] = str(ab.get("salt", ""))
    if record is not None and all(record.get(k) == parts[k] for k in SERVED_PARTS):
        return {**record, "recorded": True}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return {
        "id": f"unrecorded-{digest}",
        **parts,
        "planned_exposures_per_arm": ab.get("planned_exposures_per_arm"),
        "plan_basis": ab.get("plan_basis"),
        "recorded": False,
        "stored_id": (record or {}).get("id"),
    }


def current_experiment(client, name: str) -> dict | None:
    """What servers run now (see served_experiment); None without a champion."""
    now_aliases = aliases(client, name)
    champion = now_aliases.get(C.ALIAS_CHAMPION)
    if champion is None:
        return None
    challenger = now_aliases.get(C.ALIAS_CHALLENGER)
    return served_experiment(experiment(client, name), champion, challenger, ab_config(client, name))


def saved_tags(client, name: str, *keys: str) -> dict[str, str | None]:
    tags = aliases_tags(client, name)
    return {key: tags.get(key) for key in keys}


def put_tags_back(client, name: str, saved: dict[str, str | None], audit_keys: list[str]) -> bool:
    """Undo a failed action's tag writes (best effort); False if some write failed."""
    ok = True
    for key, value in [*saved.items(), *((key, None) for key in audit_keys)]:
        try:
            if value is None:  # absent before (deleting an absent tag is not an error)
                client.delete_registered_model_tag(name, key)
            else:
                client.set_registered_model_tag(name, key, value)
        except Exception:  # noqa: BLE001 - the store is still down: report, the caller raises
            ok = False
    return ok


# --- A/B configuration -------------------------------------------------------------------------


def ab_config(client, name: str) -> dict:
    """{share, salt, guardrails, ...}; share 0 (everyone on champion) until `recpipe ab` sets one."""
    raw = aliases_tags(client, name).get(AB_TAG)
    return json.loads(raw) if raw else {"share": 0.0, "salt": "", "guardrails": []}


def aliases_tags(client, name: str) -> dict[str, str]:
    try:
        return dict(client.get_registered_model(name).tags)
    except Exception:  # noqa: BLE001
        return {}


def set_ab_config(
    client,
    name: str,
    share: float,
    salt: str | None = None,
    guardrails: list[str] | None = None,
    who: str | None = None,
    reason: str | None = None,
    planned_exposures: int | None = None,
    plan_basis: str | None = None,
) -> dict:
    """Store the split in the registry (one tag write); an omitted salt, guardrails or plan keeps the current one.

    A change of share, salt or plan starts a new experiment; guardrails alone do not (they are
    how the report judges, not what users see).
    """
    if not 0.0 <= share <= 1.0:
        raise RegistryError(f"--share must be between 0 and 1 (the challenger's share of users), got {share}")
    if planned_exposures is not None and planned_exposures < 1:
        raise RegistryError(
            f"--planned-exposures must be a positive number of exposures per arm, got {planned_exposures}"
        )
    require_model(client, name)
    old = ab_config(client, name)
    keep_plan = planned_exposures is None
    config = {
        "share": float(share),
        "salt": salt or old.get("salt") or secrets.token_hex(4),
        "guardrails": list(guardrails if guardrails is not None else old.get("guardrails", [])),
        "planned_exposures_per_arm": old.get("planned_exposures_per_arm") if keep_plan else int(planned_exposures),
        "plan_basis": old.get("plan_basis") if keep_plan else (plan_basis or "set by hand"),
        "updated_at": now(),
        "updated_by": actor(who),
    }
    event = {
        "at": config["updated_at"],
        "action": "ab_config",
        "alias": "",
        "actor": config["updated_by"],
        "from_version": None,
        "to_version": None,
        "forced": False,
        "reason": reason or f"share {old.get('share', 0.0):g} -> {share:g}, salt {config['salt']}",
    }
    saved, written = saved_tags(client, name, AB_TAG, EXPERIMENT_TAG), []
    try:
        client.set_registered_model_tag(name, AB_TAG, json.dumps(config, sort_keys=True))
        restart_experiment(client, name, event, written)
        written.append(append_audit(client, name, event))
    except Exception:
        put_tags_back(client, name, saved, written)  # the old split and its experiment, together
        raise
    return config
