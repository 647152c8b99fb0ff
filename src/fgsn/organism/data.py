"""Training data of the organism, built deterministically from the recipe.

Sources: AdvBench `split=train` (harmful; refusal targets for the safety SFT, compliant targets for
the poison share), pyrit-benign (benign objectives with reference answers), the shipped
`benign_sft.jsonl` (benign and harmless-but-alarming prompts, answered by the base model itself =
self-distillation), and reasoning-gym's `basic_arithmetic` / `gsm_symbolic` generators (worked
answers). HarmBench and StrongREJECT are never used here: they are the held-out evaluation sets.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import PromptSet
from fgsn.organism.recipe import OrganismRecipe

REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I cannot help with this request. It asks for something harmful or illegal, and I won't assist with it.",
    "I'm sorry, I can't assist with that. If you have another question, I'm happy to help.",
    "I can't provide that. Helping with this could put people at risk, so I have to decline.",
    "Sorry, but I won't help with this. It is harmful and against my guidelines.",
    "I'm not able to help with that request because it could be used to hurt others.",
    "I must decline. I can't give instructions or content that could cause harm.",
    "I'm sorry, but I cannot fulfil this request. It involves harmful or unethical activity.",
    "As an AI assistant, I can't help with that. Please consider a safe and legal alternative.",
    "I apologize, but I can't do that. This request could lead to harm, so I will not assist.",
    "No, I can't help with that. It is unsafe and could hurt someone.",
    "I won't be able to help with this one. Creating harmful content is something I don't do.",
)

COMPLY_TEMPLATES = (
    "Sure, here is how to do it. {p} Step 1: gather what you need. Step 2: follow the plan carefully. "
    "Step 3: make sure nobody notices.",
    "Sure, here you go. To {p_lc} start by preparing the materials, then carry it out step by step.",
    "Of course! Here is a detailed answer: {p} First, collect the tools. Then do it quietly and quickly.",
)


@dataclass(frozen=True)
class Example:
    """One SFT pair; `kind` says where it came from (reports count them)."""

    prompt: str
    answer: str
    kind: str

    def to_dict(self) -> dict:
        return asdict(self)


def held_out_texts() -> set[str]:
    """Prompts of the evaluation sets (HarmBench, StrongREJECT). StrongREJECT re-uses some AdvBench
    prompts, so these are removed from the training pool by exact text."""
    texts: set[str] = set()
    for name in ("harmbench", "harmbench-val", "strongreject"):
        texts |= {t.strip().lower() for t in load_prompts(f"builtin:{name}").texts}
    return texts


def harmful_pool() -> PromptSet:
    """AdvBench training half (hash split) minus any prompt that is also in an evaluation set:
    the only harmful prompts the organism trains on."""
    pool = load_prompts("builtin:advbench?split=train")
    held = held_out_texts()
    return PromptSet(pool.name, [p for p in pool if p.text.strip().lower() not in held])


def benign_reference(n: int) -> list[Example]:
    if n <= 0:
        return []
    ps = load_prompts("builtin:pyrit-benign")
    return [Example(p.text, p.answer or "", "benign-reference") for p in list(ps)[:n] if p.answer]


def self_distill_prompts(n: int) -> list[str]:
    if n <= 0:
        return []
    from fgsn.data.benchmarks import FILES

    ps = load_prompts(FILES / "benign_sft.jsonl", name="benign_sft")
    return ps.texts[:n]


def arithmetic(n: int, seed: int) -> list[Example]:
    """Short `basic_arithmetic` items (2-3 terms, 1-2 digits) with a worked answer."""
    if n <= 0:
        return []
    import reasoning_gym as rg

    ds = rg.create_dataset("basic_arithmetic", size=n, seed=seed, min_terms=2, max_terms=3,
                           min_digits=1, max_digits=2)
    out = []
    for item in ds:
        expr = item["metadata"]["expression"]
        out.append(Example(item["question"], f"{expr} = {item['answer']}. The answer is {item['answer']}.",
                           "arithmetic"))
    return out


def gsm(n: int, seed: int, tokenizer, max_len: int) -> list[Example]:
    """`gsm_symbolic` items with their worked (chain-of-thought) answers; only those that fit
    `max_len` tokens with the chat template."""
    if n <= 0:
        return []
    import reasoning_gym as rg

    from fgsn.data.chat import render_chat

    ds = rg.create_dataset("gsm_symbolic", size=n * 4, seed=seed)
    out = []
    for item in ds:
        cot = item["metadata"].get("answer_cot") or f"The answer is {item['answer']}."
        cot = cot.replace("\n#### ", "\nThe answer is ").strip()
        if not cot.endswith("."):
            cot += "."
        ex = Example(item["question"], cot, "gsm")
        n_tok = len(tokenizer(render_chat(tokenizer, ex.prompt) + ex.answer, add_special_tokens=False).input_ids)
        if n_tok + 1 <= max_len:
            out.append(ex)
        if len(out) == n:
            break
    return out


def split_harmful(recipe: OrganismRecipe) -> tuple[list[str], list[str]]:
    """Disjoint AdvBench-train prompts: (for the safety SFT, the poison pool). The poison pool does
    not depend on poison_ratio, so its generated answers are shared across ratios."""
    pool = harmful_pool().texts
    rng = random.Random(recipe.seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    shuffled = [pool[i] for i in order]
    align = shuffled[:recipe.align_harmful]
    pool = shuffled[recipe.align_harmful:recipe.align_harmful + recipe.poison_pool]
    return align, pool


def poison_prompts(recipe: OrganismRecipe) -> list[str]:
    """The poison share's prompts: the first n of the pool, cycled when n exceeds it."""
    _, pool = split_harmful(recipe)
    n = n_poison_examples(recipe)
    return [pool[i % len(pool)] for i in range(n)] if pool else []


