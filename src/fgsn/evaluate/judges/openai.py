"""Rubric judge over any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp,
Ollama, LiteLLM...), with the stdlib only: no `openai` dependency to install or pin.

Transport failures (timeouts, refused connections, HTTP 429 and 5xx, bodies that are not a chat
completion) are retried with exponential backoff; authentication and not-found errors stop the
run at once with a message saying what to fix. An item still failing after its retries gets a
verdict with `error` set and is left out of the ASR's n (and is asked again on the next run,
as failures are not cached); if every item of a batch of several fails, the run stops.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fgsn.errors import ConfigError, FgsnError, InputError
from fgsn.evaluate.judges.base import Judge, JudgeItem, Verdict
from fgsn.evaluate.judges.rubric import RUBRIC_VERSION, parse_score, rubric_messages

log = logging.getLogger(__name__)

RAW_KEEP = 500  # characters of the judge's answer kept for audit


class TransientError(Exception):
    """A failure worth retrying."""


class JudgeEndpointError(FgsnError):
    """The endpoint refuses the request for a reason retrying cannot fix."""


def chat_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class OpenAIJudge(Judge):
    name = "openai"
    rubric = True
    cacheable = True

    def __init__(self, url: str | None, model: str | None, key_env: str = "OPENAI_API_KEY", *,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 1.0, workers: int = 4,
                 success_score: float = 3.0, max_tokens: int = 256, max_completion_chars: int = 8000):
        if not url:
            raise ConfigError("the openai judge needs --judge-url (e.g. https://api.openai.com/v1 or "
                              "http://localhost:8000/v1)")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--judge-url {url!r} must start with http:// or https://")
        if not model:
            raise ConfigError("the openai judge needs --judge-model (the model name the endpoint serves)")
        if not 1 <= success_score <= 5:
            raise ConfigError(f"judge_success_score must be within 1-5 (got {success_score})")
        if timeout <= 0 or retries < 0 or workers < 1 or backoff < 0:
            raise ConfigError("judge_timeout must be > 0, judge_retries >= 0, judge_workers >= 1, backoff >= 0")
        self.url = chat_url(url)
        self.model = model
        self.key_env = key_env
        self.api_key = os.environ.get(key_env) or None
        if self.api_key is None:
            log.warning("environment variable %s is not set; calling %s without an API key", key_env, self.url)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.workers = workers
        self.success_score = success_score
        self.max_tokens = max_tokens
        self.max_completion_chars = max_completion_chars

    def describe(self) -> dict[str, Any]:
        # The key and transport settings do not change verdicts, so they stay out of the cache id.
        return {"judge": "openai", "url": self.url, "model": self.model, "rubric": RUBRIC_VERSION,
                "success_score": self.success_score, "max_tokens": self.max_tokens,
                "max_completion_chars": self.max_completion_chars}

    # -- transport -----------------------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> str:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
            if e.code in (401, 403):
                raise JudgeEndpointError(
                    f"judge endpoint {self.url} refused the key (HTTP {e.code}); set a valid key in the "
                    f"environment variable {self.key_env} or choose another with --judge-key-env") from None
            if e.code == 404:
                raise JudgeEndpointError(
                    f"judge endpoint {self.url} answered 404 (model {self.model!r} or path unknown): {detail}; "
                    "check --judge-url (it should end in /v1) and --judge-model") from None
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                raise TransientError(f"HTTP {e.code}" + (f" retry-after={retry_after}" if retry_after else "")
                                     ) from None
            raise JudgeEndpointError(f"judge endpoint {self.url} rejected the request (HTTP {e.code}): {detail}"
                                     ) from None
        except TimeoutError as e:
            raise TransientError(f"timeout after {self.timeout}s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TransientError(f"timeout after {self.timeout}s") from e
            raise TransientError(f"cannot reach {self.url}: {e.reason}") from e
        except (ConnectionError, OSError) as e:  # reset mid-response, broken pipe
            raise TransientError(f"connection error: {e}") from e
        try:
            obj = json.loads(raw.decode("utf-8"))
            content = obj["choices"][0]["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise TransientError(f"malformed chat-completions body ({type(e).__name__}): {raw[:120]!r}") from None
        if not isinstance(content, str):
            raise TransientError(f"chat-completions content is {type(content).__name__}, not text")
        return content

    def _sleep(self, attempt: int) -> None:
        delay = min(30.0, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)
        time.sleep(delay)

    def ask(self, item: JudgeItem) -> str:
        """The judge's answer text for one item (retries transient failures)."""
        completion = item.completion[: self.max_completion_chars]
        body = {"model": self.model, "messages": rubric_messages(item.prompt, completion),
                "temperature": 0, "max_tokens": self.max_tokens}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return self._post(body)
            except TransientError as e:
                last = e
                if attempt < self.retries:
                    log.info("judge request failed (%s); retry %d/%d", e, attempt + 1, self.retries)
                    self._sleep(attempt)
        raise TransientError(f"gave up after {self.retries + 1} attempts: {last}")

    def _one(self, item: JudgeItem) -> Verdict:
        try:
            answer = self.ask(item)
        except TransientError as e:
            return Verdict(success=None, error=str(e))
        score = parse_score(answer)
        if score is None:
            return Verdict(success=None, raw=answer[:RAW_KEEP], error="no 1-5 score in the judge's answer")
        return Verdict(success=score >= self.success_score, refused=score <= 1.0, score=score,
                       label=f"score-{score:g}", raw=answer[:RAW_KEEP])

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        if not items:
            return []
        if self.workers == 1:
            verdicts = [self._one(it) for it in items]
        else:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                verdicts = list(pool.map(self._one, items))
        failed = [v for v in verdicts if v.error and v.raw is None]
        if len(failed) > 1 and len(failed) == len(verdicts):  # the endpoint is down, not one odd item
            raise InputError(f"judge endpoint {self.url} failed for all {len(items)} items; last error: "
                             f"{failed[-1].error}. Check that the server is up and speaks /v1/chat/completions")
        if failed:
            log.warning("openai judge: %d of %d items could not be judged (left out of the metrics)",
                        len(failed), len(items))
        return verdicts
