"""SGDG rollback (Yang, Tao, Chen and Xu, "Alleviating the Fear of Losing Alignment in LLM
Fine-tuning", arXiv 2504.09757; code kangyangWHU/LLMAlignment, `sgdg_rollback_final.py`) at its
published defaults, run by fgsn's iterative reversion (fgsn.edit.revert, whose doc has the
formulas):

    20 rounds; loss -cos(mean last-token hidden state at hidden_states[floor(4L/6)] on (the first)
    256 harmful prompts, the aligned model's mean); candidates (theta - theta_a) * g > 0; the top
    0.1% of all the model's parameters by |g| reverted per round; rollback once when the task
    metric falls below 0.95x the fine-tune's, putting back the 20% of the restored entries with
    the largest |g| of -cos(mean hidden state on task prompts, the fine-tuned model's).

The task metric here is the per-token likelihood exp(-NLL) of the held-out task answers (the
`likelihood` floor: NLL <= NLL_f - ln 0.95), as fgsn has no task-specific metric at edit time.
Only the registry's linear modules are reverted (the budget still counts all parameters); the
reference's five warm-up steps are not reproduced.
"""

from __future__ import annotations

from fgsn.baselines.options import SGDGOptions
from fgsn.edit.revert import run_revert
from fgsn.edit.rewrite import EditResult


def run_sgdg(opts: SGDGOptions) -> EditResult:
    return run_revert(opts, method="sgdg")
