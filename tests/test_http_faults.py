"""The OpenAI-compatible backend against a fault-injecting server on 127.0.0.1.

Every prompt carries a unique token ``tok-N``; the server's replies are built from the token of the
prompt they answer, so a reply given to the wrong prompt is caught. Faults are scripted per token
(a queue consumed one per request), so the tests know exactly which requests should be sent again.
Waits between attempts go through an injected ``sleep`` that records them instead of sleeping.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from mfllm.backends import ModelPool
from mfllm.backends.wrappers import BackendError, RetryingModel, RetryPolicy, TransientBackendError
from mfllm.backends.fake import FakeModel
from mfllm.interfaces import Message, Prompt, SamplingParams

pytest.importorskip("httpx")
from mfllm.backends.openai_http import OpenAICompatibleModel, excerpt, parse_retry_after, redact_secrets  # noqa: E402

TOKEN = re.compile(r"tok-(\d+)")
KEY_ENV = "MFLLM_TEST_API_KEY"
SECRET = "sk-test-Zq81SECRETxx0987654321"
FIXED_NOW = 1_700_000_000.0
TRANSIENT_FAULTS = ["500", "503-html", "429:1", "reset", "bad-json", "html", "empty-choices", "extra-choice"]


class _ThreadedServer(ThreadingHTTPServer):
    request_queue_size = 64  # the default backlog of 5 would stall concurrent connects
    daemon_threads = True
    block_on_close = False  # hanging handlers end with the test

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hang up on purpose here (timeouts, resets): nothing to report."""


