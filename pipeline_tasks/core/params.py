"""The one source of every number: params.yaml, checked against typed defaults.

`load(path, overrides)` reads params.yaml, applies `section.key=value` overrides
(from `--set` or the Airflow form), rejects unknown keys and wrong types with a
message naming the key, and returns a plain nested dict.

Longer than most modules on purpose: most of it is DEFAULTS, the typed default of every knob in
one table (the schema that rejects unknown keys).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline_tasks.core.constants import FIXED_SLICES, USER_SLICE_PREFIX
from pipeline_tasks.core.errors import ParamsError

log = logging.getLogger(__name__)

# Typed defaults. The type of each default is the type a value must have
# (an int is accepted where a float is expected; None means "any").
DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "spark": {
        "master": "local[*]",
        "driver_memory": "2g",
        "shuffle_partitions": 4,
        "log_level": "ERROR",
    },
    "mlflow": {
        "tracking_uri": "sqlite:///mlflow/mlflow.db",
        "artifact_root": "mlflow/artifacts",
        "experiment": "recpipe",
    },
    "airflow": {
        "schedule": "0 2 * * *",  # cron, UTC: the nightly run
        "dvc_push": True,  # after a successful DAG run: `dvc push` to the default DVC remote
        "runs_branch": "recpipe-runs",  # each successful DAG run's dvc.lock committed here ('' = MLflow only)
    },
    "ingest": {
        "source": "synthetic",  # synthetic | movielens | amazon | generic
        "path": "",  # folder of the source files (movielens, amazon, generic)
        "max_bad_line_share": 0.01,  # malformed lines per file set aside (quarantined) before ingest fails
        "max_tags_per_item": 5,  # MovieLens tags.csv: most frequent tags appended to an item's text
        # Nightly increments: '' = a full load (replaces every batch); an id (a date, e.g. 2026-07-01)
        # adds or replaces that batch next to the earlier ones.
        "batch": "",
        # Set by each scheduled run, not by a person: the content hash of the files it reads, so
        # changed input makes DVC re-run ingest (ops/run_params.py). '' for the synthetic source.
        "source_fingerprint": "",
        # data/raw = the full load + every increment whose id is <= cutoff ('' = the batch just ingested).
        "cutoff": "",
        # Generic CSV / Parquet: file (or folder of parts) names under `path`, and the column map.
        "generic": {
            "interactions": "interactions",
            "items": "items",
            "users": "users",  # optional: without it, users are the ids found in the interactions
            "format": "auto",  # auto (by extension) | csv | parquet
            "delimiter": ",",  # CSV only; .tsv files are read tab-separated
            "encoding": "utf-8",
            "timestamp_unit": "s",  # s | ms | us (epoch numbers) | iso (date strings)
            "columns": {  # canonical column: the name in your files ('' = absent)
                "user_id": "user_id",
                "item_id": "item_id",
                "rating": "rating",
                "timestamp": "timestamp",
                "event": "",
                "title": "title",
            },
            "text_columns": ["description"],  # item columns appended to the title to form the item text
        },
        "synthetic": {
            "day": 0,  # 0 = the history; N >= 1 = only day N after it (an increment; its batch is the date)
            "new_items_per_day": 3,  # items released on each increment day (cold start every night)
            "n_users": 300,
            "n_items": 400,
            "n_topics": 8,
            "mean_interactions_per_user": 30,
            "days": 180,
            "start_date": "2026-01-01",
            "cold_item_share": 0.05,
            "popularity_exponent": 1.5,
            "topic_affinity": 0.95,  # share of sessions whose topic follows the user's taste (the rest: any topic)
            "drift": 0.15,  # share of each user's taste that moves to another taste over the history
            # Sequential structure (calibrated against MovieLens-100K: bench/bench_world.py, README).
            "neighbourhoods_per_topic": 4,  # items of a topic about the same two things (their texts say so)
            "series_share": 0.5,  # items that are parts of a series (2-5 parts, released in order)
            "session_length": 4.0,  # mean events of a session (one topic, at least an hour from the next)
            "follow_series": 0.2,  # chance the next event is the next part of the last item's series
            "follow_neighbourhood": 0.2,  # else, within a session: chance it stays in the last item's neighbourhood
            "momentum": 0.3,  # weight of the last items' topics (vs the long-term taste) in a session's topic
            "trending_share": 0.25,  # else: chance an event picks from the whole catalogue's charts, not the topic
            "release_hype": 4.0,  # a new release starts this much above its popularity weight (x1+hype) ...
            "hype_days": 20.0,  # ... and the extra decays with this time constant (popularity drifts)
            "messy_text_share": 0.1,  # good items with harmless markup/spacing/NFD text that clean fixes
            "dirt": {
                "duplicate_rate": 0.01,
                "null_id_rate": 0.003,
                "bad_rating_rate": 0.003,
                "future_timestamp_rate": 0.003,
                "orphan_item_rate": 0.003,
                "broken_text_rate": 0.02,
                "bot_users": 1,
                "bot_events": 400,
            },
        },
    },
    "validate_raw": {
        "min_rows": 1,
        "max_null_id_share": 0.05,
        "max_bad_timestamp_share": 0.01,  # null or unparseable timestamps
        # Per check: fail (stops the run) | warn (only reported) | off (not run).
        "severity": {
            "interactions_columns_present": "fail",
            "interactions_min_rows": "fail",
            "interactions_user_id_not_null": "fail",
            "interactions_item_id_not_null": "fail",
            "interactions_timestamp_parseable": "fail",
            "items_columns_present": "fail",
            "items_min_rows": "fail",
            "items_item_id_not_null": "fail",
            "users_columns_present": "fail",
            "users_user_id_not_null": "fail",
        },
    },
    "clean": {
        "rating_min": 0.5,  # MovieLens latest/20M/25M use half stars from 0.5
        "rating_max": 5.0,
        "timestamp_floor": "1990-01-01",
        "future_slack_hours": 24,
        # Bot caps: more than this many events of one user in one UTC minute / hour / day. About twice
        # the busiest real user's (ML-100K: 30, 596, 737; synthetic: 3, 14, 39; bench/bot_windows.py),
        # and pacing just under one cap for long enough breaks the next (60/min for an hour: 3600).
        "bot_max_events_per_minute": 60,
        "bot_max_events_per_hour": 1200,
        "bot_max_events_per_day": 1500,
        # Robust z-score (median/MAD) of log events per user; 0 = off. Busiest real user: 2.17 on
        # ML-100K, 2.31 synthetic; 5.0 is > 17,715 events on ML-100K.
        "bot_max_events_zscore": 5.0,
        # Floors for the z-score: Amazon Office 5-core's busiest reviewer is at z 5.21 with 94 events.
        "bot_outlier_min_events": 1500,  # fewer (one day's cap) is never an outlier
        "bot_outlier_min_users": 100,  # fewer users: the median and MAD are too noisy to judge by
        "orphan_policy": "drop",  # drop | placeholder
        "placeholder_text": "Unknown item",  # text of catalogue rows added by orphan_policy=placeholder
        "kcore_users": 5,
        "kcore_items": 3,
        "kcore_max_iterations": 20,
        "text_max_chars": 400,
        "implicit_min_rating": 0.0,  # 0 = every interaction is a positive
    },
    "validate_clean": {
        "max_quarantine_share": 0.3,
        # Per check: fail (stops the run) | warn (only reported) | off (not run).
        "severity": {
            "interactions_columns_present": "fail",
            "interactions_user_id_not_null": "fail",
            "interactions_item_id_not_null": "fail",
            "interactions_timestamp_not_null": "fail",
            "interactions_unique_user_item_timestamp": "fail",
            "interactions_rating_in_range": "fail",
            "interactions_timestamp_in_range": "fail",
            "interactions_item_in_catalogue": "fail",
            "interactions_user_kcore": "fail",
            "interactions_item_kcore": "fail",
            "items_columns_present": "fail",
            "items_item_id_not_null": "fail",
            "items_item_id_unique": "fail",
            "items_text_not_null": "fail",
            "items_text_not_empty": "fail",
            "items_text_max_chars": "fail",
            "users_columns_present": "fail",
            "users_user_id_not_null": "fail",
            "quarantine_share": "fail",
        },
        # Drift against the previous version that passed this gate (see pipeline_tasks/data/drift.py).
        "drift": {
            "baseline_dir": "validated",  # where passing versions' statistics are kept (not a DVC output)
            "keep_versions": 10,  # validated versions kept in baseline_dir (the latest is the baseline)
            "max_ids_stored": 1000000,  # user ids kept per version; above it a consistent hash sample
            "max_row_count_change": 0.3,  # |rows / previous rows - 1|
            "max_new_user_share": 0.3,  # users absent from the previous version / users
            "max_lost_user_share": 0.3,  # previous users absent now / previous users
            "max_new_item_share": 0.3,
            "max_lost_item_share": 0.3,
            "max_rating_mean_shift": 0.3,  # in rating units (stars)
            "max_popularity_psi": 0.25,  # PSI > 0.25 is the usual "significant shift"
            "popularity_bins": 10,  # previous items cut into this many popularity bins for the PSI
            # Per check: fail (stops the run) | warn (only reported) | off (not computed).
            "severity": {
                "row_count_change": "fail",
                "new_user_share": "fail",
                "lost_user_share": "fail",
                "new_item_share": "warn",  # a catalogue launch is normal; lost items are reported too
                "lost_item_share": "warn",
                "rating_mean_shift": "fail",
                "popularity_psi": "fail",
            },
        },
    },
    "split": {
        "min_user_interactions": 3,
        # Share of test rows given a cold-start target (its train/valid rows withheld); 0.0 = none.
        "cold_start_share": 0.0,
    },
    "baselines": {
        "models": ["Pop", "ItemKNN", "EASE", "ALS", "SASRec-ID"],
        "ease_lambdas": [10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
        "itemknn_neighbors": [20, 50, 100],
        "als_ranks": [32, 64],  # ALS (Spark MLlib, implicit): every (rank, reg_param, alpha) is tried on valid
        "als_reg_params": [0.1],
        "als_alphas": [1.0],  # each grid point is one Spark fit (on ml-100k and synthetic alpha 10 lost)
        "als_max_iter": 10,
        # SASRec-ID (train params, text off): most epochs, the best one chosen on valid; 0 = train.epochs
        # (the text model's budget: with early stopping both train until valid stops improving).
        "sasrec_epochs": 0,
        "sasrec_patience": 3,  # stop after this many epochs without a better valid NDCG@10 (0 = never)
        "batch_size": 1024,  # users scored per block
        "max_dense_items": 20000,  # EASE and ItemKNN hold item x item matrices: refuse larger catalogues
    },
    "train": {
        "encoder": "all-MiniLM-L6-v2",  # or a local Hugging Face model directory
        "finetune": "frozen",  # frozen | lora | full | top_layers
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        # Tokens of an item's text the encoder reads (title first). 128 scored +5% on Office's validation
        # but not on test, at 2.6x the compress stage's time (README, "Text whitening and length").
        "max_text_len": 32,
        # Whiten the pooled text with the catalogue's statistics before the projection (text_adaptor.TextWhitening);
        # off by default: validation liked it, test did not, and it scatters cold items of a small catalogue.
        "text_whitening": False,
        # Pooled text -> dim: 0 = one linear projection; n > 0 = UniSRec's mixture of n whitening
        # experts (towers.TextAdaptor; trains on the cached vectors, so it costs no encoder pass).
        "adaptor_experts": 0,
        "dim": 64,
        "user_layers": 2,
        "user_heads": 2,
        "max_seq_len": 50,
        "use_id_embedding": True,
        # Where item-ID rows start: random, or text (the catalogue text's top principal components,
        # scaled to id_init_std; trainer.start_ids_from_text). Read by ID-only models too; SASRec-ID
        # (the baseline) always starts at random. text: +0.0032 [+0.0007, +0.0057] test NDCG@10 on
        # Office, +0.0041 [-0.0022, +0.0098] on MovieLens-100K over 3 seeds (README, "Item-ID rows").
        "id_init": "text",
        "id_init_std": 0.3,
        "use_text": True,
        "dropout": 0.2,
        # At most this many epochs; with validation, stop once valid NDCG@10 has not improved for
        # `patience` epochs (0 = run them all). The best epoch is kept, and the refit runs that many.
        "epochs": 50,
        "patience": 3,
        "refit": True,  # after picking the best epoch count on valid, fit again on train + valid (as baselines do)
        "batch_size": 64,
        "cuda_batch_size": 256,  # batch size on a GPU (0 = batch_size); more sequences per step where they are cheap
        "lr": 0.002,
        "encoder_lr": 0.002,
        "weight_decay": 0.0,
        "warmup_share": 0.1,  # share of all steps with a linear learning-rate warm-up (then cosine to 10%)
        "grad_clip_norm": 1.0,
        "temperature": 0.1,
        # softmax: cross-entropy over the whole catalogue; sampled: n_negatives popularity-sampled
        # negatives (logQ-corrected); auto: softmax up to softmax_max_items items, else sampled.
        "loss": "auto",
        "softmax_max_items": 20000,
        "n_negatives": 256,
        "text_grad_items": 64,  # candidates per step encoded WITH gradient (the rest read a cached table)
        "checkpoint_every": 50,
        "device": "auto",  # auto | cpu | cuda
        "use_best_params": True,
        "num_threads": 0,  # 0 = torch's default
        # Nights after the first fine-tune from the champion's weights (new items start from their text)
        # for at most warm_epochs epochs; a champion of another shape (dim, layers, encoder) means a cold night.
        "warm_start": True,
        "warm_epochs": 2,
        # ... at this share of train.lr / encoder_lr (trainer.make_optimizer): at the full rate a
        # text-started champion's warm challengers lost the long tail and were refused; at 0.1 they
        # trailed a cold retrain; 0.3 matched it over two simulated weeks (README, "The second night").
        "warm_lr_scale": 0.3,
    },
    "tune": {
        "n_trials": 3,
        "timeout_s": 900,
        "epochs": 3,
        "sampler_seed": 42,
        "pruner": "median",  # median | hyperband | none
        "pruner_startup_trials": 2,  # median: trials that finish before any is pruned
        "pruner_warmup_epochs": 1,  # median: epochs a trial always completes before it can be pruned
        "storage": "",  # "" = optuna/study.db (SQLite); or a postgresql:// URL
        "study_name": "recpipe",  # + the hash of the data and the search: one study per data version
        "every_n_nights": 7,  # search on the first night and every n-th (1 = every run); between: reuse
        "search_space": {
            "train.lr": {"type": "float", "low": 0.0005, "high": 0.005, "log": True},
            "train.temperature": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
            "train.dropout": {"type": "float", "low": 0.0, "high": 0.4},
            "train.adaptor_experts": {"type": "categorical", "choices": [0, 8]},
        },
    },
    "compress": {
        # fp32 is always measured (the reference); see pipeline_tasks/compress.py for each variant
        "variants": [
            "fp32",
            "int8_dynamic",
            "onnx_fp32",
            "onnx_int8",
            "pruned",
            "distilled",
            "item_table_fp16",
            "item_table_int8",
        ],
        # Largest relative valid NDCG@10 drop vs fp32 allowed: a variant is refused only when the low end of
        # its drop's bootstrap interval (evaluate.bootstrap_resamples, evaluate.ci_level) is above it.
        "max_ndcg_drop": 0.01,
        "latency_calls": 500,  # timed single-user recommendations per variant (after warm-up); p50 is judged
        "warmup_calls": 10,  # untimed calls per variant before timing
        "latency_block_calls": 10,  # variants are timed round-robin, this many calls each per turn
        "throughput_items": 256,  # items encoded to time the item tower (capped at the catalogue)
        "timing_rounds": 3,  # throughput = median of this many timed passes (the CPU may be shared)
        "num_threads": 0,  # torch and onnxruntime CPU threads while measuring; 0 = torch's default
        "onnx_per_channel": True,  # onnx_int8: one scale per output channel (more accurate than per tensor)
        "prune_amount": 0.5,  # pruned: share of every encoder Linear weight zeroed (smallest |w| first)
        "recovery_epochs": 2,  # pruned: passes over the catalogue texts fitting the fp32 text vectors
        "student_layers": 3,  # distilled: encoder layers of the student (fewer than the teacher's)
        "distill_epochs": 4,  # distilled: passes over the catalogue texts fitting the teacher's text vectors
        "distill_lr": 0.0001,  # pruned and distilled fine-tunes (AdamW)
        "distill_batch_size": 32,
        # Between searches (tune.every_n_nights) a night measures fp32 and the variant the last search
        # night chose, not every variant: "all" measures every variant every night.
        "between_searches": "chosen",  # chosen | all
    },
    "evaluate": {
        "ks": [10, 20],
        "batch_size": 256,
        "head_share": 0.2,  # popular items = top share by training count; the rest is the long tail
        "history_bins": [20, 100],  # user slices by history length (train+valid): <20, 20-99, >=100
        "bootstrap_resamples": 1000,
        "ci_level": 0.95,
        "max_attribute_groups": 25,  # user attributes with more distinct values are not sliced (e.g. zip)
        "min_group_users": 20,  # groups smaller than this are reported but left out of fairness ratios
    },
    "register": {
        "model_name": "recpipe",
        "min_improvement": 0.01,  # relative NDCG@10 gain over the re-scored champion needed to promote
        # First champion: absolute NDCG@10 floor. 0.0 = off on purpose: NDCG's scale depends on the data (catalogue
        # size, history length), so the dataset-independent rule is that it must beat the run's best baseline.
        "min_ndcg": 0.0,
        "max_slice_drop": 0.1,  # largest relative NDCG@10 drop vs the champion in any guarded slice group
        "guarded_slices": ["history_length", "cold_start", "popularity"],  # evaluate slices the gate guards
        # Budget: median (p50) single-user latency of the chosen variant (metrics/compress.json). Not p99: on a
        # shared CPU the tail of a few hundred calls measures the machine's load, not the model.
        "max_latency_p50_ms": 50.0,
        "max_size_mb": 1000.0,  # budget: size on disk of the chosen variant (compress.json)
        "auto_promote": True,  # false: a passing challenger waits for `recpipe promote VERSION`
        "cold_start_fresh_share": 0.3,  # share of a new user's list filled with fresh items (rest: popular)
        "serve_poll_s": 30.0,  # `recpipe serve` re-reads aliases and the A/B config this often
        # Exposures and feedback of `recpipe serve` (SQLAlchemy URL; a relative SQLite path is under the
        # project). $RECPIPE_EVENT_STORE_URL wins: a deployment's PostgreSQL, password kept out of params.
        "event_store": "sqlite:///logs/events.db",
        # The JSON-lines logs of servers before the event store: `recpipe events import-jsonl` reads them once.
        "exposure_log": "logs/exposures.jsonl",
        "feedback_log": "logs/feedback.jsonl",
        "ab_guardrails": ["purchase_rate", "latency_p99_ms"],  # stored by `recpipe ab` unless --guardrail
        "ab_alpha": 0.05,  # ab-report: significance level of the two-proportion z-test
        "ab_power": 0.8,  # ab-report: power used to size the test
        "ab_mde": 0.1,  # ab-report: smallest relative CTR change worth detecting
        "ab_baseline_ctr": 0.05,  # `recpipe ab` sizes the test for this expected champion CTR (the plan)
        "ab_max_latency_p99_ms": 20.0,  # ab-report guardrail: served p99 per variant
    },
}

# Dicts whose keys are the user's own (no unknown-key check below them).
OPEN_KEYS = {"tune.search_space"}
# Old names still read (with a warning) as their new key: {old: (new, why it changed)}. Old params files
# keep loading: a params.yaml not yet edited, the params.run.yaml of a run before the rename.
RENAMED = {
    "register.max_latency_p99_ms": (
        "register.max_latency_p50_ms",
        "the gate judges the median latency: a p99 of a few hundred calls on a shared CPU measures its load",
    ),
}


def defaults() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then the params file (if one is given), then `section.key=value` overrides."""
    params = defaults()
    if path is not None:
        if not Path(path).exists():
            raise ParamsError(f"params file {path} does not exist: pass --params FILE or run from the project root")
        with open(path, encoding="utf-8") as fh:
            from_file = yaml.safe_load(fh) or {}
        if not isinstance(from_file, dict):
            raise ParamsError(f"{path} must hold a mapping of sections, got {type(from_file).__name__}")
        merge(params, from_file, DEFAULTS, prefix="")
    for item in overrides:
        apply_override(params, item)
    check_guarded_slices(params["register"]["guarded_slices"])
    return params


