"""Loading compressed variants: the encoder formats and item-table formats the compress stage writes.

A variant directory is a model directory (see recommender.py) whose config.json may carry
`encoder_quantization` (the encoder's storage format: int8_dynamic, onnx_fp32, onnx_int8, or fp32
when only the table is special) and `item_table_format` (int8_rowwise: int8 rows + one float32
scale per row). `Recommender.load` reads every variant through the functions here; `pruned`,
`distilled` and `item_table_fp16` are plain model directories.

The torch.ao quantiser is deprecated in torch 2.13 in favour of torchao (GPU-oriented, not a
dependency here); onnxruntime's dynamic quantisation is the supported CPU route, and the one
that also quantises the word-embedding matrix (most of MiniLM's weights).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.model.towers import Encoder, TextSeqRec, load_encoder

REFERENCE = "fp32"
QUANTIZATION_KEY = "encoder_quantization"
TABLE_FORMAT_KEY = "item_table_format"
INT8 = "int8_dynamic"
ONNX_FP32 = "onnx_fp32"
ONNX_INT8 = "onnx_int8"
ENCODER_FORMATS = (REFERENCE, INT8, ONNX_FP32, ONNX_INT8)
TABLE_INT8 = "int8_rowwise"
INT8_STATE_FILE = "int8_state_dict.pt"
ONNX_FILE = "model.onnx"
TABLE_SCALE_FILE = "item_table_scale.npy"


# --- torch int8 -------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (quantize_dynamic, qint8 tensors, TypedStorage on load).

    They announce a future removal we know about (see the module docstring); any other
    warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*(torch\.ao\.quantization|quantized tensor).*deprecated")
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
        yield


def quantize_int8(encoder: nn.Module) -> Encoder:
    """A dynamically int8-quantised copy of the encoder (Linear layers only; embeddings stay fp32)."""
    with quiet_quantization():
        return torch.ao.quantization.quantize_dynamic(encoder.cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def encoder_skeleton(encoder_dir: Path) -> Encoder:
    """The HF encoder's architecture from its config, with untrained weights."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(encoder_dir), local_files_only=True)  # nosec B615 # a local folder
    return AutoModel.from_config(config)


def load_int8_encoder(encoder_dir: Path, skeleton: Encoder | None = None) -> Encoder:
    """Rebuild the quantised encoder: skeleton from the HF config, quantised, saved state loaded."""
    encoder = quantize_int8(skeleton if skeleton is not None else encoder_skeleton(encoder_dir))
    with quiet_quantization():
        state = torch.load(encoder_dir / INT8_STATE_FILE, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)
    return encoder.eval()


# --- ONNX ---------------------------------------------------------------------------------------


class OnnxEncoder(nn.Module):
    """An onnxruntime session behind the HF encoder interface the item tower calls.

    A module without parameters, so it can take the HF encoder's place in ItemTower;
    `encoder(input_ids=..., attention_mask=...).last_hidden_state` as usual.
    """

    def __init__(self, path: Path, num_threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Same thread budget as torch, so the variants are compared on equal terms.
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        feeds = {
            "input_ids": input_ids.cpu().numpy().astype(np.int64),
            "attention_mask": attention_mask.cpu().numpy().astype(np.int64),
        }
        (hidden,) = self.session.run(None, feeds)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


# --- loading ------------------------------------------------------------------------------------


def check_loadable(model_dir: Path, config: dict, device: str) -> None:
    """A clear error for a format this version cannot read, or a CPU-only encoder asked onto a GPU."""
    encoder_format = config.get(QUANTIZATION_KEY)
    if encoder_format is None:
        return
    if encoder_format not in ENCODER_FORMATS:
        raise PipelineError(
            f"{model_dir} has {QUANTIZATION_KEY}={encoder_format!r}, which this version cannot "
            f"load (known: {', '.join(ENCODER_FORMATS)}); re-run the compress stage"
        )
    if encoder_format != REFERENCE and device != "cpu":
        raise PipelineError(
            f"{model_dir} holds a {encoder_format} encoder, which runs on the CPU only "
            f"(asked for {device!r}); load it with device='cpu' or use the fp32 variant"
        )


def text_encoder(model_dir: Path, config: dict) -> tuple[Encoder | None, Any]:
    """The encoder to build the towers with, and its tokenizer ((None, None) for an ID-only model).

    An int8 encoder comes back as its float skeleton: `finish_encoder` swaps the quantised one in
    once the towers' weights are loaded.
    """
    if not config.get("encoder_dir"):
        return None, None
    encoder_dir = model_dir / config["encoder_dir"]
    encoder_format = config.get(QUANTIZATION_KEY) or REFERENCE
    if encoder_format == REFERENCE:
        return load_encoder(encoder_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)  # nosec B615 # a local folder
    if encoder_format == INT8:
        return encoder_skeleton(encoder_dir), tokenizer
    return OnnxEncoder(encoder_dir / ONNX_FILE), tokenizer


def finish_encoder(model: TextSeqRec, model_dir: Path, config: dict) -> None:
    """Put an int8 encoder in place of the skeleton `text_encoder` gave (a no-op for other formats)."""
    if config.get(QUANTIZATION_KEY) == INT8:
        encoder_dir = model_dir / config["encoder_dir"]
        model.item_tower.encoder = load_int8_encoder(encoder_dir, model.item_tower.encoder)


def load_item_table(variant_dir: Path, config: dict) -> np.ndarray:
    """The float32 item table of any variant (an int8 one dequantised with its row scales)."""
    table = np.load(variant_dir / config["item_table_file"])
    if config.get(TABLE_FORMAT_KEY) == TABLE_INT8:
        return table.astype(np.float32) * np.load(variant_dir / config["item_table_scale_file"])
    return table.astype(np.float32)
