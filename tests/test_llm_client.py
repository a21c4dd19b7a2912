"""The LLM layer against a scripted OpenAI-compatible HTTP server on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from neuron_assets.llm.client import CachingClient, RetryPolicy
from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.response_cache import ResponseCache

CHAT_OK = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "commas."}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
}


class ScriptedServer:
    """Answers each POST with the next (status, headers, body) of its script; repeats the last."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                owner.requests.append((self.headers.get("Authorization"), json.loads(self.rfile.read(length))))
                status, headers, body = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server_with(tmp_path):
    servers = []

    def make(*script, api_key="not-needed", max_attempts=3):
        server = ScriptedServer(script)
        servers.append(server)
        raw = openai.OpenAI(base_url=server.url, api_key=api_key, max_retries=0, timeout=5)
        policy = RetryPolicy(max_attempts=max_attempts, base_delay_s=0.01, max_delay_s=0.05)
        return server, CachingClient(raw, server.url, ResponseCache(tmp_path / "cache"), policy)

    yield make
    for server in servers:
        server.close()


def ask(client, temperature=1.0, seed=0):
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], temperature=temperature, seed=seed
    )


def test_a_repeated_request_is_answered_from_the_cache(server_with):
    server, client = server_with((200, {}, CHAT_OK))
    assert ask(client)["choices"][0]["message"]["content"] == "commas."
    assert ask(client)["choices"][0]["message"]["content"] == "commas."
    assert len(server.requests) == 1
    assert client.stats.as_metadata() == {
        "llm_calls": 1,
        "llm_cache_hits": 1,
        "llm_retries": 0,
        "llm_rejected_replies": 0,
        "prompt_tokens": 11,
        "completion_tokens": 2,
        "llm_cache_bytes_written": client.stats.cached_bytes,
    }
    assert 0 < client.stats.cached_bytes < len(json.dumps(CHAT_OK))


def test_changing_a_sampling_parameter_or_seed_misses_the_cache(server_with):
    server, client = server_with((200, {}, CHAT_OK))
    ask(client, temperature=1.0)
    ask(client, temperature=0.5)
    ask(client, temperature=1.0, seed=1)
    assert len(server.requests) == 3


def test_cache_entries_survive_a_new_client_so_a_rerun_makes_no_call(server_with, tmp_path):
    server, client = server_with((200, {}, CHAT_OK))
    ask(client)
    raw = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
    again = CachingClient(raw, server.url, ResponseCache(tmp_path / "cache"))
    ask(again)
    assert len(server.requests) == 1 and again.stats.calls == 0 and again.stats.cache_hits == 1


def test_429_is_retried_after_the_servers_retry_after(server_with):
    server, client = server_with((429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}), (200, {}, CHAT_OK))
    assert ask(client)["choices"][0]["message"]["content"] == "commas."
    assert len(server.requests) == 2 and client.stats.retries == 1


def test_5xx_is_retried_and_gives_up_with_a_clear_error(server_with):
    server, client = server_with((500, {}, {"error": {"message": "boom"}}), max_attempts=3)
    with pytest.raises(LLMError, match="still failing after 3 attempts"):
        ask(client)
    assert len(server.requests) == 3


def test_other_4xx_fail_at_once_with_the_servers_message(server_with):
    server, client = server_with((404, {}, {"error": {"message": "model 'm' not found"}}))
    with pytest.raises(LLMError, match=r"refused the request \(404\): model 'm' not found"):
        ask(client)
    assert len(server.requests) == 1


def test_the_api_key_is_sent_but_never_cached(server_with, tmp_path):
    server, client = server_with((200, {}, CHAT_OK), api_key="sk-secret-0123456789")
    ask(client)
    assert server.requests[0][0] == "Bearer sk-secret-0123456789"
    stored = json.dumps(list(ResponseCache(tmp_path / "cache").entries()))
    assert "commas." in stored and "sk-secret-0123456789" not in stored


def test_map_neurons_keeps_at_most_the_given_number_in_flight_and_returns_in_job_order():
    import time

    from neuron_assets.llm.fan_out import map_neurons

    lock, in_flight, peak, done = threading.Lock(), [0], [0], []

    def job(value):
        def run():
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.05)
            with lock:
                in_flight[0] -= 1
            return value

        return run

    jobs = [((0, n), job(n * 10)) for n in range(12)]
    assert map_neurons(
        "test", jobs, expected_errors=(LLMError,), concurrency=3, on_done=lambda *key: done.append(key)
    ) == [n * 10 for n in range(12)]
    assert peak[0] == 3
    assert sorted(done) == [(0, n) for n in range(12)]


