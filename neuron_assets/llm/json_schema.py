"""Asking a server to hold its reply to a JSON schema: the ways OpenAI-compatible servers take it.

Servers differ in how a request names the schema, and one that does not understand the form
it is given may refuse the request, ignore the schema, or fail it with a 500 (llama-cpp-python's
server does the last for ``json_schema``). So the form is configured per backend, never guessed:

- ``json_schema``: ``{"type": "json_schema", "json_schema": {"name": ..., "schema": ...}}``, the
  OpenAI form, taken by vLLM, SGLang, llama.cpp's own server and Ollama (OpenAI itself wants an
  object at the schema's root, so the array replies asked for here need ``none`` there);
- ``json_object``: ``{"type": "json_object", "schema": ...}``, llama-cpp-python's server (the
  local server) and llama.cpp's;
- ``none``: the prompt alone asks for the format.
"""

from __future__ import annotations

from typing import Any

JSON_SCHEMA_FORMATS = ("json_schema", "json_object", "none")


def check_json_schema_format(name: str) -> str:
    """``name`` if it is one of ``JSON_SCHEMA_FORMATS``, else a ``ValueError`` naming them."""
    if name not in JSON_SCHEMA_FORMATS:
        raise ValueError(f"json_schema_format {name!r} is not one of {list(JSON_SCHEMA_FORMATS)}")
    return name


def schema_request(client: Any, schema_name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The request fields that hold a reply to ``schema`` in the form ``client``'s backend takes
    (its ``json_schema_format``; a client without one is asked with the prompt alone): none for ``none``."""
    field = response_format(getattr(client, "json_schema_format", "none"), schema_name, schema)
    return {} if field is None else {"response_format": field}


def response_format(name: str, schema_name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` request field asking for ``schema`` in the form ``name``; ``None``
    for ``none`` (send no such field)."""
    if check_json_schema_format(name) == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": schema_name, "schema": schema}}
    if name == "json_object":
        return {"type": "json_object", "schema": schema}
    return None