def check_guarded_slices(names: list) -> None:
    """Refuse a guarded slice name that can never match: the gate would skip it, switching that guard off.

    Only the form of `user.<attribute>` is checked here; the register stage checks the attribute
    against the split's users (serving/gate.py check_guarded_slices).
    """
    for name in names:
        if name in FIXED_SLICES or (
            isinstance(name, str) and name.startswith(USER_SLICE_PREFIX) and name != USER_SLICE_PREFIX
        ):
            continue
        raise ParamsError(
            f"register.guarded_slices: unknown slice {name!r}; valid: {', '.join(FIXED_SLICES)}, or "
            f"{USER_SLICE_PREFIX}<attribute> for a column of data/split/users (e.g. user.gender). "
            "Fix the spelling: the gate would silently skip a name it does not know, turning that guard off."
        )


def merge(target: dict, source: dict, schema: dict, prefix: str) -> None:
    """Merge `source` into `target`, checking keys and types against `schema`."""
    for key, value in source.items():
        dotted = f"{prefix}{key}"
        if key not in schema and dotted in RENAMED:
            key, dotted = renamed(dotted, source)
        if key not in schema:
            known = ", ".join(sorted(map(str, schema)))
            raise ParamsError(
                f"unknown key '{dotted}' in params (known keys here: {known}); fix the spelling or remove it"
            )
        default = schema[key]
        if isinstance(default, dict) and dotted not in OPEN_KEYS:
            if not isinstance(value, dict):
                raise ParamsError(f"'{dotted}' must be a mapping of keys, got {value!r}")
            merge(target[key], value, default, prefix=f"{dotted}.")
        else:
            target[key] = check_type(dotted, value, default)


