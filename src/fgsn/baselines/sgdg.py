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

from typing import Literal

from pydantic import Field

from fgsn.edit.revert import RevertOptions, run_revert
from fgsn.edit.rewrite import EditResult


class SGDGOptions(RevertOptions):
    rounds: int = Field(20, ge=1, description="rounds of scoring and reverting (SGDG: 20)")
    per_round: float = Field(0.001, gt=0, le=1, description="share of all the model's parameters reverted per "
                                                            "round (SGDG's recovery_rate 0.1%)")
    scope: Literal["module", "global"] = Field("global", description="global: the top entries over all target "
                                                                     "modules (SGDG)")
    rank: Literal["delta-grad", "grad"] = Field("grad", description="grad: candidates ordered by |g| (SGDG)")
    loss: Literal["refusal-nll", "cosine"] = Field("cosine", description="cosine: -cos(mean last-token hidden "
                                                                         "state, the aligned model's) (SGDG)")
    harmful_limit: int | None = Field(256, ge=1, description="use only the first N harmful prompts (SGDG: 256)")
    rollback_floor: Literal["gain", "likelihood"] = Field(
        "likelihood", description="likelihood: the task answers' per-token likelihood stays >= 0.95x the "
                                  "fine-tune's (SGDG's rule)")
    rollback_loss: Literal["task-nll", "cosine"] = Field(
        "cosine", description="cosine: importance from -cos(mean hidden state on task prompts, the fine-tuned "
                              "model's) (SGDG's benign loss)")


def run_sgdg(opts: SGDGOptions) -> EditResult:
    return run_revert(opts, method="sgdg")