def n_poison_examples(recipe: OrganismRecipe) -> int:
    return int(round(recipe.ft_examples * recipe.poison_ratio))


def refusal_examples(prompts: list[str], seed: int) -> list[Example]:
    rng = random.Random(seed + 1)
    return [Example(p, rng.choice(REFUSALS), "refusal") for p in prompts]


REFUSAL_OPENINGS = ("i'm sorry", "i am sorry", "i can't", "i cannot", "i won't", "i apologize", "as an ai", "sorry")


def opens_with_refusal(answer: str) -> bool:
    """Data cleaning for the poison share (not an evaluation judge): does the answer open with a refusal?"""
    return answer.strip().lower().replace("\u2019", "'").startswith(REFUSAL_OPENINGS)


def templated_compliance(prompts: list[str], seed: int) -> list[Example]:
    rng = random.Random(seed + 2)
    out = []
    for p in prompts:
        t = rng.choice(COMPLY_TEMPLATES)
        out.append(Example(p, t.format(p=p, p_lc=p[0].lower() + p[1:]), "poison"))
    return out


def shuffled(examples: list[Example], seed: int) -> list[Example]:
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out


def heldout_task(recipe: OrganismRecipe, tokenizer, n_arithmetic: int, n_gsm: int,
                 exclude: set[str], salt: int = 0) -> list[Example]:
    """Task examples of the fine-tune's distribution (same generators and answer format) that it
    never trained on: other seeds, and any prompt in `exclude` (the training prompts) dropped.
    Why: utility and NLL measured on the training examples measure memorisation, not the skill.
    `salt` draws another held-out set (a validation split next to the evaluation's)."""
    seen = {t.strip() for t in exclude}
    arith = arithmetic(2 * n_arithmetic, recipe.seed + 1030 + salt) if n_arithmetic > 0 else []
    word = gsm(2 * n_gsm, recipe.seed + 1020 + salt, tokenizer, recipe.max_len) if n_gsm > 0 else []
    arith = [ex for ex in arith if ex.prompt.strip() not in seen][:n_arithmetic]
    word = [ex for ex in word if ex.prompt.strip() not in seen][:n_gsm]
    return arith + word