def renamed(old: str, source: dict) -> tuple[str, str]:
    """(key, dotted) of the new name of `old`; refuses a mapping that sets both names."""
    new, why = RENAMED[old]
    key = new.rsplit(".", 1)[-1]
    if key in source:
        raise ParamsError(
            f"'{old}' and '{new}' are both set: '{old}' is the old name of '{new}' ({why}); keep only '{new}'"
        )
    log.warning(
        "params: '%s' is the old name of '%s' (%s); its value is read as '%s': rename the key", old, new, why, new
    )
    return key, new


def check_type(dotted: str, value: Any, default: Any) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamsError(f"'{dotted}' must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"'{dotted}' must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{dotted}' must be an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set ingest.path=2024` means the string
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()  # YAML reads `ingest.batch=2026-07-01` as a date; a batch id is text
        if not isinstance(value, str):
            raise ParamsError(f"'{dotted}' must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ParamsError(f"'{dotted}' must be a list, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ParamsError(f"'{dotted}' must be a mapping, got {value!r}")
        return value
    return value


def apply_override(params: dict, item: str) -> None:
    """Apply one `section.key=value` override; the value is parsed as YAML."""
    if "=" not in item:
        raise ParamsError(f"override {item!r} must look like section.key=value (e.g. train.epochs=2)")
    dotted, raw = item.split("=", 1)
    set_dotted(params, dotted.strip(), parse_value(raw))


def parse_value(raw: str) -> Any:
    """YAML, except that `1e-3` is a number (YAML 1.1 would read it as a string)."""
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def set_dotted(params: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in params (checked against the defaults like params.yaml is)."""
    parts = dotted.split(".")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    merge(params, nested, DEFAULTS, prefix="")


def get_dotted(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"no parameter '{dotted}' (no key '{part}')")
        node = node[part]
    return node


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`, for MLflow params and tags."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def dump(params: dict, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(params, fh, sort_keys=False)
