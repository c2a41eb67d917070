"""What calibration measured about each layer's KV, the input of every allocation strategy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSignals:
    """Per-layer costs of cutting one layer's KV to a short window (`vllm-adaptive calibrate`).

    perplexity: ΔPPL (%) on long calibration chunks when that layer alone keeps the probe window;
    retrieval: increase of the answer's NLL (nats per token) on synthetic pass-key prompts built
      from calibration text when that layer alone keeps the probe window (None: not measured).
      Perplexity barely sees the layers that fetch a fact from far back; this does.
    """

    perplexity: list[float]
    retrieval: list[float] | None = None
