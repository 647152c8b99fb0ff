"""Judges behind one interface (`Judge.judge(items) -> verdicts`): keyword, openai, local."""

from __future__ import annotations

from fgsn.errors import ConfigError
from fgsn.evaluate.judges.base import Judge, JudgeItem, Verdict
from fgsn.evaluate.judges.keyword import LISTS, KeywordJudge, KeywordMatcher

JUDGES = ("keyword", "openai", "local")

__all__ = ["JUDGES", "LISTS", "Judge", "JudgeItem", "KeywordJudge", "KeywordMatcher", "Verdict", "make_judge"]


def make_judge(kind: str, options=None) -> Judge:
    """Build a judge from its name and `EvalOptions` (validated here, before any generation)."""
    from fgsn.evaluate.options import EvalOptions

    o = options or EvalOptions()
    if kind == "keyword":
        return KeywordJudge(o.keyword_list, o.keyword_min_words)
    if kind == "openai":
        from fgsn.evaluate.judges.openai import OpenAIJudge

        return OpenAIJudge(o.judge_url, o.judge_model, o.judge_key_env, timeout=o.judge_timeout,
                           retries=o.judge_retries, backoff=o.judge_backoff, workers=o.judge_workers,
                           success_score=o.judge_success_score)
    if kind == "local":
        from fgsn.evaluate.judges.local import LocalJudge

        return LocalJudge(o.judge_path, device=o.device, dtype=o.dtype, batch_size=o.batch_size,
                          max_new_tokens=o.judge_max_new_tokens, trust_remote_code=o.trust_remote_code,
                          allow_pickle=o.allow_pickle)
    raise ConfigError(f"unknown judge {kind!r}; use one of {', '.join(JUDGES)}")
