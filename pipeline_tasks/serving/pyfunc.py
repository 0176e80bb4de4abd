"""The registered MLflow pyfunc model: self-contained top-K recommendations.

Input: a DataFrame with `user_id` (string; may be unknown), optional `history` (list of
item ids, for a new user or to override the stored history) and optional `k` (default 10).
Output: one row per input row with `user_id`, `item_ids` (ranked) and `scores`.

Everything it needs (encoder, tokenizer, weights, item table, id maps, known users'
histories, the cold-start lists: popular and fresh items) is an artifact of the model version, and the code
travels with it (`code_paths`), so `mlflow.pyfunc.load_model("models:/recpipe@champion")`
works in a fresh process, from any directory, with no project checkout.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C

DEFAULT_K = 10


class RecpipePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline_tasks.model.recommender import Recommender

        self.recommender = Recommender.load(Path(context.artifacts[C.MODEL_ARTIFACT]))
        serving = json.loads(Path(context.artifacts["serving"]).read_text(encoding="utf-8"))
        self.histories: dict[str, list[str]] = serving["histories"]
        self.popular: list[str] = serving["popular"]
        self.fresh: list[str] = serving.get("fresh", [])
        self.fresh_share: float = float(serving.get("fresh_share", 0.0))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = []
        for row in model_input.to_dict(orient="records"):
            user_id = str(row.get("user_id") or "")
            k = row.get("k")
            result = self.for_user(user_id, DEFAULT_K if k is None or pd.isna(k) else int(k), row.get("history"))
            rows.append({"user_id": user_id, "item_ids": result["item_ids"], "scores": result["scores"]})
        return pd.DataFrame(rows, columns=["user_id", "item_ids", "scores"])

    def for_user(self, user_id: str, k: int, history=None) -> dict:
        """Top-k for one user: an explicit history wins, else the stored one; `cold_start` says which path."""
        # history may arrive as a list, a numpy array (schema enforcement) or NaN/None (column absent).
        given = [str(i) for i in history] if isinstance(history, (list, tuple, np.ndarray)) else []
        return self.recommend(given or self.histories.get(user_id, []), k)

    def recommend(self, history: list[str], k: int) -> dict:
        known = [item for item in history if item in self.recommender.item_index]
        if not known:  # a brand-new user: popular and fresh items, scored by rank
            items = self.cold_start(k)
            return {"item_ids": items, "scores": [float(len(items) - i) for i in range(len(items))], "cold_start": True}
        (ranked,) = self.recommender.recommend([known], k, exclude_seen=True)
        return {"item_ids": [i for i, _ in ranked], "scores": [float(s) for _, s in ranked], "cold_start": False}

    def cold_start(self, k: int) -> list[str]:
        """Popular items, with fresh_share of the slots (evenly spread) given to fresh ones; no repeats."""
        n_fresh = min(k, round(k * self.fresh_share)) if self.fresh else 0
        fresh_slots = {round((j + 1) * k / n_fresh) - 1 for j in range(n_fresh)}
        fresh, popular = iter(self.fresh), iter(self.popular)
        out: list[str] = []
        for slot in range(k):
            for source in (fresh, popular) if slot in fresh_slots else (popular, fresh):
                item = next((i for i in source if i not in out), None)
                if item is not None:
                    out.append(item)
                    break
        return out
