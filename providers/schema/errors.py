"""The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""

import msgspec


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail
