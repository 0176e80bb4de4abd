"""Shared Great Expectations (1.x) machinery of the two validation gates.

A gate (`validate_raw`, `validate_clean`) hands this module one `TableBatch` per table:
a Spark DataFrame plus the `Check`s to run on it. Each check is one GX expectation with
a name; params `<gate>.severity.<name>` says whether a failure stops the run (`fail`),
is only reported (`warn`) or the check is skipped (`off`). Every table is validated by
one suite in one checkpoint run (each run costs Spark jobs and a Data Docs render, so
the expectations of a table are batched), the Data Docs site under reports/gx/ is
updated, and a `fail` raises DataValidationError naming each failed check, what was
observed, the threshold, and the Data Docs page to open.

The GX project itself (suites, checkpoints, stored results) lives in `<root>/gx`.

Longer than most modules on purpose: all of the Great Expectations glue (contexts, suites, Data
Docs, severities, the gate's verdict) in one place, so a GX upgrade touches one file.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import tracking
from pipeline_tasks.core.errors import DataValidationError, ParamsError, PipelineError

SEVERITIES = ("fail", "warn", "off")
DATASOURCE = "recpipe_spark"
DOCS_SITE = "recpipe"
DEFAULT_GX_SITE = "local_site"  # the site every new GX project gets; we build ours instead
BATCH_DEFINITION = "whole_dataframe"
RESULT_FORMAT = "SUMMARY"  # keeps a few unexpected values: the failure message shows them
EXAMPLES_IN_MESSAGE = 3


@dataclass(frozen=True)
class Check:
    """One named expectation; `threshold` says in words what passing means."""

    name: str
    expectation: Any  # a great_expectations.expectations.Expectation
    threshold: str
    columns: tuple[str, ...] = ()  # columns it needs; skipped (and reported) when one is absent


@dataclass
class TableBatch:
    """The checks of one table and the DataFrame they run on."""

    table: str
    frame: Any  # pyspark.sql.DataFrame
    checks: list[Check] = field(default_factory=list)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check (a GX expectation, or a drift comparison made in drift.py)."""

    name: str
    table: str  # the table it ran on; "drift" for the comparisons with the previous version
    expectation: str  # the GX expectation type, or what a drift check compared with
    severity: str
    success: bool
    observed: str
    threshold: str

    def line(self) -> str:
        return (
            f"{self.name} [{self.expectation} on {self.table}]: observed {self.observed}; threshold: {self.threshold}"
        )


@dataclass
class GateRun:
    """What the GX suites of one gate found, before the gate decides whether to stop the run."""

    results: list[CheckResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # checks whose column is absent
    pages: dict[str, Path] = field(default_factory=dict)  # table -> its Data Docs page


# --- checks every gate uses -----------------------------------------------------------


def columns_present(table: str, columns: list[str]) -> Check:
    E = import_gx().expectations
    return Check(
        name=f"{table}_columns_present",
        expectation=E.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=False),
        threshold=f"columns {columns} present (others allowed)",
    )


def not_null(table: str, column: str, max_null_share: float = 0.0) -> Check:
    """Value expectations skip nulls, so every column they check is null-checked on its own."""
    E = import_gx().expectations
    threshold = f"no null {column}" if max_null_share == 0 else f"at most {max_null_share:.2%} of {column} null"
    return Check(
        name=f"{table}_{column}_not_null",
        expectation=E.ExpectColumnValuesToNotBeNull(column=column, mostly=1.0 - max_null_share),
        threshold=threshold,
        columns=(column,),
    )


# --- GX objects -----------------------------------------------------------------------


