"""The counting stand-in of ``scorer_cost``: an OpenAI-compatible server on a loopback port that
answers every completions and chat request the scorers and simulators send validly, and counts
each prompt's tokens with the packaged model's own tokenizer (``PackagedTokenizer``), as the
local llama.cpp server reports ``usage.prompt_tokens``.
"""

from __future__ import annotations

import codecs
import json
import re
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, packaged_gguf_path
from neuron_assets.prompts.templates import UNKNOWN

MODEL = PACKAGED_MODEL_ALIAS


class PackagedTokenizer:
    """The packaged GGUF's tokenizer (llama.cpp, ``vocab_only``: no weights loaded), counting a
    prompt as the local server does: a completions prompt as ``Llama.create_completion``
    tokenizes it, a chat request rendered with the GGUF's chat template as llama-cpp-python's
    chat handler does, then tokenized with its special tokens."""

    def __init__(self, path: Path | None = None) -> None:
        from llama_cpp import Llama, llama_chat_format
        from llama_cpp._utils import suppress_stdout_stderr

        self.path = path or packaged_gguf_path()
        with suppress_stdout_stderr(disable=False):  # llama.cpp warns that a vocabulary has no context size
            self.llama = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        template = self.llama.metadata.get("tokenizer.chat_template")
        if self.llama.chat_format != "chat_template.default" or not template:
            raise ValueError(
                f"{self.path.name}: no chat template of its own in its metadata to count chat prompts with"
            )
        piece = self.llama._model.token_get_text  # as Llama.__init__ names them for its own chat handler
        eos, bos = self.llama.token_eos(), self.llama.token_bos()
        self.formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=piece(eos), bos_token=piece(bos), stop_token_ids=[eos]
        )
        self.lock = threading.Lock()  # the stand-in answers on its own threads

    def completion_ids(self, text: str) -> list[int]:
        """A completions prompt's tokens (a BOS first only where the vocabulary adds one, as llama.cpp does)."""
        with self.lock:
            bos = [self.llama.token_bos()] if self.llama._model.add_bos_token() else []
            return bos + self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A chat request's prompt tokens: the messages in the chat template, generation prompt included."""
        rendered = self.formatter(messages=messages)
        with self.lock:
            return self.llama.tokenize(
                rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
            )

    def pieces(self, ids: Sequence[int]) -> tuple[list[str], list[int]]:
        """Each token's text and its character offset in the decoded text, as the local server echoes them."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        texts, offsets, chars = [], [], 0
        with self.lock:
            for token in ids:
                offsets.append(chars)
                text = decoder.decode(self.llama.detokenize([token]))
                texts.append(text)
                chars += len(text)
        return texts, offsets

    def subject_tokens(self, texts: list[str]) -> list[list[int]]:
        """Texts as the subject model tokenizes them for excerpts (no special tokens)."""
        with self.lock:
            return [self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False) for text in texts]

    def token_text(self, ids: list[int]) -> list[str]:
        with self.lock:
            return [self.llama.detokenize([token]).decode("utf-8", errors="replace") for token in ids]


DIGITS = {str(d): -1.0 - 0.25 * d for d in range(10)}  # a distribution over "0".."9"


def echo_logprobs(tokenizer: PackagedTokenizer, text: str) -> tuple[dict[str, list[Any]], int]:
    """The echo of a completions prompt (tokens, offsets, log-probabilities; none for the first
    token, as the local server gives), and its token count."""
    ids = tokenizer.completion_ids(text)
    tokens, offsets = tokenizer.pieces(ids)
    if "".join(tokens) != text:
        raise ValueError(f"the packaged tokenizer does not give back the prompt's text: {text[:80]!r}")
    # The digits where the all-at-once simulator reads them (its placeholders), the token itself elsewhere:
    # a far smaller reply than the server's 20 alternatives everywhere, read the same.
    tops = [None] + [dict(DIGITS) if token.strip() == UNKNOWN else {token: -1.0} for token in tokens[1:]]
    return {
        "tokens": tokens,
        "text_offset": offsets,
        "token_logprobs": [None] + [-1.0] * (len(ids) - 1),
        "top_logprobs": tops,
    }, len(ids)


def chat_content(body: dict[str, Any]) -> str:
    """A valid reply to any chat request the scorers and simulators send: an array of exactly the
    schema's length (0/1 answers, or 0..10 activations), an array of one answer per numbered
    example when no schema is sent, else one digit (one-at-a-time, the capability probe)."""
    schema = (body.get("response_format") or {}).get("schema")
    if schema is not None:
        n, values = schema["minItems"], schema["items"]["enum"]
        return json.dumps([values[i % 2] for i in range(n)])
    examples = re.findall(r"^Example \d+: ", body["messages"][-1]["content"], flags=re.MULTILINE)
    if examples:
        return json.dumps([i % 2 for i in range(len(examples))])
    return "3"


def swapped(token: str) -> str:
    return token.translate(str.maketrans("01", "10"))


def chat_logprobs(tokenizer: PackagedTokenizer, content: str) -> dict[str, Any]:
    """Each generated token with top log-probabilities holding itself, its 0/1-swapped twin (the
    classifiers' graded answers) and, for a digit, every digit (one-at-a-time's expected value)."""
    ids = tokenizer.completion_ids(content)
    tokens, _ = tokenizer.pieces(ids)
    items = []
    for token in tokens:
        tops = {**(DIGITS if token.strip().isdigit() else {}), swapped(token): -2.0, token: -0.1}
        items.append(
            {"token": token, "logprob": -0.1, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in tops.items()]}
        )
    return {"content": items}


class CountingServer:
    """An OpenAI-compatible stand-in on a loopback port that answers every completions and chat
    request validly and counts it: ``requests`` holds (endpoint, prompt tokens, request body) per
    request, the prompt tokens those its ``usage`` reports, counted by ``tokenizer``."""

    def __init__(self, tokenizer: PackagedTokenizer) -> None:
        self.tokenizer = tokenizer
        self.requests: list[tuple[str, int, dict[str, Any]]] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint = "chat" if self.path.endswith("/chat/completions") else "completions"
                response = server.chat(body) if endpoint == "chat" else server.completion(body)
                with lock:
                    server.requests.append((endpoint, response["usage"]["prompt_tokens"], body))
                self._send(200, response)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        generated = "3"
        if body.get("echo"):
            logprobs, n_prompt = echo_logprobs(self.tokenizer, prompt)
            logprobs = {
                "tokens": [*logprobs["tokens"], generated],
                "text_offset": [*logprobs["text_offset"], len(prompt)],
                "token_logprobs": [*logprobs["token_logprobs"], -1.0],
                "top_logprobs": [*logprobs["top_logprobs"], dict(DIGITS)],
            }
        else:
            n_prompt = len(self.tokenizer.completion_ids(prompt))
            logprobs = {"tokens": [generated], "text_offset": [len(prompt)], "token_logprobs": [-1.0]}
            logprobs["top_logprobs"] = [dict(DIGITS)]
        choice = {
            "index": 0,
            "finish_reason": "length",
            "text": (prompt if body.get("echo") else "") + generated,
            "logprobs": logprobs if body.get("logprobs") is not None else None,
        }
        return {
            "id": "x",
            "object": "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1},
        }

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        content = chat_content(body)
        n_prompt = len(self.tokenizer.chat_ids(body["messages"]))
        n_completion = len(self.tokenizer.completion_ids(content))
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": content},
        }
        if body.get("logprobs"):
            choice["logprobs"] = chat_logprobs(self.tokenizer, content)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }

    def __enter__(self) -> CountingServer:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()