class FaultServer:
    """An OpenAI-compatible server in a thread; ``faults[token]`` is the queue of faults for that token's requests."""

    def __init__(self, hang_s: float = 5.0):
        self.faults: dict[str, list[str]] = {}
        self.always: str | None = None
        self.requests: list[tuple[str, tuple[str, ...]]] = []
        self.hang_s = hang_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.httpd = _ThreadedServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def next_fault(self, path: str, tokens: tuple[str, ...]) -> str | None:
        with self.lock:
            self.requests.append((path, tokens))
            queue = self.faults.get(tokens[0]) if tokens else None
            return queue.pop(0) if queue else self.always

    def sent(self, token: str) -> int:
        """How many requests named ``token`` first."""
        return sum(1 for _, tokens in self.requests if tokens and tokens[0] == token)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _send(self, status: int, body: str, content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            route = self.path.partition("?")[0]
            if route == "/v1/chat/completions":
                texts = [body["messages"][-1]["content"]]
            elif route == "/v1/completions":
                texts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            else:
                return self._send(404, json.dumps({"error": f"no route {self.path}"}))
            tokens = tuple(match.group(0) for text in texts for match in [TOKEN.search(text)] if match)
            fault = server.next_fault(self.path, tokens)
            echoed = f"you sent Authorization: {self.headers.get('Authorization')}"
            if fault == "reset":  # abortive close: the client sees a connection reset
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return self.connection.close()
            if fault == "hang":
                server.stop.wait(server.hang_s)
                self.close_connection = True
                return None
            if fault == "drip":  # a valid reply, one byte at a time: each read is quick, the whole is slow
                data = json.dumps({"choices": [self._choice(body, texts[0], tokens[0], 0, None)]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for start in range(0, len(data), len(data) // 20 + 1):
                    self.wfile.write(data[start:start + len(data) // 20 + 1])
                    self.wfile.flush()
                    if server.stop.wait(0.1):
                        break
                return None
            if fault in ("401", "404", "500", "echo-auth"):
                status = 500 if fault == "echo-auth" else int(fault)
                return self._send(status, json.dumps({"error": {"message": echoed, "headers": dict(self.headers)}}))
            if fault == "503-html":
                return self._send(503, "<html><body><h1>503 Service Unavailable</h1></body></html>", "text/html")
            if fault and fault.startswith("429:"):
                return self._send(429, '{"error": "slow down"}', headers={"Retry-After": fault[4:]})
            if fault == "bad-json":
                return self._send(200, '{"choices": [{"index": 0, "text": "tok')
            if fault == "html":
                return self._send(200, "<html><body>502 Bad Gateway (nginx)</body></html>", "text/html")
            if fault == "empty-choices":
                return self._send(200, json.dumps({"choices": []}))
            choices = [self._choice(body, text, token, i, fault) for i, (text, token) in enumerate(zip(texts, tokens))]
            choices.reverse()  # a server may list choices in any order; their index says which prompt they answer
            if fault == "extra-choice":
                choices.append(dict(choices[0], index=len(choices)))
            if fault == "dup-index":  # every choice claims to answer the first prompt
                choices = [dict(choice, index=0) for choice in choices]
            usage = {"prompt_tokens": 10 * len(texts), "completion_tokens": 3 * len(texts)}
            return self._send(200, json.dumps({"choices": choices, "usage": usage}))

        def _choice(self, body: dict[str, Any], text: str, token: str, index: int, fault: str | None) -> dict[str, Any]:
            reply = {"null": None, "empty": ""}.get(fault or "", f"\nreply to {token}\nsecond line")
            if self.path.partition("?")[0] == "/v1/chat/completions":
                return {"index": index, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            if not body.get("echo"):
                return {"index": index, "text": reply, "finish_reason": "stop"}
            # echo + logprobs: one token per word of the prompt, then one generated token; every log-prob
            # is -(N + 1) for the prompt's tok-N, so a score given to the wrong prompt is visible
            words = list(re.finditer(r"\S+", text))
            value = -(int(token[4:]) + 1.0)
            offsets = [w.start() for w in words] + [len(text)]
            logprobs = [None] + [value] * (len(words) - 1) + [-0.5]
            return {"index": index, "text": text + " x", "logprobs": {"text_offset": offsets, "token_logprobs": logprobs,
                                                                      "tokens": [w.group(0) for w in words] + [" x"]}}

    return Handler


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


class RecordedSleep:
    """An async ``sleep`` that records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _model(server: FaultServer, sleep: RecordedSleep, **options: Any) -> OpenAICompatibleModel:
    settings: dict[str, Any] = {"api_key_env": KEY_ENV, "request_timeout_s": 5.0, "max_attempts": 4, "backoff_s": 0.25,
                                "max_concurrency": 6, "sleep": sleep, "clock": lambda: FIXED_NOW}
    return OpenAICompatibleModel("test-model", server.url, **(settings | options))


def _prompts(n: int) -> list[Prompt]:
    return [Prompt((Message("system", "You react to news."), Message("user", f"Persona tok-{i}: what do you say?")),
                   f"Persona tok-{i} says:") for i in range(n)]


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    assert SECRET not in message and "Bearer sk" not in message
    return message


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_every_reply_reaches_its_own_prompt_and_only_failed_requests_are_resent(server: FaultServer, chat: bool) -> None:
    rng = random.Random(10)
    n = 24
    for i in range(n):
        if rng.random() < 0.6:
            server.faults[f"tok-{i}"] = rng.sample(TRANSIENT_FAULTS, rng.randint(1, 3))
    server.faults["tok-3"] = ["hang", "reset", "500"]  # a timeout among them
    planned = {token: len(queue) for token, queue in server.faults.items()}
    sleep = RecordedSleep()
    model = _model(server, sleep, chat=chat, request_timeout_s=1.0)
    texts = model.generate(_prompts(n), SamplingParams(seed=5))
    assert texts == [f"reply to tok-{i}" for i in range(n)]
    assert [server.sent(f"tok-{i}") for i in range(n)] == [planned.get(f"tok-{i}", 0) + 1 for i in range(n)]
    assert {path for path, _ in server.requests} == {"/v1/chat/completions" if chat else "/v1/completions"}
    assert len(sleep.waits) == sum(planned.values())
    assert model.usage.prompt_tokens == 10 * n and model.usage.generated_tokens == 3 * n


def test_scoring_with_echo_logprobs_stays_aligned_under_faults_and_reordered_choices(server: FaultServer) -> None:
    n = 10
    prompts = _prompts(n)
    continuations = [" I doubt it" * (1 + i % 3) for i in range(n)]
    server.faults = {"tok-0": ["extra-choice", "500"], "tok-4": ["dup-index", "html"], "tok-8": ["reset", "empty-choices"]}
    model = _model(server, RecordedSleep(), prompts_per_score_request=4)
    scores = model.score(prompts, continuations)
    for i, score in enumerate(scores):
        assert score.token_logprobs == (-(i + 1.0),) * len(continuations[i].split())
    batches = [tuple(f"tok-{i}" for i in range(first, min(first + 4, n))) for first in (0, 4, 8)]
    assert Counter(tokens for _, tokens in server.requests) == {batch: 3 for batch in batches}
    single = _model(server, RecordedSleep()).score(prompts[:3], continuations[:3])
    assert [s.token_logprobs for s in single] == [s.token_logprobs for s in scores[:3]]


def test_retry_after_in_seconds_and_as_http_date_is_honoured(server: FaultServer) -> None:
    http_date = email.utils.formatdate(FIXED_NOW + 30, usegmt=True)
    server.faults["tok-0"] = ["429:7", f"429:{http_date}", "503-html", "429:9999"]
    sleep = RecordedSleep()
    model = _model(server, sleep, max_attempts=5, backoff_s=0.5, max_retry_after_s=60)
    assert model.generate(_prompts(1), SamplingParams()) == ["reply to tok-0"]
    assert sleep.waits == [7.0, 30.0, 2.0, 60.0]  # Retry-After, its date, backoff 0.5 * 2**2, Retry-After capped


def test_exhausted_retries_are_one_error_naming_url_and_model_after_max_attempts(server: FaultServer) -> None:
    server.always = "503-html"
    sleep = RecordedSleep()
    with pytest.raises(BackendError) as caught:
        _model(server, sleep, max_attempts=3, backoff_s=1.0).generate(_prompts(1), SamplingParams())
    message = _one_line(caught.value)
    assert not isinstance(caught.value, TransientBackendError)
    assert message.startswith(f"gave up after 3 attempts: {server.url}/chat/completions (model test-model): HTTP 503")
    assert "503 Service Unavailable" in message
    assert len(server.requests) == 3 and sleep.waits == [1.0, 2.0]


def test_pool_builds_one_retry_layer_with_a_configurable_timeout(server: FaultServer) -> None:
    server.always = "hang"
    model = ModelPool(api_key_env=KEY_ENV, request_timeout_s=0.2).get(f"openai:test-model@{server.url}")
    assert isinstance(model, OpenAICompatibleModel) and model.request_timeout_s == 0.2
    model.sleep = RecordedSleep()
    with pytest.raises(BackendError, match=r"no reply within 0\.2 s"):
        model.generate(_prompts(1), SamplingParams())
    assert len(server.requests) == model.retry.max_attempts == 4


def test_timeout_bounds_a_whole_attempt_even_when_bytes_keep_coming(server: FaultServer) -> None:
    server.always = "drip"
    with pytest.raises(BackendError, match=r"gave up after 2 attempts: .* no reply within 0\.3 s"):
        _model(server, RecordedSleep(), request_timeout_s=0.3, max_attempts=2).generate(_prompts(1), SamplingParams())
    assert len(server.requests) == 2


@pytest.mark.parametrize(("status", "hint"), [("401", "check the API key in $MFLLM_TEST_API_KEY"),
                                              ("404", "that the server serves model 'test-model'")])
def test_client_errors_fail_at_once_with_a_hint_and_no_secret(server: FaultServer, status: str, hint: str) -> None:
    server.always = status
    with pytest.raises(BackendError) as caught:
        _model(server, RecordedSleep()).generate(_prompts(3), SamplingParams())
    message = _one_line(caught.value)
    assert f"{server.url}/chat/completions (model test-model): HTTP {status}" in message and hint in message
    assert "[REDACTED]" in message  # the body echoed the Authorization header
    assert len(server.requests) <= 3  # no retries


def test_unknown_route_is_a_404_naming_the_url(server: FaultServer) -> None:
    model = OpenAICompatibleModel("m", server.url.removesuffix("/v1") + "/wrong", api_key_env=KEY_ENV, sleep=RecordedSleep())
    with pytest.raises(BackendError, match=r"/wrong/chat/completions \(model m\): HTTP 404"):
        model.generate(_prompts(1), SamplingParams())


@pytest.mark.parametrize(("fault", "what"), [("html", "reply is not JSON"), ("bad-json", "reply is not JSON"),
                                             ("empty-choices", "0 choices for 1 prompt"),
                                             ("extra-choice", "2 choices for 1 prompt"), ("reset", "connection failed")])
def test_malformed_replies_are_retried_then_named(server: FaultServer, fault: str, what: str) -> None:
    server.always = fault
    with pytest.raises(BackendError) as caught:
        _model(server, RecordedSleep(), max_attempts=2, chat=False).generate(_prompts(1), SamplingParams())
    message = _one_line(caught.value)
    assert f"{server.url}/completions (model test-model)" in message and what in message
    assert len(server.requests) == 2


def test_secrets_never_reach_messages_logs_or_descriptions(server: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    server.always = "echo-auth"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as caught:
        _model(server, RecordedSleep(), max_attempts=2).generate(_prompts(1), SamplingParams())
    message = _one_line(caught.value)
    assert "Authorization: [REDACTED]" in message and len(message) < 400
    assert "HTTP Request: POST" in caplog.text and SECRET not in caplog.text and "Bearer" not in caplog.text
    described = OpenAICompatibleModel("m", "https://user:hunter2@host/v1?api-key=abc123").describe()
    assert "hunter2" not in json.dumps(described) and "abc123" not in json.dumps(described)


def test_redaction_and_excerpts() -> None:
    text = ('{"headers": {"authorization": "Bearer abc.DEF-123", "x-api-key": "k9"}}, token sk-proj-AAAAAAAAAAAA, '
            "url https://me:pw@host/v1?key=zzz&x=1 and my-own-secret-value")
    cleaned = redact_secrets(text, ["my-own-secret-value"])
    for leaked in ("abc.DEF-123", "k9", "sk-proj-AAAAAAAAAAAA", "me:pw", "zzz", "my-own-secret-value"):
        assert leaked not in cleaned
    assert "x=1" in cleaned
    assert excerpt("line one\nline two " + "z" * 500, limit=20) == "line one line two zz…"
    assert excerpt("abc" + SECRET, [SECRET], limit=10) == "abc[REDACT…"  # redacted before it is cut


@pytest.mark.parametrize("fault", ["null", "empty"])
def test_empty_or_null_completion_comes_back_empty(server: FaultServer, fault: str) -> None:
    server.faults["tok-1"] = [fault]
    texts = _model(server, RecordedSleep()).generate(_prompts(3), SamplingParams(seed=1))
    assert texts == ["reply to tok-0", "", "reply to tok-2"]
    assert len(server.requests) == 3


def test_parse_retry_after() -> None:
    assert parse_retry_after("12", FIXED_NOW) == 12.0
    assert parse_retry_after(email.utils.formatdate(FIXED_NOW + 5, usegmt=True), FIXED_NOW) == 5.0
    assert parse_retry_after(email.utils.formatdate(FIXED_NOW - 5, usegmt=True), FIXED_NOW) == 0.0
    assert parse_retry_after("soon", FIXED_NOW) is None and parse_retry_after(None, FIXED_NOW) is None


class _FailsThenAnswers(FakeModel):
    def __init__(self, retry_after_s: float | None):
        super().__init__()
        self.retry_after_s, self.calls = retry_after_s, 0

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            raise TransientBackendError("busy", retry_after_s=self.retry_after_s)
        return super().generate(prompts, params)


def test_retrying_model_honours_retry_after_and_gives_up_for_good() -> None:
    waits: list[float] = []
    model = RetryingModel(_FailsThenAnswers(3.5), attempts=2, backoff_s=1.0, sleep=waits.append)
    assert len(model.generate(_prompts(2), SamplingParams(seed=1))) == 2 and waits == [3.5]
    assert RetryPolicy(backoff_s=1.0, max_backoff_s=5.0).delay_s(10) == 5.0
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_a_query_in_the_base_url_follows_each_request_path(server: FaultServer, chat: bool) -> None:
    model = OpenAICompatibleModel("m", server.url + "?api_key=KEY123&x=1", api_key_env=KEY_ENV, chat=chat, sleep=RecordedSleep())
    assert model.generate(_prompts(1), SamplingParams()) == ["reply to tok-0"]
    path = "/v1/chat/completions" if chat else "/v1/completions"
    assert [p for p, _ in server.requests] == [f"{path}?api_key=KEY123&x=1"]


def test_a_key_in_a_model_url_is_never_recorded_or_printed(demo_event_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from mfllm.cli import main

    with socket.socket() as closed:  # a port nothing listens on: the run fails at its first request
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://user:KEY123@127.0.0.1:{port}/v1?api_key=KEY456"
    (tmp_path / "config.yaml").write_text(json.dumps({"method": "mf-llm", "mean_field_model": f"openai:n@{url}"}))
    code = main(["simulate", "--config", str(tmp_path / "config.yaml"), "--data", str(demo_event_path), "--policy-model", f"openai:m@{url}",
                 "--max-attempts", "1", "--warmup", "8", "--agents", "4", "--batch", "4", "--output", str(tmp_path / "runs")])
    printed = capsys.readouterr()
    manifest = next((tmp_path / "runs").rglob("manifest.json")).read_text(encoding="utf-8")
    assert code == 2 and "failed" in manifest and "openai:m@http://[REDACTED]@127.0.0.1" in manifest
    for text in (printed.out, printed.err, manifest):
        assert "KEY123" not in text and "KEY456" not in text
