"""Golden fixtures for the native adapters, run through the real adapter with a fake transport.

Layout: ``tests/golden/<provider>/provider.json`` holds the provider's policy entry, the key and the
upstream model; each case directory holds

    request.json            the client's OpenAI body
    case.json               optional: {"conf": {...over provider.json's conf}, "overrides": {...},
                            "upstream_status": 529, "upstream_headers": {...}}
    upstream_request.json   what the adapter must send: {"method", "path", "headers" (a subset), "body"}
    upstream_response.json  the upstream's JSON answer (or its error body)      } one of
    upstream.sse            the upstream's event stream, byte for byte           }
    response.json           the OpenAI response escalade returns               } one of, and/or
    chunks.jsonl            the OpenAI chunks escalade yields, one per line    }
    error.json              the typed error raised: {"class", "status", "param", "code", "retryable",
                            "retry_after_s", "message_excludes": [...], "message_includes": [...]}

A stream case may have both chunks.jsonl and error.json (chunks before a mid-stream error). Only
providers with a provider.json are run here. `created` is the adapter's clock and is not compared.
To regenerate the expected files after a deliberate change: ESCALADE_GOLDEN_UPDATE=1 pytest this file,
then review the diff like code.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.ingress import decode_inbound
from providers import _http
from providers.base import Call, Timeouts
from providers.errors import GatewayError
from providers.registry import build_provider
from providers.schema.codec import decode_chat_request, decode_embedding_request
from providers.secrets import Secret

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("ESCALADE_GOLDEN_UPDATE") == "1"
PROVIDERS = sorted(p.parent for p in GOLDEN.glob("*/provider.json"))
CASES = sorted(c for p in PROVIDERS for c in p.iterdir() if c.is_dir())


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _write(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _without_created(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_created(v) for k, v in value.items() if k != "created"}
    if isinstance(value, list):
        return [_without_created(v) for v in value]
    return value


class Upstream:
    """The fake upstream: records the one request, answers from the case's files."""

    def __init__(self, case: Path, meta: dict[str, Any]) -> None:
        self.case = case
        self.meta = meta
        self.requests: list[httpx.Request] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Installed over H1Transport.handle_async_request (a bound method: no transport argument)."""
        self.requests.append(request)
        status = self.meta.get("upstream_status", 200)
        headers = dict(self.meta.get("upstream_headers", {}))
        sse = self.case / "upstream.sse"
        if sse.exists():
            headers.setdefault("content-type", "text/event-stream")
            return httpx.Response(status, headers=headers, content=sse.read_bytes(), request=request)
        headers.setdefault("content-type", "application/json")
        body = (self.case / "upstream_response.json").read_bytes()
        return httpx.Response(status, headers=headers, content=body, request=request)


def _provider(case: Path, meta: dict[str, Any]) -> Any:
    spec = _load(case.parent / "provider.json")
    from policies.schema import Policy  # the policy file's own validation of the provider entry

    conf = {**spec["conf"], **meta.get("conf", {})}
    policy = msgspec.convert({"providers": {"golden": conf}}, Policy)
    return build_provider("golden", policy.providers["golden"], Secret(spec["key"]), Timeouts()), spec


async def _run(case: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Upstream, Any, GatewayError | None]:
    meta = _load(case / "case.json") if (case / "case.json").exists() else {}
    upstream = Upstream(case, meta)
    monkeypatch.setattr(_http.H1Transport, "handle_async_request", upstream.handle)
    provider, spec = _provider(case, meta)
    body = (case / "request.json").read_bytes()
    endpoint = meta.get("endpoint", "chat")
    inbound = decode_inbound(body, decode_embedding_request if endpoint == "embeddings" else decode_chat_request)
    call = Call(
        request_id="req-golden",
        upstream_model=spec["upstream_model"],
        timeouts=Timeouts(),
        deadline=time.monotonic() + 30,
        overrides=meta.get("overrides", {}),
        headers={"x-request-id": "req-golden"},
    )
    got: Any = None
    error: GatewayError | None = None
    try:
        if endpoint == "embeddings":
            got = await provider.embeddings(inbound, call)
        elif inbound.typed.is_stream:
            got = []
            async for chunk in provider.chat_stream(inbound, call):
                got.append(chunk)
        else:
            got = await provider.chat(inbound, call)
    except GatewayError as exc:
        error = exc
    finally:
        await provider.aclose()
    return upstream, got, error


def _request_view(request: httpx.Request, want: dict[str, Any] | None) -> dict[str, Any]:
    names = sorted((want or {}).get("headers", {})) or ["content-type"]
    return {
        "method": request.method,
        "path": request.url.raw_path.decode(),
        "headers": {n: request.headers.get(n) for n in names},
        "body": json.loads(request.content),
    }


def _error_view(error: GatewayError) -> dict[str, Any]:
    return {
        "class": type(error).__name__,
        "status": error.status,
        "param": error.param,
        "code": error.code,
        "retryable": error.retryable,
        "retry_after_s": error.retry_after_s,
    }


def _check(path: Path, got: Any) -> None:
    if UPDATE:
        _write(path, got)
        return
    assert path.exists(), f"{path} is missing (run with ESCALADE_GOLDEN_UPDATE=1, then review)"
    assert got == _load(path), f"{path.parent.name}: {path.name} differs"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.parent.name}/{c.name}")
async def test_golden_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream, got, error = await _run(case, monkeypatch)
    want_request = case / "upstream_request.json"
    if upstream.requests:
        existing = _load(want_request) if want_request.exists() else None
        _check(want_request, _request_view(upstream.requests[0], existing))
    else:
        assert not want_request.exists(), "the adapter sent nothing, but an upstream request is expected"
    if isinstance(got, list):
        lines = [_without_created(msgspec.to_builtins(c)) for c in got]
        if UPDATE:
            (case / "chunks.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        else:
            want = [json.loads(line) for line in (case / "chunks.jsonl").read_text().splitlines() if line.strip()]
            assert lines == want, f"{case.name}: chunks.jsonl differs"
    elif got is not None:
        _check(case / "response.json", _without_created(msgspec.to_builtins(got)))
    if error is not None or (case / "error.json").exists():
        assert error is not None, f"{case.name}: an error was expected"
        view = _error_view(error)
        expected = _load(case / "error.json") if (case / "error.json").exists() else {}
        for secret in expected.get("message_excludes", []):
            assert secret not in error.message, f"{case.name}: the error message leaks {secret!r}"
        for text in expected.get("message_includes", []):
            assert text in error.message, f"{case.name}: the error message lacks {text!r}"
        notes = {k: expected[k] for k in ("message_excludes", "message_includes") if k in expected}
        if UPDATE:
            _write(case / "error.json", {**view, **notes})
        else:
            assert view == {k: v for k, v in expected.items() if k not in notes}


def test_every_provider_has_cases() -> None:
    for provider in PROVIDERS:
        assert [c for c in provider.iterdir() if c.is_dir()], provider.name
