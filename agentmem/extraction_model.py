"""The optional extraction model: an OpenAI-compatible chat endpoint (``/chat/completions``).

Configured by ``AGENTMEM_EXTRACTION_URL`` (the API's base, e.g. ``http://host:8000/v1``),
``AGENTMEM_EXTRACTION_MODEL`` and ``AGENTMEM_EXTRACTION_KEY`` (sent as a bearer token;
optional). Its answer is the content of the first choice, which must be one JSON object
valid against ``agentmem.domain.extraction.ANSWER_SCHEMA``: anything else is refused with
``unavailable``, and nothing is stored. The request runs in a thread (stdlib ``urllib``):
one extraction at a time per request, never on a write path unless asked.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import jsonschema
import msgspec

from agentmem.domain.extraction import ANSWER_SCHEMA, Answer, complete, prompt_messages
from agentmem.errors import UnavailableError

TIMEOUT_S = 60.0
MAX_ANSWER_BYTES = 1 << 20

_validator = jsonschema.Draft202012Validator(ANSWER_SCHEMA)


@dataclass(frozen=True)
class ModelEndpoint:
    url: str
    model: str
    key: str | None = None
    timeout: float = TIMEOUT_S

    @property
    def completions_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def _post(endpoint: ModelEndpoint, body: bytes) -> bytes:
    headers = {"Content-Type": "application/json"}
    if endpoint.key:
        headers["Authorization"] = f"Bearer {endpoint.key}"
    request = urllib.request.Request(endpoint.completions_url, body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=endpoint.timeout) as response:
        data: bytes = response.read(MAX_ANSWER_BYTES + 1)
    if len(data) > MAX_ANSWER_BYTES:
        raise UnavailableError(f"the extraction model answered more than {MAX_ANSWER_BYTES} bytes")
    return data


def parse_answer(content: str) -> Answer:
    """A model's answer (the first choice's content) as an ``Answer``, once it validates
    against the schema; else ``unavailable``, saying why."""
    try:
        document: Any = json.loads(content)
    except ValueError as exc:
        raise UnavailableError(f"the extraction model's answer is not JSON: {exc}") from None
    errors = sorted(_validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(the answer)"
        raise UnavailableError(
            f"the extraction model's answer does not match the schema at {where}: "
            f"{errors[0].message}",
            {"errors": len(errors)},
        )
    return complete(msgspec.convert(document, Answer))


async def ask(endpoint: ModelEndpoint, text: str) -> Answer:
    """The model's validated answer for ``text``."""
    body = msgspec.json.encode(
        {
            "model": endpoint.model,
            "messages": prompt_messages(text),
            "temperature": 0,
            "response_format": {"type": "json_object"},
        }
    )
    try:
        raw = await asyncio.to_thread(_post, endpoint, body)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise UnavailableError(f"the extraction model did not answer: {exc}") from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UnavailableError(
            "the extraction model's reply is not a chat completion (choices[0].message.content)"
        ) from None
    if not isinstance(content, str):
        raise UnavailableError("the extraction model's message content is not text")
    return parse_answer(content)