def import_gx():
    """great_expectations, imported with analytics off (the import alone would phone home)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def docs_dir(root: Path) -> Path:
    return root / C.REPORTS_DIR / "gx"


def open_context(root: Path):
    """The file-backed GX project at root/gx, its Data Docs site pointed at root/reports/gx."""
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(root))
    # Relative to the GX project dir (root/gx), so the project can be moved with its root.
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": os.path.relpath(docs_dir(root), Path(context.root_directory)),
        },
    }
    sites = context.list_data_docs_sites()
    # Each change rewrites great_expectations.yml: change only what differs from the wanted state.
    if DEFAULT_GX_SITE in sites:
        context.delete_data_docs_site(DEFAULT_GX_SITE)
    if DOCS_SITE not in sites:
        context.add_data_docs_site(DOCS_SITE, site)
    elif sites[DOCS_SITE] != site:
        context.update_data_docs_site(DOCS_SITE, site)
    # GX's per-metric progress bars flood the log; the gate shows one bar per table instead.
    bars = context.variables.progress_bars
    if bars is None or bars["globally"]:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()
    return context


def batch_definition(context, asset_name: str):
    """The whole-DataFrame batch definition of one asset (created on the first run).

    The datasource is fetched, not add_or_update'd: replacing it would drop the assets of
    the other tables and gate, and their stored validation definitions would dangle.
    """
    try:
        datasource = context.data_sources.get(DATASOURCE)
    except KeyError:
        datasource = context.data_sources.add_or_update_spark(name=DATASOURCE)
    try:
        asset = datasource.get_asset(asset_name)
    except LookupError:
        asset = datasource.add_dataframe_asset(name=asset_name)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def build_checkpoint(context, gate: str, table: str, checks: list[Check], severities: dict[str, str]):
    """Suite + validation definition + checkpoint (with the Data Docs action) of one table."""
    gx = import_gx()
    from great_expectations.checkpoint import UpdateDataDocsAction

    name = f"{gate}_{table}"
    expectations = []
    for check in checks:
        expectation = check.expectation
        expectation.meta = {"check": check.name, "severity": severities[check.name], "threshold": check.threshold}
        expectations.append(expectation)
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_definition(context, name), suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
            result_format=RESULT_FORMAT,
        )
    )


# --- running a gate -------------------------------------------------------------------


def severities_of(gate_params: dict, gate: str) -> dict[str, str]:
    """`<gate>.severity` checked: every value is fail, warn or off."""
    severities = dict(gate_params["severity"])
    for name, severity in severities.items():
        if severity not in SEVERITIES:
            raise ParamsError(f"'{gate}.severity.{name}' is {severity!r}; use one of {', '.join(SEVERITIES)}")
    return severities


def runnable(batch: TableBatch, severities: dict[str, str]) -> tuple[list[Check], list[str]]:
    """The checks to run on a batch, and the names of those skipped for a missing column."""
    present = set(batch.frame.columns)
    to_run, skipped = [], []
    for check in batch.checks:
        assert check.name in severities, f"check {check.name} has no default severity in params.DEFAULTS"
        if severities[check.name] == "off":
            continue
        if set(check.columns) - present:
            skipped.append(check.name)
        else:
            to_run.append(check)
    return to_run, skipped


def validate_table(
    context, gate: str, batch: TableBatch, checks: list[Check], severities: dict[str, str]
) -> tuple[list[CheckResult], Path | None]:
    """Run one table's suite on its DataFrame; return the results and its Data Docs page."""
    checkpoint = build_checkpoint(context, gate, batch.table, checks, severities)
    frame = batch.frame.cache()  # GX scans the frame once per metric bundle
    try:
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    finally:
        frame.unpersist()
    by_name = {check.name: check for check in checks}
    results: list[CheckResult] = []
    page = None
    for identifier, suite_result in outcome.run_results.items():
        page = docs_page(context, identifier)
        for result in suite_result.results:
            name = result.expectation_config.meta["check"]
            results.append(
                CheckResult(
                    name=name,
                    table=batch.table,
                    expectation=result.expectation_config.type,
                    severity=severities[name],
                    success=bool(result.success),
                    observed=describe_observed(result),
                    threshold=by_name[name].threshold,
                )
            )
    return results, page


def docs_page(context, identifier) -> Path | None:
    """The HTML page of one validation result on our Data Docs site."""
    urls = context.get_docs_sites_urls(resource_identifier=identifier, site_name=DOCS_SITE)
    url = urls[0]["site_url"] if urls else None
    if not url:
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).resolve()


def describe_observed(result) -> str:
    """What GX saw, in one line: an exception, the unexpected rows, missing columns or a value."""
    info = result.exception_info or {}
    raised = (
        [info]
        if info.get("raised_exception")
        else [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    )
    if raised:
        return f"error: {raised[0].get('exception_message')}"
    detail = result.result or {}
    missing = detail.get("details", {}).get("mismatched", {}).get("missing")
    if missing:
        return f"missing columns {missing} (present: {detail.get('observed_value')})"
    if detail.get("unexpected_count") is None:  # an aggregate (min, row count), or nothing to count
        observed = detail.get("observed_value")
        return "nothing to measure: no rows" if observed is None else short(observed)
    count, total = detail["unexpected_count"], detail.get("element_count") or 0
    text = f"{count} of {total} rows ({100.0 * count / max(total, 1):.2f}%)"
    examples = [short(v) for v in (detail.get("partial_unexpected_list") or []) if v is not None]
    if examples:
        text += f", e.g. {', '.join(examples[:EXAMPLES_IN_MESSAGE])}"
    return text


def short(value: Any, limit: int = 60) -> str:
    """A value as an operator reads it: dict rows as k=v, long text cut."""
    if isinstance(value, dict):
        text = "(" + ", ".join(f"{k}={v}" for k, v in value.items()) + ")"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_gate(gate: str, batches: Iterable[TableBatch], params: dict, root: Path) -> dict:
    """Validate every batch, update and log the Data Docs, raise on a `fail`; return the metrics."""
    return conclude(gate, run_suites(gate, batches, severities_of(params[gate], gate), root), root)


def run_suites(gate: str, batches: Iterable[TableBatch], severities: dict[str, str], root: Path) -> GateRun:
    """Run each table's suite and update the Data Docs; decides nothing (see `conclude`).

    `severities`: check name -> fail | warn | off, for every check of `batches`.
    """
    from tqdm import tqdm

    batches = list(batches)
    context = open_context(root)
    found = GateRun()
    for batch in tqdm(batches, desc=f"{gate}: GX suites", unit="table"):
        checks, missing_columns = runnable(batch, severities)
        found.skipped += missing_columns
        if not checks:
            continue
        table_results, page = validate_table(context, gate, batch, checks, severities)
        found.results += table_results
        if page is not None:
            found.pages[batch.table] = page
    return found


def conclude(gate: str, found: GateRun, root: Path, hints: Iterable[str] = ()) -> dict:
    """Log the Data Docs, summarise, and raise DataValidationError if a `fail` check failed.

    `hints` are extra lines for the failure message (e.g. how to accept an expected drift).
    """
    log_docs(root, found.pages)
    metrics = summarize(found.results, found.skipped, root)
    failures = [r for r in found.results if not r.success and r.severity == "fail"]
    if failures:
        tracking.log_metrics(metrics)  # the failed run still records what it saw
        raise DataValidationError(failure_message(gate, failures, found.results, found.pages, root, hints))
    return metrics


def log_docs(root: Path, pages: dict[str, Path]) -> None:
    """This run's Data Docs pages (and the index) to MLflow; a no-op without an active run."""
    tracking.log_artifact(docs_dir(root) / "index.html", artifact_path="gx_docs")
    for table, page in pages.items():
        tracking.log_artifact(page, artifact_path=f"gx_docs/{table}")


def summarize(results: list[CheckResult], skipped: list[str], root: Path) -> dict:
    keys = result_keys(results)
    failed = [k for k, r in zip(keys, results) if not r.success and r.severity == "fail"]
    warned = [k for k, r in zip(keys, results) if not r.success and r.severity == "warn"]
    return {
        "success": not failed,
        "n_expectations": len(results),
        "n_failed": len(failed),
        "n_warned": len(warned),
        "n_skipped": len(skipped),
        "failed": failed,
        "warned": warned,
        "skipped": skipped,
        "docs": str((docs_dir(root) / "index.html").relative_to(root)),
        "checks": {
            key: {
                "table": r.table,
                "severity": r.severity,
                "success": r.success,
                "observed": r.observed,
                "threshold": r.threshold,
            }
            for key, r in zip(keys, results)
        },
    }


def result_keys(results: list[CheckResult]) -> list[str]:
    """A check's name; `name@table` when the same check ran on a second table (e.g. tonight's batch)."""
    seen: set[str] = set()
    keys = []
    for r in results:
        keys.append(r.name if r.name not in seen else f"{r.name}@{r.table}")
        seen.add(r.name)
    return keys


def failure_message(
    gate: str,
    failures: list[CheckResult],
    results: list[CheckResult],
    pages: dict[str, Path],
    root: Path,
    hints: Iterable[str] = (),
) -> str:
    lines = [f"{len(failures)} of {len(results)} expectations of the {gate} gate failed:"]
    lines += [f"  - {r.line()}" for r in failures]
    warned = [r for r in results if not r.success and r.severity == "warn"]
    if warned:
        lines.append("warnings (not blocking):")
        lines += [f"  - {r.line()}" for r in warned]
    failed_tables = sorted({r.table for r in failures})
    lines.append(
        "Data Docs: "
        + ", ".join(str(pages[t]) for t in failed_tables if t in pages)
        + f" (index: {docs_dir(root) / 'index.html'})"
    )
    lines.append(
        f"Fix the data upstream, or, if a threshold is wrong, change it in params.yaml; "
        f"`{gate}.severity.<check>: warn` only reports a check."
    )
    lines += list(hints)
    return "\n".join(lines)


# --- inputs ---------------------------------------------------------------------------


def read_spark_table(spark, path: Path, stage_hint: str):
    """A Parquet table directory as a Spark DataFrame, or a PipelineError naming the stage to run."""
    if not path.exists():
        raise PipelineError(f"missing table {path}: run `{stage_hint}` first (e.g. `dvc repro {stage_hint}`)")
    return spark.read.parquet(str(path))
