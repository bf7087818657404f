"""HTTP plumbing shared by every adapter: the pooled client, the SSE reader, and status -> typed error.

The client is httpx (its API everywhere above this module) over escalade's own HTTP/1.1 transport
(providers/_transport.py: measured faster than httpx's pool and aiohttp's on this path). The choice lives
here and nowhere else. Redirects are never followed (an upstream redirect would carry the provider key
elsewhere: CVE-2024-6587's class of bug).
"""

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec

from providers._transport import H1Transport
from providers.base import Call, Timeouts
from providers.errors import (
    ContextLengthExceeded,
    GatewayError,
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRedirect,
    UpstreamRejected,
    UpstreamSilent,
    UpstreamTimeout,
    UpstreamUnavailable,
    scrub,
)
from providers.schema.codec import decode_error_body
from providers.schema.errors import ErrorDetail


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing. A gateway must never carry one client's upstream session
    (Set-Cookie from a provider) into another client's request; it also saves httpx's per-response
    cookie parsing on the hot path."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


def _without_read_limit(limits: httpx.Timeout) -> httpx.Timeout:
    return httpx.Timeout(connect=limits.connect, read=None, write=limits.write, pool=limits.pool)


class UpstreamClient(httpx.AsyncClient):
    """httpx's pooled client with no cookie jar, whose attempts skip AsyncClient.send's layers.

    An attempt's request is built from what is fixed per client and path (the absolute URL, the default
    headers with Host, the timeouts), computed once, and goes straight to the transport: escalade uses
    none of what `send` adds (auth flows, redirects: never followed, cookies: never kept, event hooks),
    and those layers cost about a tenth of a request's CPU on this path.
    """

    _no_cookies = _NoCookies()

    def __init__(self, *, transport: httpx.AsyncBaseTransport, **options: Any) -> None:
        super().__init__(transport=transport, **options)
        self._direct = transport
        self._targets: dict[str, tuple[httpx.URL, httpx.Headers]] = {}
        t = self.timeout
        self._limits = (
            {"timeout": t.as_dict()},
            {"timeout": _without_read_limit(t).as_dict()},
        )
        """Request extensions: with the idle limit, and without it (`patient`)."""

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, _value: object) -> None:
        return None  # httpx sets the jar in __init__: there is none to keep

    def url_for(self, path: str) -> httpx.URL:
        """The absolute URL of `path` under the base URL (parsed once per path, not per request)."""
        return self._target(path)[0]

    def _target(self, path: str) -> tuple[httpx.URL, httpx.Headers]:
        target = self._targets.get(path)
        if target is None:
            url = self._merge_url(path)
            headers = httpx.Headers(self.headers)
            headers["host"] = url.netloc.decode("ascii")
            target = self._targets[path] = (url, headers)
        return target

    def attempt(self, path: str, body: bytes, headers: dict[str, str], *, patient: bool) -> httpx.Request:
        """The POST of one attempt. `patient`: no read timeout (the last candidate waits until the deadline)."""
        url, base = self._target(path)
        merged = httpx.Headers(base)
        for name, value in headers.items():
            merged[name] = value
        return httpx.Request("POST", url, headers=merged, content=body, extensions=self._limits[patient])

    async def send_direct(self, request: httpx.Request) -> httpx.Response:
        """`request` through the transport, its body unread (the caller reads or closes it)."""
        if self.is_closed:
            raise RuntimeError("the upstream client is closed")
        response = await self._direct.handle_async_request(request)
        response.request = request
        return response


def make_client(
    *,
    base_url: str,
    headers: dict[str, str],
    connect_s: float,
    read_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> UpstreamClient:
    """One pooled client per provider. `read_s` bounds the gap between two reads (the idle timeout).

    `transport` replaces escalade's own (tests inject httpx.MockTransport).
    """
    return UpstreamClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        transport=transport or H1Transport(),
        timeout=httpx.Timeout(connect=connect_s, read=read_s, write=connect_s, pool=connect_s),
        follow_redirects=False,
        trust_env=False,
    )


def json_client(
    base_url: str,
    headers: dict[str, str],
    timeouts: Timeouts,
    transport: httpx.AsyncBaseTransport | None = None,
) -> UpstreamClient:
    """The client every adapter uses: JSON in and out, `headers` over those defaults (the provider's
    static headers, then its auth), connect and idle limits from the policy's timeouts."""
    return make_client(
        base_url=base_url,
        headers={"content-type": "application/json", "accept": "application/json", **headers},
        connect_s=timeouts.connect_s,
        read_s=timeouts.idle_s,
        transport=transport,
    )


# ---------------------------------------------------------------- SSE


