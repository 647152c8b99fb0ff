"""Safety-layer search (method.md step 1): where hidden states of benign and harmful prompts part.

With u = h / ||h|| the unit last-token hidden state, the mean pairwise cosines follow from sums:
    S_BB = (||sum_b u||^2 - n_b) / (n_b (n_b - 1))     (pairs i != j)
    S_BH = (sum_b u) . (sum_h u) / (n_b n_h)
so the probes accumulate one vector per layer and never store activations.
"""

from __future__ import annotations

import logging

import torch

from fgsn.artifacts.locate_run import LayerSearch
from fgsn.errors import InputError
from fgsn.locate.probes import ProbeStats

log = logging.getLogger(__name__)


def mean_pair_cosine_within(s: ProbeStats) -> torch.Tensor:
    n = s.n_prompts
    if n < 2:
        raise InputError("the layer search needs at least 2 distinct prompts in each set")
    sq = (s.unit_sum * s.unit_sum).sum(-1)
    return (sq - n) / (n * (n - 1))


def mean_pair_cosine_between(a: ProbeStats, b: ProbeStats) -> torch.Tensor:
    return (a.unit_sum * b.unit_sum).sum(-1) / (a.n_prompts * b.n_prompts)


def select_block(gap: list[float], eps_rel: float = 0.05) -> tuple[tuple[int, int], float, str]:
    """The contiguous block where the gap first rises clearly, up to where it stops rising.

    eps = eps_rel * (max(gap) - min(gap)). Start: the first layer whose gap exceeds the previous
    layer's by more than eps. End: the first layer from the start whose gap comes within eps of
    the highest gap at or after the start (where the rise has finished; a later plateau does not
    extend the block). With no clear rise, every layer is selected and a warning is logged.
    """
    g = [float(x) for x in gap]
    eps = eps_rel * (max(g) - min(g)) if g else 0.0
    start = next((i for i in range(1, len(g)) if g[i] - g[i - 1] > eps), None)
    if start is None or eps == 0.0:
        log.warning("the benign/harmful gap never rises clearly (eps %.3g); using every layer. "
                    "Check the prompt sets, or pass --layers A-B", eps)
        return (0, len(g) - 1), eps, "no clear rise: all layers"
    peak = max(g[start:])
    end = next(i for i in range(start, len(g)) if g[i] >= peak - eps)
    return (start, end), eps, f"first rise > eps at {start}; within eps of the peak at {end}"


def search_layers(benign: ProbeStats, harmful: ProbeStats, eps_rel: float = 0.05) -> LayerSearch:
    bb = mean_pair_cosine_within(benign)
    hh = mean_pair_cosine_within(harmful)
    bh = mean_pair_cosine_between(benign, harmful)
    gap = bb - bh
    selected, eps, rule = select_block(gap.tolist(), eps_rel)
    return LayerSearch(bb.tolist(), bh.tolist(), hh.tolist(), gap.tolist(), selected, eps, rule)


def parse_layers(spec: str | list[int] | None, num_layers: int) -> list[int] | None:
    """`10-15`, `3,5,7`, `10-15,20`, `all` or a list of ints; validated against the model's depth."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(num_layers))
    if isinstance(spec, list | tuple):
        layers = [int(x) for x in spec]
    else:
        layers = []
        for part in str(spec).split(","):
            part = part.strip()
            try:
                if "-" in part:
                    a, b = (int(x) for x in part.split("-", 1))
                    if b < a:
                        raise ValueError
                    layers.extend(range(a, b + 1))
                else:
                    layers.append(int(part))
            except ValueError:
                raise InputError(f"--layers {spec!r}: use A-B (inclusive, 0-based), a comma list, both, or all") from None
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise InputError(f"--layers {spec!r}: layers {bad} out of range; the model has layers 0-{num_layers - 1}")
    return sorted(set(layers))


def plot_layer_search(search: LayerSearch, path, title: str = "Safety-layer search") -> None:
    """PNG of the search curves, drawn on a canvas of its own: pyplot and the caller's backend are
    left alone (a notebook keeps its inline plots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = list(range(len(search.gap)))
    fig = Figure(figsize=(7, 5.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(x, search.bb, label="benign-benign", marker=".")
    ax1.plot(x, search.bh, label="benign-harmful", marker=".")
    ax1.plot(x, search.hh, label="harmful-harmful", marker=".", alpha=0.6)
    ax1.set_ylabel("mean cosine")
    ax1.legend(fontsize=8)
    ax2.plot(x, search.gap, color="black", marker=".")
    a, b = search.selected
    for ax in (ax1, ax2):
        ax.axvspan(a - 0.5, b + 0.5, color="tab:red", alpha=0.12)
    ax2.set_ylabel("gap = BB - BH")
    ax2.set_xlabel("layer")
    ax1.set_title(f"{title}: layers {a}-{b}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