def test_map_neurons_reports_every_failed_neuron_and_lets_unexpected_errors_through():
    from neuron_assets.llm.fan_out import NeuronFailures, map_neurons

    def fail(message, kind=LLMError):
        def run():
            raise kind(message)

        return run

    jobs = [((1, 5), fail("429 forever")), ((1, 6), lambda: "ok"), ((2, 0), fail("bad key"))]
    with pytest.raises(NeuronFailures) as failure:
        map_neurons("simulation", jobs, expected_errors=(LLMError,), concurrency=2)
    assert failure.value.failures == {(1, 5): "429 forever", (2, 0): "bad key"}
    assert "simulation failed for 2 neuron(s)" in str(failure.value)
    with pytest.raises(ZeroDivisionError):
        map_neurons("x", [((0, 0), lambda: 1 / 0)], expected_errors=(LLMError,))


def test_an_unexpected_error_stops_map_neurons_without_starting_the_remaining_neurons():
    from neuron_assets.llm.fan_out import map_neurons

    started = []

    def job(n):
        def run():
            started.append(n)
            if n == 0:
                raise ConnectionAbortedError("the backend is gone")
            return n

        return run

    with pytest.raises(ConnectionAbortedError, match="the backend is gone"):
        map_neurons("x", [((0, n), job(n)) for n in range(20)], expected_errors=(LLMError,), concurrency=1)
    assert started == [0]


class BackendGone(RuntimeError):
    pass


def test_a_request_that_cannot_connect_asks_the_liveness_check_and_stops_when_it_fails(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    raw = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=5)
    checks = []

    def liveness():
        checks.append(1)
        raise BackendGone("the local llama.cpp server exited (signal 9, SIGKILL)")

    client = CachingClient(raw, "local", ResponseCache(tmp_path), RetryPolicy(max_attempts=5), liveness=liveness)
    with pytest.raises(BackendGone, match="signal 9"):
        ask(client)
    assert checks == [1] and client.stats.retries == 0


def test_a_live_backend_that_refuses_connections_is_still_retried_and_named(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    raw = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=5)
    checks = []
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    client = CachingClient(raw, url, ResponseCache(tmp_path), policy, liveness=lambda: checks.append(1))
    with pytest.raises(LLMError, match=f"{url}: still failing after 3 attempts: Connection error"):
        ask(client)
    assert len(checks) == 3 and client.stats.retries == 2


TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def test_a_context_length_refusal_is_its_own_error_and_is_never_sent_twice(server_with):
    from neuron_assets.llm.errors import ContextLengthError

    server, client = server_with((400, {}, TOO_LONG))
    for _ in range(2):
        with pytest.raises(ContextLengthError, match="maximum context length is 2048"):
            ask(client)
    assert len(server.requests) == 1
    assert client.stats.calls == 1 and client.stats.cache_hits == 1


def test_vllm_style_context_messages_without_a_code_are_recognized(server_with):
    from neuron_assets.llm.errors import ContextLengthError

    body = {"object": "error", "message": "This model's maximum context length is 4096 tokens.", "code": 400}
    _, client = server_with((400, {}, body))
    with pytest.raises(ContextLengthError):
        ask(client)


@pytest.mark.parametrize("body", [b'{"id": "c1", "choices": [', {"id": "c1", "object": "chat.completion"}])
def test_a_malformed_body_is_retried_like_a_server_error(server_with, body):
    server, client = server_with((200, {}, body), (200, {}, CHAT_OK))
    assert ask(client)["choices"][0]["message"]["content"] == "commas."
    assert len(server.requests) == 2 and client.stats.retries == 1


def test_a_body_that_stays_malformed_fails_naming_the_problem(server_with):
    _, client = server_with((200, {}, b"<html>bad gateway</html>"), max_attempts=2)
    with pytest.raises(LLMError, match="malformed response body"):
        ask(client)


def _insist_on_digits(response):
    from neuron_assets.llm.errors import ReplyFormatError

    if not any(c.isdigit() for c in response["choices"][0]["message"]["content"]):
        raise ReplyFormatError("no digits")


def test_a_reply_the_caller_rejects_is_asked_again_and_never_cached(server_with):
    words = {**CHAT_OK, "choices": [{**CHAT_OK["choices"][0], "message": {"role": "assistant", "content": "three"}}]}
    digits = {**CHAT_OK, "choices": [{**CHAT_OK["choices"][0], "message": {"role": "assistant", "content": "3"}}]}
    server, client = server_with((200, {}, words), (200, {}, digits))
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "read": _insist_on_digits}
    assert client.chat.completions.create(**request)["choices"][0]["message"]["content"] == "3"
    assert client.chat.completions.create(**request)["choices"][0]["message"]["content"] == "3"
    assert len(server.requests) == 2 and client.stats.rejected_replies == 1 and client.stats.cache_hits == 1


