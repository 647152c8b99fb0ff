"""The report's figures as PNG bytes (matplotlib's Agg canvas; pyplot is never imported, so the
caller's matplotlib backend and global state are left alone).

- per-category ASR of every model (grouped bars);
- safety-layer search curves (S_BB, S_BH, S_HH, gap) from a manifest's `layer_search`;
- mask density per layer and module type from a manifest's `modules`;
- continual runs: ASR of every category after each step, models ordered by `ledger_step`.
A figure whose data is absent is skipped, never drawn empty.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Figure:
    id: str
    title: str
    filename: str
    png: bytes
    caption: str


def _canvas(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def category_asr(results: dict[str, Any]) -> Figure | None:
    order = results["order"]
    cats = sorted({c for n in order for c, d in results["models"][n]["categories"].items() if d.get("asr") is not None})
    if not cats:
        return None
    fig = _canvas(max(6.0, 0.9 * len(cats) * max(1, len(order)) ** 0.5 + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(cats))
    width = 0.8 / len(order)
    for k, name in enumerate(order):
        cd = results["models"][name]["categories"]
        vals = [100 * cd[c]["asr"] if c in cd and cd[c]["asr"] is not None else np.nan for c in cats]
        ax.bar(x + (k - (len(order) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Attack success rate by harm category")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Figure("category-asr", "ASR by harm category", "category_asr.png", _png(fig),
                  "Share of harmful prompts answered (primary judge), per category and model.")


def gap_curves(name: str, layer_search: dict[str, Any]) -> Figure | None:
    curves = layer_search.get("curves") if isinstance(layer_search, dict) else None
    if not isinstance(curves, dict):
        return None
    labels = {"bb": "S_BB (benign-benign)", "bh": "S_BH (benign-harmful)", "hh": "S_HH (harmful-harmful)",
              "gap": "gap = S_BB - S_BH"}
    series = {k: v for k, v in curves.items() if isinstance(v, list) and v and
              all(isinstance(x, int | float) for x in v)}
    if not series:
        return None
    fig = _canvas(6.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    gap_ax = ax.twinx() if "gap" in series and len(series) > 1 else None
    for k, v in series.items():
        target = gap_ax if (k == "gap" and gap_ax is not None) else ax
        target.plot(range(len(v)), v, marker="o", ms=3, label=labels.get(k, k),
                    color="black" if k == "gap" else None, ls="--" if k == "gap" else "-")
    sel = layer_search.get("selected")
    if isinstance(sel, list | tuple) and len(sel) == 2 and all(isinstance(s, int) for s in sel):
        ax.axvspan(sel[0] - 0.5, sel[1] + 0.5, color="tab:red", alpha=0.12, label=f"selected {sel[0]}-{sel[1]}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("mean cosine similarity")
    if gap_ax is not None:
        gap_ax.set_ylabel("gap")
    handles, lbls = ax.get_legend_handles_labels()
    if gap_ax is not None:
        h2, l2 = gap_ax.get_legend_handles_labels()
        handles, lbls = handles + h2, lbls + l2
    ax.legend(handles, lbls, fontsize=8, loc="best")
    ax.set_title(f"Safety-layer search ({name})")
    ax.grid(alpha=0.3)
    return Figure(f"gap-{name}", f"Safety-layer search: {name}", f"layer_gap_{SAFE.sub('_', name)}.png", _png(fig),
                  "Last-token hidden-state similarity per layer; the shaded block is the layer range edited.")


_LAYER_RX = re.compile(r"\.(\d+)\.")


def _module_type(m: dict[str, Any]) -> str:
    """`q_proj` from a manifest entry: its `module` field, else the tensor name without `.weight`."""
    if isinstance(m.get("module"), str) and m["module"]:
        return m["module"].rsplit(".", 1)[-1]
    name = str(m["name"]).removesuffix(".weight").removesuffix(".bias")
    return name.rsplit(".", 1)[-1]


def _layer(m: dict[str, Any]) -> int:
    if m.get("layer") is not None:
        return int(m["layer"])
    hit = _LAYER_RX.search(str(m["name"]))
    if hit is None:
        raise ValueError("no layer")
    return int(hit.group(1))


def density_grid(modules: list[dict[str, Any]]) -> tuple[list[str], list[int], np.ndarray] | None:
    """(module types, layers, % masked per type x layer; NaN where nothing was targeted)."""
    agg: dict[tuple[str, int], list[int]] = {}
    for m in modules if isinstance(modules, list) else []:
        try:
            layer, numel, masked = _layer(m), int(m["numel"]), int(m["masked"])
            key = (_module_type(m), layer)
        except (KeyError, TypeError, ValueError):
            continue
        if numel <= 0:
            continue
        s = agg.setdefault(key, [0, 0])
        s[0] += masked
        s[1] += numel
    if not agg:
        return None
    types = sorted({t for t, _ in agg})
    layers = sorted({ly for _, ly in agg})
    grid = np.full((len(types), len(layers)), np.nan)
    for (t, ly), (k, n) in agg.items():
        grid[types.index(t), layers.index(ly)] = 100.0 * k / n
    return types, layers, grid


def mask_density(name: str, modules: list[dict[str, Any]]) -> Figure | None:
    dg = density_grid(modules)
    if dg is None:
        return None
    types, layers, grid = dg
    fig = _canvas(max(5.0, 0.35 * len(layers) + 2.5), max(2.5, 0.4 * len(types) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([str(ly) for ly in layers], fontsize=7)
    ax.set_yticks(range(len(types)))
    ax.set_yticklabels(types, fontsize=8)
    ax.set_xlabel("layer")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("% of weights masked")
    ax.set_title(f"Mask density per layer and module ({name})")
    return Figure(f"mask-{name}", f"Mask density: {name}", f"mask_density_{SAFE.sub('_', name)}.png", _png(fig),
                  "Share of each module's weights that the edit changed (blank: module not edited).")


def continual(results: dict[str, Any]) -> Figure | None:
    steps = [(results["models"][n]["ledger_step"], n) for n in results["order"]
             if results["models"][n].get("ledger_step") is not None]
    if not steps:
        return None
    steps.sort()
    cats = sorted({c for _, n in steps for c in results["models"][n]["categories"]})
    if not cats:
        return None
    fig = _canvas(6.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    xs = [s for s, _ in steps]
    for c in cats:
        ys = [results["models"][n]["categories"].get(c, {}).get("asr") for _, n in steps]
        ax.plot(xs, [100 * y if y is not None else np.nan for y in ys], marker="o", label=c)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{s}\n{n}" for s, n in steps], fontsize=7)
    ax.set_xlabel("continual step (model)")
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(0, 105)
    ax.set_title("ASR of every category after each continual step")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return Figure("continual", "Continual repair: ASR per category after each step", "continual_asr.png",
                  _png(fig), "Models ordered by their manifest's ledger_step; a rising line is forgetting.")


def bench_frontier(summary: dict[str, Any], scenarios: list[str]) -> Figure | None:
    """One panel per scenario: task NLL (x) against ASR (y) of every model; lower-left is better."""
    panels = [s for s in scenarios if any(s in m["scenarios"] for m in summary.values())]
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig = _canvas(5.2 * cols, 3.9 * rows)
    markers = "osD^vP*Xhp<>"
    for k, sc in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for j, (name, m) in enumerate(summary.items()):
            r = m["scenarios"].get(sc)
            if not r or r.get("asr") is None or r.get("nll") is None:
                continue
            ref = name in ("aligned", "finetuned", "base")
            ax.scatter([r["nll"]], [100 * r["asr"]], marker=markers[j % len(markers)], s=60 if ref else 42,
                       color="black" if ref else None, label=name, zorder=3)
        ax.set_title(sc, fontsize=10)
        ax.set_xlabel("held-out task NLL (lower: task kept)")
        ax.set_ylabel("held-out ASR (%)")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, ncol=2)
    return Figure("bench-frontier", "Safety / task trade-off per scenario", "bench_frontier.png", _png(fig),
                  "Every model of every scenario: lower-left is better; the references are black.")


def make_figures(results: dict[str, Any], manifests: dict[str, dict[str, Any] | None]) -> list[Figure]:
    figs: list[Figure | None] = [category_asr(results), continual(results)]
    seen_searches: set[str] = set()
    for name in results["order"]:
        man = manifests.get(name) or {}
        ls = man.get("layer_search")
        if ls:
            key = json.dumps(ls, sort_keys=True, default=str)
            if key not in seen_searches:  # continual steps share one layer search
                seen_searches.add(key)
                figs.append(gap_curves(name, ls))
        if man.get("modules"):
            figs.append(mask_density(name, man["modules"]))
    return [f for f in figs if f is not None]
