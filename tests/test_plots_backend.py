"""Library code draws its figures on its own Agg canvas and never touches pyplot or the backend,
so that a notebook user of fgsn.api keeps inline plots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")  # the user's choice (a notebook would have its inline backend)
out = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])

import fgsn.cli, fgsn.api, fgsn.pipeline.sweep, fgsn.locate.run, fgsn.pipeline.project, fgsn.report.write  # noqa: E401
from fgsn.artifacts.locate_run import LayerSearch
from fgsn.locate.layers import plot_layer_search
from fgsn.pipeline.sweep import plot_frontier
import report as bench_report

fgsn.cli.build_parser()
plot_layer_search(LayerSearch([0.9, 0.8, 0.7], [0.9, 0.5, 0.4], [0.9, 0.9, 0.8], [0.0, 0.3, 0.3], (1, 2), 0.05,
                              "test"), out / "ls.png")
pt = {"name": "wanda_0.1", "score": "wanda", "budget": 0.1, "asr": 0.2, "over_refusal": 0.1, "utility": 0.5,
      "nll": 1.0, "modified_fraction": 0.01, "modified_fraction_edited": 0.1}
ref = {"asr": 0.5, "over_refusal": 0.1, "utility": 0.5, "nll": 1.0}
plot_frontier({"points": [pt], "references": {"aligned": ref, "finetuned": ref},
               "baselines": {"resta": {**ref, "modified_fraction_edited": 0.9}}}, out / "frontier.png")
bench_report.plot(json.loads(Path(sys.argv[3]).read_text()), out / "bench.png")
print(json.dumps({"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules,
                  "sizes": [p.stat().st_size for p in sorted(out.glob("*.png"))]}))
"""


def test_figures_leave_the_backend_alone(tmp_path):
    import json

    root = Path(__file__).resolve().parents[1]
    results = root / "benchmarks" / "results.json"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(root / "benchmarks"), str(results)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "svg"
    assert not got["pyplot"]
    assert len(got["sizes"]) == 3 and min(got["sizes"]) > 1000
