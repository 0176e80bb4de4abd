"""Saving a trained TextSeqRec and serving it: `save` writes a self-contained model directory,
`Recommender` loads any model directory (plain, or a compressed variant; see variants.py) and
ranks the catalogue for item histories.

    save(model, "models/model")
    rec = Recommender.load("models/model")                             # serving / evaluation
    rec.recommend([["i1", "i7"]], k=10)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline_tasks.core import io
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.core.metrics import top_k
from pipeline_tasks.model import variants
from pipeline_tasks.model.towers import (
    ARCH_KEYS,
    CONFIG_FILE,
    ENCODER_DIR,
    ENCODER_PREFIX,
    FORMAT_VERSION,
    ITEM_IDS_FILE,
    ITEM_TABLE_FILE,
    WEIGHTS_FILE,
    Encoder,
    TextSeqRec,
    unwrap_encoder,
)


def save(model: TextSeqRec, model_dir: str | Path, item_table: np.ndarray | None = None) -> Path:
    """Write a self-contained model directory (see the module docstring of `Recommender`).

    item_table: the precomputed (n_items, dim) vectors; computed from `model.item_texts` when None.
    """
    if item_table is None:
        item_table = compute_item_table(model)
    assert item_table.shape == (model.n_items, model.config["dim"])
    with io.atomic_dir(model_dir) as tmp:
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(ENCODER_PREFIX)}
        torch.save(weights, tmp / WEIGHTS_FILE)
        hidden = model.item_tower.hidden_size if model.uses_text else 0
        config = {
            **model.config,
            "format_version": FORMAT_VERSION,
            "n_items": model.n_items,
            "hidden_size": hidden,
            "item_ids_file": ITEM_IDS_FILE,
            "item_table_file": ITEM_TABLE_FILE,
            "weights_file": WEIGHTS_FILE,
            "encoder_dir": ENCODER_DIR if model.uses_text else None,
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / ITEM_IDS_FILE).write_text(json.dumps(model.item_ids), encoding="utf-8")
        np.save(tmp / ITEM_TABLE_FILE, np.asarray(item_table, dtype=np.float32))
        if model.uses_text:
            unwrap_encoder(model.item_tower.encoder).save_pretrained(tmp / ENCODER_DIR)
            model.tokenizer.save_pretrained(tmp / ENCODER_DIR)
    return Path(model_dir)


@torch.no_grad()
def compute_item_table(model: TextSeqRec, batch_size: int = 64) -> np.ndarray:
    device = model.user_tower.positions.weight.device
    pooled = None
    if model.uses_text:
        assert model.item_texts is not None, "a loaded model keeps no texts: pass save() its item_table"
        pooled = model.encode_pooled(model.tokenize(model.item_texts), batch_size, device=device)
    return model.item_table(pooled).cpu().numpy()


class Recommender:
    """Inference over a saved model directory.

    models/model/ holds config.json (hyperparameters, file names), weights.pt (user tower,
    projection, ID embedding), encoder/ (the merged HF encoder + tokenizer; absent for an
    ID-only model), item_ids.json (catalogue order) and item_table.npy (precomputed unit item
    vectors). Every path is relative to the directory, so it loads from anywhere.
    """

    def __init__(self, model: TextSeqRec, item_table: np.ndarray, device: str = "cpu"):
        self.model = model.eval()
        self.device = device
        self.item_ids: list[str] = model.item_ids
        self.item_index: dict[str, int] = {item: i for i, item in enumerate(self.item_ids)}
        self.item_table: np.ndarray = np.asarray(item_table, dtype=np.float32)
        self.unplaced: set[int] = set()  # items added that this model cannot place (see add_items)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> Recommender:
        """Any model directory: the train stage's, or any variant the compress stage wrote."""
        model_dir = Path(model_dir).resolve()
        if not (model_dir / CONFIG_FILE).exists():
            raise PipelineError(f"no model at {model_dir} (config.json missing): run the train stage first")
        config = io.read_json(model_dir / CONFIG_FILE)
        variants.check_loadable(model_dir, config, device)
        item_ids = io.read_json(model_dir / config["item_ids_file"])
        encoder, tokenizer = variants.text_encoder(model_dir, config)
        arch = {key: config[key] for key in (*ARCH_KEYS, "trained_with") if key in config}
        model = TextSeqRec(arch, item_ids, None, encoder, tokenizer, config["hidden_size"])
        # The towers' weights go in while an int8 encoder is still a float skeleton (a quantised
        # Linear insists on its own keys even with strict=False); then the int8 encoder replaces it.
        weights = torch.load(model_dir / config["weights_file"], map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and all(k.startswith(ENCODER_PREFIX) for k in missing), (missing, unexpected)
        variants.finish_encoder(model, model_dir, config)
        return cls(model.to(device), variants.load_item_table(model_dir, config), device)

    @property
    def encoder(self) -> Encoder:
        """The HF text encoder (None for an ID-only model); assign a quantised copy to swap it."""
        return self.model.item_tower.encoder

    @encoder.setter
    def encoder(self, module: Encoder) -> None:
        self.model.item_tower.encoder = module

    @property
    def config(self) -> dict:
        return self.model.config

    @torch.no_grad()
    def encode_items(self, texts: list[str], item_idx: list[int] | None = None, batch_size: int = 64) -> np.ndarray:
        """(n, dim) item vectors recomputed through the item tower (text, plus ID embedding if item_idx)."""
        idx = torch.as_tensor(item_idx, dtype=torch.long, device=self.device) if item_idx is not None else None
        pooled = None
        if self.model.uses_text:
            pooled = self.model.encode_pooled(self.model.tokenize(texts), batch_size, device=self.device)
        elif idx is None:
            raise PipelineError("this model is ID-only (use_text=false): pass item_idx to encode_items")
        return self.model.item_tower.vectors(pooled, idx).cpu().numpy()

    def add_items(self, item_ids: list[str], texts: list[str]) -> None:
        """Append items the model was never trained on (the catalogue grew since) to its catalogue.

        A text model places each by its text alone (it learnt no ID embedding for them), as it does any
        cold item. An ID-only model cannot place them: they score -inf, so they rank after every item it
        knows, and a history ignores them. The model's item list grows with the table (one list).
        """
        new = [(item, text) for item, text in zip(item_ids, texts) if item not in self.item_index]
        if not new:
            return
        if self.model.uses_text:
            rows = self.encode_items([text for _, text in new])
        else:
            rows = np.zeros((len(new), self.item_table.shape[1]), dtype=np.float32)
            self.unplaced.update(range(len(self.item_ids), len(self.item_ids) + len(new)))
        for item, _ in new:
            self.item_index[item] = len(self.item_ids)
            self.item_ids.append(item)
        self.item_table = np.concatenate([self.item_table, rows.astype(np.float32)])

    def history_indices(self, histories: list[list[str]]) -> list[list[int]]:
        """Item ids to catalogue indices; ids the model does not know (or cannot place) are ignored."""
        return [
            [self.item_index[i] for i in h if i in self.item_index and self.item_index[i] not in self.unplaced]
            for h in histories
        ]

    @torch.no_grad()
    def user_vectors(self, histories: list[list[str]], batch_size: int = 512) -> np.ndarray:
        """(n_users, dim) unit user vectors (zeros for a history with no known item)."""
        table = torch.from_numpy(self.item_table).to(self.device)
        indexed = self.history_indices(histories)
        blocks = [
            self.model.user_vectors_from_table(table, indexed[s : s + batch_size]).float().cpu().numpy()
            for s in range(0, len(indexed), batch_size)
        ]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.item_table.shape[1]), dtype=np.float32)

    def scores(self, histories: list[list[str]]) -> np.ndarray:
        """(n_users, n_items) cosine scores in catalogue (item_ids) order; -inf for items it cannot place."""
        scores = self.user_vectors(histories) @ self.item_table.T
        if self.unplaced:
            scores[:, sorted(self.unplaced)] = -np.inf
        return scores

    def recommend(self, histories: list[list[str]], k: int, exclude_seen: bool = True) -> list[list[tuple[str, float]]]:
        """Top-k (item_id, score) per history, best first; seen items removed when exclude_seen."""
        scores = self.scores(histories)
        seen = self.history_indices(histories) if exclude_seen else [[] for _ in histories]
        ranked = top_k(scores, [np.asarray(s, dtype=np.int64) for s in seen], k)
        excluded = [set(s) for s in seen]  # top_k pads with them when k exceeds what is left
        return [
            [(self.item_ids[i], float(scores[u, i])) for i in row if i not in excluded[u]]
            for u, row in enumerate(ranked)
        ]