def test_a_reply_rejected_every_time_raises_the_callers_error_and_caches_nothing(server_with, tmp_path):
    from neuron_assets.llm.errors import ReplyFormatError

    words = {**CHAT_OK, "choices": [{**CHAT_OK["choices"][0], "message": {"role": "assistant", "content": "three"}}]}
    server, client = server_with((200, {}, words))
    with pytest.raises(ReplyFormatError, match="no digits"):
        client.chat.completions.create(model="m", messages=[], read=_insist_on_digits)
    assert len(server.requests) == 2
    assert ResponseCache(tmp_path / "cache").count() == 0


def test_a_cached_reply_the_check_now_rejects_is_asked_again_and_replaced(server_with):
    words = {**CHAT_OK, "choices": [{**CHAT_OK["choices"][0], "message": {"role": "assistant", "content": "three"}}]}
    digits = {**CHAT_OK, "choices": [{**CHAT_OK["choices"][0], "message": {"role": "assistant", "content": "3"}}]}
    server, client = server_with((200, {}, words), (200, {}, digits))
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert client.chat.completions.create(**request)["choices"][0]["message"]["content"] == "three"  # cached unchecked
    assert client.chat.completions.create(**request, read=_insist_on_digits)["choices"][0]["message"]["content"] == "3"
    assert client.chat.completions.create(**request, read=_insist_on_digits)["choices"][0]["message"]["content"] == "3"
    assert len(server.requests) == 2


class CountingServer:
    """A scripted server that answers after ``delay_s``, counting the requests it holds at once."""

    def __init__(self, delay_s=0.05, props=None):
        from scripted_openai import ScriptedOpenAI

        self.in_flight = self.most_in_flight = self.answered = 0
        lock = threading.Lock()

        def answer(body):
            import time

            with lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            time.sleep(delay_s)
            with lock:
                self.in_flight -= 1
                self.answered += 1
            return body["messages"][-1]["content"].upper()

        self.scripted = ScriptedOpenAI(answer, props)
        self.url = self.scripted.url

    def stop(self):
        self.scripted.__exit__(None, None, None)


def pooled_client(servers, per_server, tmp_path=None):
    from neuron_assets.llm.server_pool import Server, ServerPool

    pool = ServerPool(
        [Server(s.url, openai.OpenAI(base_url=s.url, api_key="k", max_retries=0, timeout=5)) for s in servers],
        per_server,
    )
    return pool, CachingClient(pool, "pool", None, RetryPolicy(max_attempts=4, base_delay_s=0.01))


def ask_all(client, n, concurrency):
    from neuron_assets.llm.fan_out import map_neurons

    def job(i):
        return lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])

    replies = map_neurons("test", [((0, i), job(i)) for i in range(n)], expected_errors=(), concurrency=concurrency)
    return [r["choices"][0]["message"]["content"] for r in replies]


def test_calls_spread_over_several_servers_never_above_the_per_server_limit():
    servers = [CountingServer(), CountingServer()]
    try:
        pool, client = pooled_client(servers, per_server=2)
        assert ask_all(client, 16, concurrency=6) == [f"Q{i}" for i in range(16)]
    finally:
        for s in servers:
            s.stop()
    assert [s.most_in_flight for s in servers] == [2, 2]  # 6 threads, but 2 a server
    assert sum(s.answered for s in servers) == 16 and min(s.answered for s in servers) >= 4


def test_a_server_that_goes_down_mid_run_only_slows_the_run():
    servers = [CountingServer(), CountingServer()]
    pool, client = pooled_client(servers, per_server=1)
    try:
        assert ask_all(client, 4, concurrency=2) == [f"Q{i}" for i in range(4)]
        servers[0].stop()  # gone for good
        assert ask_all(client, 10, concurrency=2) == [f"Q{i}" for i in range(10)]
    finally:
        servers[1].stop()
    down, up = pool.servers
    assert down.failures >= 1 and up.calls >= 10 - 1 and servers[1].answered >= 10
    assert client.stats.calls == 14


def test_an_llm_resource_that_reaches_none_of_its_servers_names_them(tmp_path):
    from neuron_assets.defs.resources import LLMResource, ResultStoreResource

    dead = ["http://127.0.0.1:9/v1", "http://127.0.0.1:7/v1"]
    llm = LLMResource(
        results=ResultStoreResource(data_dir=str(tmp_path)),
        base_url=dead[0],
        base_urls=dead[1:],
        explainer_model="x",
        simulator_model="y",
        timeout_s=2,
    )
    with pytest.raises(
        ConnectionError, match=r"cannot reach any of the LLM servers: http://127.0.0.1:9/v1 \(.*127.0.0.1:7"
    ):
        llm.client()