async def aiter_sse(byte_stream: AsyncIterator[bytes], last: list[bytes] | None = None) -> AsyncIterator[bytes]:
    """Yield the `data` payload of each server-sent event (multi-line data joined with newlines).

    Comments and events without data are skipped. A last event not followed by a blank line is
    still yielded: the JSON decoder above rejects it if it was cut. `last[0]`, when given, is the
    payload yielded last (how the caller learns the stream ended with [DONE]).
    """
    buf = b""
    async for piece in byte_stream:
        buf = buf + piece if buf else piece
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            event, buf = buf[:end], buf[end + 2 :]
            data = _event_data(event)
            if data is not None:
                if last is not None:
                    last[0] = data
                yield data
    if buf.strip():
        data = _event_data(buf.rstrip(b"\n"))
        if data is not None:
            if last is not None:
                last[0] = data
            yield data


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:  # the common case, one line
        return event[6:]
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


# ---------------------------------------------------------------- status -> typed error


def parse_retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date), or None."""
    if (ms := headers.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _detail_of(body: bytes) -> ErrorDetail | None:
    try:
        return decode_error_body(body).error
    except msgspec.DecodeError:
        return None


def error_from_detail(
    detail: ErrorDetail, *, status: int, provider: str, retry_after_s: float | None = None
) -> GatewayError:
    """The one mapping from an upstream's status and error body to escalade's error family."""
    message = f"{provider}: {scrub(detail.message)}"
    code = str(detail.code) if detail.code is not None else ""
    kind = detail.type or ""
    if status == 429 or code in ("rate_limit_exceeded", "rate_limit_error") or kind == "rate_limit_error":
        if code == "insufficient_quota":
            return UpstreamUnavailable(message, provider=provider)
        return UpstreamRateLimited(message, provider=provider, retry_after_s=retry_after_s)
    if status in (401, 403) or kind in ("authentication_error", "permission_error"):
        return UpstreamAuthError(f"{provider}: the provider rejected escalade's credentials", provider=provider)
    if code == "content_filter":  # Azure OpenAI: the prompt tripped the content filter (a 400)
        return UpstreamRejected(message, provider=provider, param=detail.param, code="content_filter")
    if "context_length" in code or "maximum context length" in detail.message.lower():
        return ContextLengthExceeded(message, provider=provider, param=detail.param)
    if status == 0 and kind == "invalid_request_error":
        return UpstreamRejected(message, provider=provider, param=detail.param)
    if status in (408, 504):
        return UpstreamTimeout(message, provider=provider)
    if status >= 500 or kind in ("server_error", "overloaded_error", "api_error") or status == 0:
        return UpstreamUnavailable(message, provider=provider, retry_after_s=retry_after_s)
    if status == 404:
        return UpstreamNotFound(message, provider=provider)
    if 400 <= status < 500:
        return UpstreamRejected(message, provider=provider, param=detail.param)
    return UpstreamProtocolError(message, provider=provider)


def error_from_response(status: int, headers: httpx.Headers, body: bytes, *, provider: str) -> GatewayError:
    if 300 <= status < 400:
        return UpstreamRedirect(
            f"{provider}: upstream answered a redirect ({status}); redirects are not followed", provider=provider
        )
    detail = _detail_of(body) or ErrorDetail(message=f"HTTP {status} from upstream")
    return error_from_detail(detail, status=status, provider=provider, retry_after_s=parse_retry_after(headers))


def error_from_transport(exc: httpx.HTTPError, *, provider: str) -> UpstreamError:
    """httpx transport failures -> typed upstream errors (messages never include URLs with secrets)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamConnectionError(f"{provider}: connect timeout", provider=provider)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{provider}: no data from upstream within the idle timeout", provider=provider)
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectionError(f"{provider}: connection failed", provider=provider)
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamConnectionError(f"{provider}: connection closed by upstream", provider=provider)
    return UpstreamConnectionError(f"{provider}: transport error ({type(exc).__name__})", provider=provider)


def decode_or_protocol_error(decode: Any, body: bytes, *, provider: str) -> Any:
    try:
        return decode(body)
    except msgspec.DecodeError as exc:
        raise UpstreamProtocolError(
            f"{provider}: malformed response from upstream ({exc})", provider=provider
        ) from None


# ---------------------------------------------------------------- the request skeleton every adapter shares

MAX_ERROR_BODY = 64 * 1024
ErrorFor = Callable[[int, httpx.Headers, bytes], Exception]
"""(status, headers, body) of a non-200, non-redirect answer -> the typed error (each provider's own mapping)."""


def _non_200(status: int, headers: httpx.Headers, body: bytes, provider: str, error_for: ErrorFor) -> Exception:
    """Redirects are one error for every provider (never followed); the rest is the provider's mapping."""
    if 300 <= status < 400:
        return error_from_response(status, headers, body, provider=provider)
    return error_for(status, headers, body)


