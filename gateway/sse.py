"""Server-sent events out: the only place chunks become bytes on a streaming response."""

from typing import Any

from providers.errors import GatewayError
from providers.schema.codec import encode

DONE = b"data: [DONE]\n\n"


def frame(chunk: Any) -> bytes:
    return b"data: " + encode(chunk) + b"\n\n"


def error_frame(error: GatewayError) -> bytes:
    """The in-band error after the commit point. The stream then closes WITHOUT [DONE]."""
    return b"data: " + encode(error.to_body()) + b"\n\n"
