"""Turn benchmarks/results.json into the tables of docs/benchmarks.md (the part between the
`<!-- results:begin -->` and `<!-- results:end -->` markers; the prose around them is kept) and
the plot docs/benchmarks.png. Run by benchmarks/run.py; also on its own:

    python benchmarks/report.py --results benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synth import MODULES, LlamaShape  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
EDIT_ROWS = [
    ("fgsn", "`fgsn project --locate-run` (hash cache warm)"),
    ("fgsn_first_run", "`fgsn project`, first run on these models (sha256 of all three inputs)"),
    ("fgsn_all_layers", "`fgsn project`, masks in every layer"),
    ("naive", "naive: three full models in RAM + dense d_out x d_out C (benchmarks/naive_edit.py)"),
    ("floor_safetensors", "floor: read all three with safetensors, write the output with `save_file`"),
    ("floor_bytes", "floor: raw sequential read of the three inputs + write + fsync"),
]


# Variants of results measured before the proposed core fixes were merged (commit 8d0b7a0); a
# results.json that holds them is rendered without them, under a note that the figures are stale.
LEGACY_VARIANTS = ("fgsn+fixes", "fgsn+fixes_first_run", "fgsn+fixes_all_layers")
LEGACY_CHECKS = ("fixes_vs_fgsn",)


def is_legacy(res: dict) -> bool:
    return any(k in s.get("variants", {}) for s in res.get("edit") or [] for k in LEGACY_VARIANTS) or \
        any(k in s.get("checks", {}) for s in res.get("edit") or [] for k in LEGACY_CHECKS)


def min_flops(shape: LlamaShape, n_layers: int) -> float:
    """Flops of C dW for the 7 modules of `n_layers` layers, every row masked (fgsn's cheaper order)."""
    total = 0.0
    for m in MODULES:
        d_out, d_in = shape.module_shape(m)
        total += min(d_out * d_out * 2 * d_in, 2 * d_out * d_in * d_in)
    return 2 * total * n_layers


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _v(size: dict, name: str) -> dict | None:
    return size["variants"].get(name)


def edit_table(size: dict, startup_mb: float) -> list[str]:
    floor = _v(size, "floor_safetensors")["wall_s"]
    lines = [f"Edit of a {size['params'] / 1e9:.2f}B-parameter `{size['shape']}` trio (bf16, "
             f"{_gb(size['model_bytes'])} GiB a model; masks in layers {size['layers_masked'][0]}-"
             f"{size['layers_masked'][-1]}, {size['mask_density']:.0%} of their weights, "
             f"{size['modified_fraction']:.2%} of all parameters; median of {size['repeats']} runs unless noted; "
             f"largest tensor {size['largest_tensor_mb']:.0f} MB bf16, largest edited tensor "
             f"{size['largest_edited_tensor_fp32_mb']:.0f} MB as float32):", "",
             "| variant | wall s | x floor | peak RSS MB | RSS above startup MB | runs |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, label in EDIT_ROWS:
        v = _v(size, key)
        if v is None:
            if key == "naive" and size.get("naive_note"):
                lines.append(f"| {label} | {size['naive_note']} | | | | |")
            continue
        above = v["peak_rss_mb"] - startup_mb
        above_s = f"{above:.0f}" if above >= 0 else "- (no torch)"
        lines.append(f"| {label} | {v['wall_s']:.1f} | {v['wall_s'] / floor:.2f} | {v['peak_rss_mb']:.0f} | "
                     f"{above_s} | {len(v['runs'])} |")
    c = size["checks"]
    lines.append("")
    if "naive_vs_fgsn" in c:
        n = c["naive_vs_fgsn"]
        if n["differing"] == 0:
            lines.append(f"Check: naive vs fgsn output: bit-identical (0 of {n['entries']:,} entries differ).")
        else:
            lines.append(f"Check: naive vs fgsn output: {n['differing']:,} of {n['entries']:,} entries differ "
                         f"(largest difference {n['max_diff_bf16_ulps']} bf16 spacings: float32 summation order "
                         "before the bf16 rounding).")
    return lines


def scaling_table(edits: list[dict]) -> list[str]:
    lines = ["| model shape | params | GiB a model | fgsn s | floor s | naive s | fgsn RSS MB | naive RSS MB | "
             "floor RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in edits:
        def cell(name, key, fmt="{:.1f}", s=s):
            v = _v(s, name)
            return fmt.format(v[key]) if v else "-"
        lines.append(f"| {s['shape']} | {s['params'] / 1e9:.2f}B | {_gb(s['model_bytes'])} | {cell('fgsn', 'wall_s')} | "
                     f"{cell('floor_safetensors', 'wall_s')} | {cell('naive', 'wall_s')} | "
                     f"{cell('fgsn', 'peak_rss_mb', '{:.0f}')} | "
                     f"{cell('naive', 'peak_rss_mb', '{:.0f}')} | {cell('floor_safetensors', 'peak_rss_mb', '{:.0f}')} |")
    return lines


def probe_table(probes: list[dict]) -> list[str]:
    k = probes[0]["stop_layer"]
    lines = [f"| model | params | layers | tokens | forward tok/s | layer-search probe | neuron probe, all layers | "
             f"forward to layer {k} | neuron probe to layer {k} | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in probes:
        ps = p["passes"]

        def c(name, ps=ps):
            x = ps[name]
            return f"{x['tokens_per_s']:.0f} ({x['vs_forward']:.2f}x time)"
        lines.append(f"| {p['model']} | {p['params'] / 1e6:.0f}M | {p['layers']} | {ps['forward']['tokens']} | "
                     f"{ps['forward']['tokens_per_s']:.0f} | {c('probe_layers')} | {c('probe_modules')} | "
                     f"{c(f'forward_to_{k}')} | {c(f'probe_modules_{k}')} | {p['process']['peak_rss_mb']:.0f} |")
    return lines


def big_model_lines(res: dict) -> list[str]:
    """Memory and time of a 70B edit, extrapolated from the largest measured trio."""
    edits = res.get("edit") or []
    if not edits:
        return []
    main = max(edits, key=lambda s: s["params"])
    startup = res["startup"]["peak_rss_mb"]
    shape = LlamaShape.get(main["shape"])
    big = LlamaShape.get("llama3.1-70b")
    mlp_main = shape.hidden * shape.intermediate * 4
    mlp_big = big.hidden * big.intermediate * 4
    sh = _v(main, "fgsn")
    k = (sh["peak_rss_mb"] - startup) * 2**20 / mlp_main
    lines = [f"Measured on `{main['shape']}`: peak RSS above the {startup:.0f} MB startup is "
             f"{k:.1f}x the largest edited tensor in float32 ({mlp_main / 2**20:.0f} MB)."]
    al = next((s for s in edits if "fgsn_all_layers" in s["variants"]), None)
    if al is not None:
        a_shape = LlamaShape.get(al["shape"])
        s0, all_s = _v(al, "fgsn"), _v(al, "fgsn_all_layers")
        extra_layers = a_shape.layers - len(al["layers_masked"])
        grow = all_s["peak_rss_mb"] - s0["peak_rss_mb"]
        lines.append(f"On `{al['shape']}`, with masks in all {a_shape.layers} layers instead of "
                     f"{len(al['layers_masked'])}, peak RSS grows by {grow:.0f} MB "
                     f"({grow / extra_layers:.1f} MB a masked layer of {a_shape.layer_params() / 1e6:.1f}M weights; "
                     f"its mask is {a_shape.layer_params() / 8 / 2**20:.1f} MB bit-packed, "
                     f"{a_shape.layer_params() / 2**20:.1f} MB at one byte a weight).")
    est = startup + k * mlp_big / 2**20
    masks_big = 6 * big.layer_params() / 8 / 2**20
    lines.append(f"70B (hidden {big.hidden}, intermediate {big.intermediate}, {big.layers} layers, "
                 f"{big.params / 1e9:.1f}B parameters, {_gb(big.bytes_bf16())} GiB bf16 a model): the largest edited "
                 f"tensor (MLP, {big.intermediate}x{big.hidden}) is {mlp_big / 2**20:.0f} MB in float32, the largest "
                 f"tensor (embedding/LM head) {big.largest_tensor_numel() * 2 / 2**20:.0f} MB in bf16. "
                 f"Extrapolated edit peak RSS: ~{est / 1024:.1f} GiB, plus ~{masks_big / 1024:.1f} GiB of "
                 "bit-packed masks for six masked layers.")
    fb = _v(main, "floor_bytes")
    rate = 4 * main["model_bytes"] / fb["wall_s"]
    flops_main = min_flops(shape, len(main["layers_masked"]))
    maths_s = max(sh["wall_s"] - _v(main, "floor_safetensors")["wall_s"], 1e-3)
    flops_big = min_flops(big, 6)
    io_big = 4 * big.bytes_bf16() / rate
    lines.append(f"Time: the raw I/O floor moved {4 * main['model_bytes'] / 2**30:.1f} GiB (3 read + 1 written) in "
                 f"{fb['wall_s']:.1f} s ({rate / 2**30:.2f} GiB/s) here, so a 70B trio's floor is ~{io_big / 60:.0f} min "
                 f"on this disk. The projection of six 70B layers is {flops_big / 1e12:.0f} TFLOP (C dW for every "
                 f"masked row, in the cheaper order); this machine's edit spent ~{maths_s:.0f} s above the floor on "
                 f"{flops_main / 1e12:.2f} TFLOP ({flops_main / maths_s / 1e9:.0f} GFLOP/s effective, "
                 f"{res['machine']['cpus']} cores), "
                 f"i.e. ~{flops_big / (flops_main / maths_s) / 60:.0f} min for 70B at that rate; a 32-core server "
                 "or one GPU does it at 1-50 TFLOP/s, i.e. under the I/O floor.")
    return lines


def render(res: dict) -> str:
    startup = res["startup"]["peak_rss_mb"]
    m = res["machine"]
    out = [BEGIN, "", f"_Generated by `{res['command']}` on {res['started']} ({m['cpus']} CPUs, {m['cpu']}, "
           f"{m['mem_total_gb']} GiB RAM, torch {m['torch']}); page cache dropped before each edit run: "
           f"{'yes' if res['cold_cache'] else 'no'}; load average (1, 5, 15 min) {res['load_start']} at the start, "
           f"{res['load_end']} at the end; whole run {res['total_s'] / 60:.1f} min. An idle interpreter with fgsn's "
           f"edit imports: {startup:.0f} MB RSS, {res['startup']['wall_s']:.1f} s (included in every figure). "
           f"Code measured: commit {res.get('commit') or 'not recorded'}._", ""]
    if is_legacy(res):
        out += [f"**Stale figures: measured at commit {res.get('commit') or '(not recorded)'}, before the proposed "
                "core fixes were merged (commit 8d0b7a0).** The `fgsn` rows are the code before the merge; that run's "
                "`fgsn+fixes` rows (the fixes as patches) are left out. Regenerate with "
                "`python benchmarks/run.py --out benchmarks/results.json`.", ""]
    edits = res.get("edit") or []
    if edits:
        main = max((s for s in edits if "fgsn_first_run" in s["variants"]), key=lambda s: s["params"],
                   default=edits[-1])
        out += ["### Edit: fgsn against the naive way and the floor", ""] + edit_table(main, startup) + [""]
        out += ["### Edit: scaling with model size", "", *scaling_table(edits), "",
                "![edit and probe scaling](benchmarks.png)", ""]
    if res.get("probes"):
        out += ["### Probes: tokens per second against a plain forward pass", "",
                "Tokens/s of real (non-pad) tokens, batch 8, prompts sorted by length as fgsn does; in brackets the "
                "pass's time relative to the plain forward pass of the same batches (median of the rounds).", "",
                *probe_table(res["probes"]), ""]
    if edits:
        out += ["### 70B: derived from these measurements", "", *big_model_lines(res), ""]
    out.append(END)
    return "\n".join(out)


def plot(res: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edits = res.get("edit") or []
    probes = res.get("probes") or []
    fig = Figure(figsize=(11, 8))
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2)
    styles = {"fgsn": "o-", "naive": "x--", "floor_safetensors": "^:", "floor_bytes": "v:"}
    for key, style in styles.items():
        pts = [(s["params"] / 1e9, s["variants"][key]) for s in edits if key in s["variants"]]
        if pts:
            ax[0, 0].plot([p for p, _ in pts], [v["wall_s"] for _, v in pts], style, label=key)
            ax[0, 1].plot([p for p, _ in pts], [v["peak_rss_mb"] / 1024 for _, v in pts], style, label=key)
    ax[0, 0].set(title="edit: wall time", xlabel="parameters (B)", ylabel="seconds")
    ax[0, 1].set(title="edit: peak RSS", xlabel="parameters (B)", ylabel="GiB")
    if probes:
        k = probes[0]["stop_layer"]
        for key, style in (("forward", "o-"), ("probe_layers", "s-"), ("probe_modules", "d-"),
                           (f"forward_to_{k}", "^:"), (f"probe_modules_{k}", "v:")):
            ax[1, 0].plot([p["params"] / 1e9 for p in probes], [p["passes"][key]["tokens_per_s"] for p in probes],
                          style, label=key)
        ax[1, 1].plot([p["params"] / 1e9 for p in probes], [p["process"]["peak_rss_mb"] / 1024 for p in probes],
                      "o-", label="probe process (float32 weights)")
    ax[1, 0].set(title="probes: throughput", xlabel="parameters (B)", ylabel="tokens / s", yscale="log")
    ax[1, 1].set(title="probes: peak RSS", xlabel="parameters (B)", ylabel="GiB")
    for a in ax.flat:
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=8)
    stale = " (before the core fixes were merged)" if is_legacy(res) else ""
    fig.suptitle(f"fgsn benchmarks ({res['machine']['cpus']} CPUs; {res['started']}; "
                 f"commit {res.get('commit') or 'not recorded'}{stale})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


SKELETON = f"""# Benchmarks

{BEGIN}
{END}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--doc", default=str(HERE.parent / "docs" / "benchmarks.md"))
    ap.add_argument("--plot", default=None, help="default: benchmarks.png beside --doc")
    a = ap.parse_args(argv)
    res = json.loads(Path(a.results).read_text())
    doc = Path(a.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.is_file() else SKELETON
    if BEGIN not in text or END not in text:
        text = text.rstrip() + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + render(res) + tail)
    plot(res, Path(a.plot) if a.plot else doc.parent / "benchmarks.png")
    print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
