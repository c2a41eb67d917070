"""Headless matplotlib figures for the benchmarks (one look for every PNG under bench/results)."""

from __future__ import annotations

from pathlib import Path


def subplots(*args, **kwargs):
    """`plt.subplots` on the Agg backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(fig, path: Path, axes=(), legend: bool = True) -> None:
    """Grid and (where something is labelled) legend on `axes`, then write `path`."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if legend and ax.get_legend_handles_labels()[0]:  # axes with labelled lines or bars only
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)  # benchmarks that re-plot as results arrive must not pile up open figures
