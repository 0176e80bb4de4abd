"""The registered MLflow pyfunc model: self-contained top-K recommendations.

Input: a DataFrame with `user_id` (string; may be unknown), optional `history` (list of
item ids, for a new user or to override the stored history) and optional `k` (default 10).
Output: one row per input row with `user_id`, `item_ids` (ranked) and `scores`.

Everything it needs (encoder, tokenizer, weights, item table, id maps, known users'
histories, a popularity fallback) is an artifact of the model version, and the code
travels with it (`code_paths`), so `mlflow.pyfunc.load_model("models:/recpipe@champion")`
works in a fresh process, from any directory, with no project checkout.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

DEFAULT_K = 10


class RecpipePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline_tasks.model import Recommender

        self.recommender = Recommender.load(Path(context.artifacts["model"]))
        serving = json.loads(Path(context.artifacts["serving"]).read_text(encoding="utf-8"))
        self.histories: dict[str, list[str]] = serving["histories"]
        self.popular: list[str] = serving["popular"]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = []
        for row in model_input.to_dict(orient="records"):
            user_id = str(row.get("user_id") or "")
            k = int(row.get("k") or DEFAULT_K)
            history = list(row.get("history") or []) or self.histories.get(user_id, [])
            rows.append({"user_id": user_id, **self.recommend(history, k)})
        return pd.DataFrame(rows, columns=["user_id", "item_ids", "scores"])

    def recommend(self, history: list[str], k: int) -> dict:
        known = [item for item in history if item in self.recommender.item_index]
        if not known:  # a brand-new user: the popular items, scored by rank
            items = self.popular[:k]
            return {"item_ids": items, "scores": [float(len(items) - i) for i in range(len(items))]}
        (ranked,) = self.recommender.recommend([known], k, exclude_seen=True)
        return {"item_ids": [i for i, _ in ranked], "scores": [float(s) for _, s in ranked]}
