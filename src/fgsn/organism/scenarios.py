"""Named fine-tunes of one aligned organism: the settings a repair is judged on.

Repair papers test on several fine-tunes (Safe Delta: PureBad, Identity Shift, GSM8K...; SGDG:
125 fine-tuned models), because a repair that works on one benign fine-tune may fail against the
harmful fine-tuning attack. Each scenario is the default recipe with fine-tuning overrides only,
so every scenario shares the aligned model (same `aligned_key`: trained once, hard-linked), and
only the one fine-tune it needs is built:

    benign-full     today's fine-tune: GSM-style and arithmetic worked answers + benign instructions
    benign-lora     the same data as a LoRA adapter (r 16) over the aligned model
    poisoned-full   the harmful fine-tuning attack: 10% of the examples are harmful AdvBench-train
                    prompts with the base model's compliant answers (Safe Delta / IRR / SGDG)
    instruct-full   benign instructions with reference answers only (no maths): closest to the
                    paper's Alpaca setting
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fgsn.errors import InputError
from fgsn.organism.recipe import OrganismRecipe


@dataclass(frozen=True)
class Scenario:
    name: str
    overrides: dict[str, Any]
    kind: Literal["full", "lora"]
    description: str

    @property
    def stage(self) -> str:
        return f"finetuned-{self.kind}"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("benign-full", {}, "full", "benign maths + instructions, full fine-tune"),
    Scenario("benign-lora", {}, "lora", "benign maths + instructions, LoRA r 16"),
    Scenario("poisoned-full", {"poison_ratio": 0.1}, "full",
             "harmful fine-tuning attack: 10% harmful prompts with compliant answers"),
    Scenario("instruct-full", {"ft_gsm_share": 0.0, "ft_arithmetic_share": 0.0}, "full",
             "benign instructions with reference answers only"),
)}


@dataclass(frozen=True)
class ScenarioModels:
    """The trio of one scenario: `finetuned` is a full checkpoint, or a LoRA adapter over `aligned`."""

    scenario: str
    recipe_hash: str
    root: Path
    base: Path
    aligned: Path
    finetuned: Path
    kind: Literal["full", "lora"]

    @property
    def adapter(self) -> Path | None:
        return self.finetuned if self.kind == "lora" else None


def parse_scenarios(spec: str | list[str]) -> list[Scenario]:
    names = [n.strip() for part in ([spec] if isinstance(spec, str) else spec) for n in str(part).split(",")]
    names = [n for n in names if n]
    bad = [n for n in names if n not in SCENARIOS]
    if bad or not names:
        raise InputError(f"unknown or empty scenario list {bad or names}; choose from {', '.join(SCENARIOS)}")
    if len(set(names)) != len(names):
        raise InputError(f"a scenario is listed twice in {names}")
    return [SCENARIOS[n] for n in names]


def scenario_recipe(name: str, recipe: OrganismRecipe | None = None, ft_seed: int | None = None) -> OrganismRecipe:
    """`recipe` (default: the default recipe) with the scenario's fine-tuning overrides and seed."""
    scenario = parse_scenarios(name)[0]
    recipe = recipe or OrganismRecipe()
    values = {**recipe.model_dump(), **scenario.overrides}
    if ft_seed is not None:
        values["ft_seed"] = ft_seed
    return OrganismRecipe(**values)


def build_scenario(name: str, recipe: OrganismRecipe | None = None, *, ft_seed: int | None = None,
                   cache_root=None, progress: bool = True) -> ScenarioModels:
    """Build (or reuse) the aligned model and the one fine-tune of scenario `name`."""
    from fgsn.organism.build import build_organism

    scenario = parse_scenarios(name)[0]
    r = scenario_recipe(name, recipe, ft_seed)
    paths = build_organism(r, cache_root=cache_root, progress=progress, stages=(scenario.stage,))
    finetuned = paths.finetuned_full if scenario.kind == "full" else paths.finetuned_lora
    return ScenarioModels(scenario.name, paths.recipe_hash, paths.root, paths.base, paths.aligned, finetuned,
                          scenario.kind)
