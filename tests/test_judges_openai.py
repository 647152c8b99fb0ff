"""The openai judge against a real HTTP server on 127.0.0.1 speaking chat completions, with
scripted good, malformed, slow, failing and unparseable answers."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fgsn.errors import FgsnError, InputError
from fgsn.evaluate.api import judge_cached
from fgsn.evaluate.cache import EvalCache
from fgsn.evaluate.judges import JudgeItem, make_judge
from fgsn.evaluate.judges.openai import OpenAIJudge, chat_url
from fgsn.evaluate.options import EvalOptions


class Script:
    """Behaviour chosen by a marker in the judged completion, with per-marker attempt counts."""

    def __init__(self):
        self.calls: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # keep pytest output clean
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json", extra: dict | None = None):
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def _content(self, text: str) -> bytes:
            return json.dumps({"id": "x", "object": "chat.completion",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n))
            completion = body["messages"][-1]["content"].split("[AI RESPONSE]\n", 1)[1]
            marker = re.search(r"<<(\w+)>>", completion).group(1)
            with script.lock:
                script.calls[marker] += 1
                attempt = script.calls[marker]
                script.headers.append(dict(self.headers))
                script.bodies.append(body)
            if self.path != "/v1/chat/completions":
                return self._send(404, b'{"error": "not found"}')
            if marker.startswith("score"):
                return self._send(200, self._content(f"#thereason: scripted.\n#thescore: {marker[-1]}"))
            if marker == "malformed" and attempt == 1:
                return self._send(200, b"<html>gateway</html>", "text/html")
            if marker == "nochoices" and attempt == 1:
                return self._send(200, b'{"choices": []}')
            if marker == "slow" and attempt == 1:
                time.sleep(1.0)
            if marker == "flaky" and attempt <= 2:
                return self._send(503, b'{"error": "busy"}', extra={"Retry-After": "0"})
            if marker == "ratelimit" and attempt == 1:
                return self._send(429, b'{"error": "slow down"}')
            if marker == "down":
                return self._send(500, b'{"error": "boom"}')
            if marker == "garbage":
                return self._send(200, self._content("I think this is somewhat concerning."))
            if marker == "denied":
                return self._send(401, b'{"error": "bad key"}')
            if marker == "badrequest":
                return self._send(400, b'{"error": "context too long"}')
            return self._send(200, self._content("#thereason: ok\n#thescore: 4"))

    return Handler


@pytest.fixture()
def server():
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def judge(url: str, **kw) -> OpenAIJudge:
    kw = {"timeout": 0.4, "retries": 3, "backoff": 0.01, "workers": 1} | kw
    return OpenAIJudge(url, "judge-model", **kw)


def test_scores_parsed_and_success_threshold(server, monkeypatch):
    url, script = server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    items = [JudgeItem("p", f"<<score{k}>>") for k in (1, 2, 3, 5)]
    v = judge(url).judge(items)
    assert [x.score for x in v] == [1.0, 2.0, 3.0, 5.0]
    assert [x.success for x in v] == [False, False, True, True]
    assert [x.refused for x in v] == [True, False, False, False]
    assert script.headers[0]["Authorization"] == "Bearer sk-test"
    b = script.bodies[0]
    assert b["model"] == "judge-model" and b["temperature"] == 0 and b["messages"][0]["role"] == "system"
    assert [x.success for x in judge(url, success_score=5).judge(items)] == [False, False, False, True]


def test_key_from_named_env_var_and_no_key(server, monkeypatch):
    url, script = server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MY_JUDGE_KEY", "k2")
    judge(url, key_env="MY_JUDGE_KEY").judge([JudgeItem("p", "<<score1>>")])
    judge(url, key_env="UNSET_VAR_FOR_TEST").judge([JudgeItem("p", "<<score2>>")])
    assert script.headers[0]["Authorization"] == "Bearer k2"
    assert "Authorization" not in script.headers[1]


@pytest.mark.parametrize("marker,calls", [("malformed", 2), ("nochoices", 2), ("slow", 2), ("flaky", 3),
                                          ("ratelimit", 2)])
def test_transient_failures_are_retried(server, marker, calls):
    url, script = server
    (v,) = judge(url).judge([JudgeItem("p", f"<<{marker}>>")])
    assert v.score == 4.0 and v.success is True and v.error is None
    assert script.calls[marker] == calls


def test_gives_up_after_retries_then_item_is_unjudged(server):
    url, script = server
    v = judge(url, retries=2).judge([JudgeItem("p", "<<down>>"), JudgeItem("p", "<<score5>>")])
    assert v[0].success is None and "gave up after 3 attempts" in v[0].error and "HTTP 500" in v[0].error
    assert v[1].score == 5.0
    assert script.calls["down"] == 3


def test_all_items_failing_stops_the_run(server):
    url, _ = server
    with pytest.raises(InputError, match="failed for all 2 items"):
        judge(url, retries=1).judge([JudgeItem("p", "<<down>>"), JudgeItem("q", "<<down>>")])


def test_timeout_without_retry_is_reported(server):
    url, script = server
    v = judge(url, retries=0, timeout=0.2).judge([JudgeItem("p", "<<slow>>"), JudgeItem("p", "<<score1>>")])
    assert v[0].success is None and "timeout" in v[0].error
    assert script.calls["slow"] == 1


def test_unparseable_answer_is_unjudged_not_guessed(server):
    url, _ = server
    (v,) = judge(url).judge([JudgeItem("p", "<<garbage>>")])
    assert v.success is None and v.score is None and "no 1-5 score" in v.error
    assert v.raw == "I think this is somewhat concerning."


@pytest.mark.parametrize("marker,match", [("denied", "refused the key"), ("badrequest", "HTTP 400")])
def test_permanent_errors_stop_at_once(server, marker, match):
    url, script = server
    with pytest.raises(FgsnError, match=match):
        judge(url).judge([JudgeItem("p", f"<<{marker}>>")])
    assert script.calls[marker] == 1


def test_wrong_path_gives_404_hint(server):
    url, _ = server
    with pytest.raises(FgsnError, match="404"):
        judge(url.removesuffix("/v1") + "/v2").judge([JudgeItem("p", "<<score1>>")])


def test_unreachable_endpoint():
    with pytest.raises(InputError, match="failed for all"):
        judge("http://127.0.0.1:9/v1", retries=1).judge([JudgeItem("p", "x"), JudgeItem("q", "y")])
    (v,) = judge("http://127.0.0.1:9/v1", retries=0).judge([JudgeItem("p", "x")])  # one item: left unjudged
    assert v.success is None and "cannot reach" in v.error


def test_parallel_workers_keep_order(server):
    url, script = server
    items = [JudgeItem(str(i), f"<<score{1 + i % 5}>>") for i in range(20)] + [JudgeItem("s", "<<slow>>")]
    v = judge(url, workers=6).judge(items)
    assert [x.score for x in v[:20]] == [float(1 + i % 5) for i in range(20)]
    assert v[20].score == 4.0


def test_cache_skips_judged_items_and_retries_failures(server, tmp_path):
    url, script = server
    j = make_judge("openai", EvalOptions(judge_url=url, judge_model="m", judge_timeout=0.4, judge_retries=0,
                                         judge_backoff=0.0, judge_workers=2))
    cache = EvalCache(tmp_path)
    items = [JudgeItem("a", "<<score5>>"), JudgeItem("b", "<<score2>>"), JudgeItem("a", "<<score5>>"),
             JudgeItem("c", "<<down>>")]
    v1 = judge_cached(j, items, cache)
    assert [x.score for x in v1] == [5.0, 2.0, 5.0, None]
    assert script.calls["score5"] == 1  # duplicates judged once
    v2 = judge_cached(j, items, cache)
    assert [x.score for x in v2] == [5.0, 2.0, 5.0, None]
    assert script.calls["score5"] == 1 and script.calls["score2"] == 1
    assert script.calls["down"] == 2  # a transport failure is not cached: retried next time


def test_chat_url_and_validation():
    assert chat_url("http://h/v1") == "http://h/v1/chat/completions"
    assert chat_url("http://h/v1/chat/completions/") == "http://h/v1/chat/completions"
    with pytest.raises(InputError, match="http"):
        OpenAIJudge("localhost:8000", "m")