def loop_deadline(deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


async def read_capped(response: httpx.Response) -> bytes:
    """An error body, read up to MAX_ERROR_BODY bytes (an upstream may send a lot of HTML)."""
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= MAX_ERROR_BODY:
            break
    return body


def attempt_request(client: httpx.AsyncClient, path: str, body: bytes, call: Call) -> httpx.Request:
    """The POST of one attempt. While another deployment could answer, `idle_s` of silence on the
    socket ends the attempt (UpstreamSilent: the next one is tried). The last candidate has no read
    timeout: it is given until the request deadline, which the callers enforce, so a slow first token
    or a slow unary answer is waited for, never cut; gaps once a stream flows are bounded above."""
    if isinstance(client, UpstreamClient):
        return client.attempt(path, body, call.headers, patient=not call.has_fallback)
    if call.has_fallback:
        return client.build_request("POST", path, content=body, headers=call.headers)
    patient = _without_read_limit(client.timeout)
    return client.build_request("POST", path, content=body, headers=call.headers, timeout=patient)


async def _send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    if isinstance(client, UpstreamClient):
        return await client.send_direct(request)
    return await client.send(request, stream=True)


def _went_silent(call: Call, provider: str, what: str) -> UpstreamSilent:
    return UpstreamSilent(f"{provider}: {what} within the idle timeout ({call.timeouts.idle_s:g}s)", provider=provider)


async def post_for_body(
    client: httpx.AsyncClient, path: str, body: bytes, call: Call, *, provider: str, error_for: ErrorFor
) -> bytes:
    """A non-streaming POST bounded by the request deadline: the 200 body, or the provider's error.

    No response at all within the idle timeout is UpstreamSilent, as for a stream's headers: the
    next deployment is tried, not the same one again (it would likely stay silent as long).
    """
    request = attempt_request(client, path, body, call)
    try:
        async with asyncio.timeout_at(loop_deadline(call.deadline)):
            try:
                response = await _send(client, request)
            except httpx.ReadTimeout:
                raise _went_silent(call, provider, "no response") from None
            try:
                content = await response.aread()
            finally:
                await response.aclose()
    except TimeoutError:
        raise UpstreamTimeout(
            f"{provider}: no complete answer before the request deadline", provider=provider
        ) from None
    except httpx.HTTPError as exc:
        raise error_from_transport(exc, provider=provider) from None
    if response.status_code != 200:
        raise _non_200(response.status_code, response.headers, content, provider, error_for)
    return content


@contextlib.asynccontextmanager
async def event_stream(
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    call: Call,
    *,
    provider: str,
    error_for: ErrorFor,
    not_a_stream: Callable[[bytes], Exception],
) -> AsyncIterator[AsyncIterator[bytes]]:
    """A streaming POST: the SSE `data` payloads, once the upstream answered 200 with an event stream.

    No response headers within `headers_s`, or `idle_s` without a byte, is UpstreamSilent (not
    retried on this deployment); a non-200 is the provider's error; a 200 that is not SSE is
    `not_a_stream(body)`; other transport failures while reading are typed; the connection is closed
    however the caller stops reading (which cancels the upstream's work).
    """
    request = attempt_request(client, path, body, call)
    last: list[bytes] = [b""]
    headers_by = min(call.deadline, time.monotonic() + call.timeouts.headers_s)
    try:
        async with asyncio.timeout_at(loop_deadline(headers_by)):
            response = await _send(client, request)
    except (TimeoutError, httpx.ReadTimeout):
        message = f"{provider}: no response headers within {call.timeouts.headers_s:g}s"
        raise UpstreamSilent(message, provider=provider) from None
    except httpx.HTTPError as exc:
        raise error_from_transport(exc, provider=provider) from None
    try:
        if response.status_code != 200:
            body = await read_capped(response)
            raise _non_200(response.status_code, response.headers, body, provider, error_for)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            raise not_a_stream(await read_capped(response))
        yield aiter_sse(response.aiter_bytes(), last)
    except httpx.ReadTimeout:
        raise _went_silent(call, provider, "no data from upstream") from None
    except httpx.HTTPError as exc:
        raise error_from_transport(exc, provider=provider) from None
    finally:
        finish = getattr(response.stream, "finish", None)
        if last[0] == b"[DONE]" and finish is not None:  # the answer is over: keep the connection if it can be
            finish(FINISH_GRACE_S)
        await response.aclose()


FINISH_GRACE_S = 1.0
"""After [DONE], how long the end of the HTTP message may take before the connection is closed instead of reused."""