def test_an_llm_resource_with_one_server_down_at_the_start_uses_the_others(tmp_path):
    from neuron_assets.defs.resources import LLMResource, ResultStoreResource

    live = CountingServer()
    try:
        llm = LLMResource(
            results=ResultStoreResource(data_dir=str(tmp_path)),
            base_url="http://127.0.0.1:9/v1",
            base_urls=[live.url],
            explainer_model="x",
            simulator_model="y",
            timeout_s=2,
            cache=False,
        )
        assert ask_all(llm.client(), 3, concurrency=1) == ["Q0", "Q1", "Q2"]
        assert llm.server_metadata()["llm_server_1"].endswith("3 calls, 0 failed")
    finally:
        live.stop()


@pytest.mark.parametrize(
    ("props", "configured", "most"),
    [
        ({"total_slots": 2}, None, 2),  # llama.cpp's server with --parallel 2
        (None, None, 6),  # a server that reports no slots (vLLM, OpenAI): the caller's threads are the limit
        ({"total_slots": 2}, 3, 3),  # a configured per-server limit wins over the report
        ({"total_slots": "four"}, None, 6),  # a report that is no count is ignored
    ],
)
def test_an_llm_resource_holds_each_server_to_the_slots_it_reports(tmp_path, props, configured, most):
    from neuron_assets.defs.resources import LLMResource, ResultStoreResource

    server = CountingServer(delay_s=0.1, props=props)
    try:
        llm = LLMResource(
            results=ResultStoreResource(data_dir=str(tmp_path)),
            base_url=server.url,
            per_server_concurrency=configured,
            explainer_model="x",
            simulator_model="y",
            cache=False,
        )
        assert ask_all(llm.client(), 12, concurrency=6) == [f"Q{i}" for i in range(12)]
    finally:
        server.stop()
    assert server.most_in_flight == most
    reported = props == {"total_slots": 2} and not configured
    assert llm.server_metadata().get("llm_server_0", "").endswith("2 slots reported") == reported


def test_slots_are_read_from_llama_cpps_props_and_nothing_else():
    from neuron_assets.llm.server_pool import reported_slots

    assert reported_slots("http://127.0.0.1:9/v1", timeout_s=1) is None  # nothing listening
    for props, slots in (({"total_slots": 4}, 4), ({"total_slots": 0}, None), ({"total_slots": True}, None)):
        server = CountingServer(props=props)
        try:
            assert reported_slots(server.url) == slots
        finally:
            server.stop()


def test_a_cache_row_keeps_what_readers_use_and_what_the_call_says_to_keep(tmp_path):
    from neuron_assets.llm.response_cache import compact

    response = {
        **CHAT_OK,
        "choices": [
            {
                **CHAT_OK["choices"][0],
                "logprobs": {
                    "content": [
                        {
                            "token": "a",
                            "logprob": -0.1,
                            "bytes": [97],
                            "top_logprobs": [{"token": "a", "logprob": -0.1, "bytes": [97]}],
                        }
                    ]
                },
            }
        ],
    }
    kept = compact(response)
    assert set(kept) == {"choices", "usage"} and "bytes" not in json.dumps(kept)
    assert kept["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == [{"token": "a", "logprob": -0.1}]
    server = ScriptedServer([(200, {}, CHAT_OK)])
    try:
        raw = openai.OpenAI(base_url=server.url, api_key="k", max_retries=0)
        cache = ResponseCache(tmp_path / "cache")
        client = CachingClient(raw, server.url, cache)
        request = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        first = client.chat.completions.create(**request, keep=lambda r: {**r, "usage": {"kept": True}})
        second = client.chat.completions.create(**request)
    finally:
        server.close()
    assert first["usage"]["prompt_tokens"] == 11  # the caller gets the whole response once
    assert second["usage"] == {"kept": True} and len(server.requests) == 1 and cache.count() == 1


def test_entries_of_the_older_one_file_per_request_cache_still_answer(tmp_path):
    cache = ResponseCache(tmp_path)
    key = ResponseCache.key("b", "chat", {"model": "m"})
    (tmp_path / key[:2]).mkdir()
    (tmp_path / key[:2] / f"{key}.json").write_text(json.dumps(CHAT_OK))
    assert cache.get(key) == CHAT_OK and cache.count() == 0


@pytest.mark.parametrize(
    "error",
    [
        {"message": "out of memory in the local llama.cpp server (MemoryError: ...)", "code": "out_of_memory"},
        {"message": "CUDA out of memory. Tried to allocate 2.00 GiB", "type": "InternalServerError"},
        {"message": "Unable to allocate 288. MiB for an array with shape (1540, 49152) and data type float32"},
    ],
)
def test_a_server_out_of_memory_on_every_attempt_is_named_as_memory_with_its_message(server_with, error):
    server, client = server_with((500, {}, {"error": error}), max_attempts=2)
    with pytest.raises(LLMError, match="ran out of memory on each of 2 attempts: ") as failure:
        ask(client)
    assert error["message"] in str(failure.value) and failure.value.status == 500
    assert len(server.requests) == 2
