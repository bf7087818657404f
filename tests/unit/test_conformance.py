"""The conformance matrix: every registered provider type x every capability, offline.

For each provider type in providers/registry.py (built from a minimal policy entry) and each
capability in providers/capabilities.ALL:

- declared (in the adapter class's `capabilities`): a minimal request that needs it is translated
  without error, and the upstream request the adapter sends carries the feature (a marker from the
  request shows up in it, and the body differs from the same request without the feature);
- not declared: the request is refused with InvalidRequest naming the parameter, before anything is
  sent upstream.

Nothing leaves the process: the shared HTTP transport is replaced by a recorder that answers 500.
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest

from gateway.ingress import decode_inbound
from policies.schema import Policy
from providers import _http
from providers.base import Call, Timeouts
from providers.capabilities import ALL
from providers.errors import GatewayError, InvalidRequest
from providers.registry import FACTORIES, build_provider
from providers.schema.codec import decode_chat_request, decode_completion_request, decode_embedding_request
from providers.secrets import Secret

TYPES = sorted(t.__struct_config__.tag for t in FACTORIES)  # type: ignore[attr-defined]
REQUIRED_EXTRAS: dict[str, dict[str, Any]] = {"azure_openai": {"api_version": "2024-10-21"}}
"""Fields a provider type cannot be configured without (beyond type and base_url)."""

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
USER = [{"role": "user", "content": "conformance check"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "conformance_tool",
        "description": "A tool for the conformance matrix",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"conformance_field": {"type": "string"}},
    "required": ["conformance_field"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Need:
    """A minimal request that needs one capability, and how its presence or refusal shows."""

    body: dict[str, Any]
    marker: str | None
    """Text that must appear in the upstream request when the feature is translated."""
    params: tuple[str, ...]
    """Parameter names (or prefixes) a refusal may name."""
    endpoint: str = "chat"
    baseline: dict[str, Any] = field(default_factory=dict)


NEEDS: dict[str, Need] = {
    "tools": Need(
        {"messages": USER, "tools": [TOOL], "tool_choice": "auto"}, "conformance_tool", ("tools", "tool_choice")
    ),
    "json_schema": Need(
        {
            "messages": USER,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
        },
        "conformance_field",
        ("response_format",),
    ),
    "vision": Need(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "conformance check"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                }
            ]
        },
        PNG,
        ("messages",),
    ),
    "logprobs": Need({"messages": USER, "logprobs": True, "top_logprobs": 2}, None, ("logprobs", "top_logprobs")),
    "reasoning": Need({"messages": USER, "reasoning_effort": "high"}, None, ("reasoning_effort",)),
    "embeddings": Need({"input": ["conformance embedding"]}, "conformance embedding", ("model", "input"), "embeddings"),
    "completions": Need({"prompt": "conformance prompt"}, "conformance prompt", ("model", "prompt"), "completions"),
}


def test_every_capability_has_a_row() -> None:
    assert set(NEEDS) == set(ALL)


@pytest.mark.parametrize("kind", TYPES)
def test_every_adapter_declares_known_capabilities(kind: str) -> None:
    declared = getattr(_adapter_class(kind), "capabilities", None)
    assert isinstance(declared, frozenset), f"{kind}: the adapter class declares no `capabilities` frozenset"
    assert declared <= ALL, f"{kind}: unknown capabilities {sorted(declared - ALL)}"


class Recorder:
    """Stands in for the shared transport: remembers requests, answers 500."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(500, json={"error": {"message": "conformance recorder"}}, request=request)


def _adapter_class(kind: str) -> type:
    return FACTORIES[next(t for t in FACTORIES if t.__struct_config__.tag == kind)]  # type: ignore[attr-defined]


def _provider(kind: str) -> Any:
    entry = {"type": kind, "base_url": "https://upstream.invalid", **REQUIRED_EXTRAS.get(kind, {})}
    conf = msgspec.convert({"providers": {"p": entry}}, Policy).providers["p"]
    return build_provider("p", conf, Secret("conformance-key"), Timeouts())


async def _send(
    kind: str, need: Need, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[httpx.Request], GatewayError | None]:
    recorder = Recorder()
    monkeypatch.setattr(_http.H1Transport, "handle_async_request", recorder.handle)
    provider = _provider(kind)
    decode = {
        "chat": decode_chat_request,
        "embeddings": decode_embedding_request,
        "completions": decode_completion_request,
    }
    inbound = decode_inbound(json.dumps({"model": "route", **body}).encode(), decode[need.endpoint])
    call = Call(request_id="conf", upstream_model="model-x", timeouts=Timeouts(), deadline=time.monotonic() + 10)
    method = {"chat": provider.chat, "embeddings": provider.embeddings, "completions": provider.completion}
    error: GatewayError | None = None
    try:
        await method[need.endpoint](inbound, call)
    except GatewayError as exc:
        error = exc
    finally:
        await provider.aclose()
    return recorder.requests, error


def _body_of(request: httpx.Request) -> str:
    return request.content.decode()


@pytest.mark.parametrize("capability", sorted(ALL))
@pytest.mark.parametrize("kind", TYPES)
async def test_capability_matrix(kind: str, capability: str, monkeypatch: pytest.MonkeyPatch) -> None:
    need = NEEDS[capability]
    declared = getattr(_adapter_class(kind), "capabilities", frozenset())
    sent, error = await _send(kind, need, need.body, monkeypatch)
    if capability not in declared:
        assert isinstance(error, InvalidRequest), (
            f"{kind} does not declare {capability}, yet did not refuse it: {error!r}"
        )
        assert error.param and error.param.startswith(need.params), (
            f"{kind}/{capability}: refusal names {error.param!r}"
        )
        assert not sent, f"{kind}/{capability}: a refused request must not reach the upstream"
        return
    assert not isinstance(error, InvalidRequest), f"{kind} declares {capability} but refused it: {error!r}"
    assert len(sent) == 1, f"{kind}/{capability}: expected one upstream request, got {len(sent)}"
    upstream = _body_of(sent[0])
    if need.marker is not None:
        assert need.marker in upstream, f"{kind}/{capability}: the upstream request lacks the feature"
    if need.endpoint == "chat":
        plain, _ = await _send(kind, need, {"messages": USER}, monkeypatch)
        assert plain and _body_of(plain[0]) != upstream, f"{kind}/{capability}: the feature changed nothing upstream"
