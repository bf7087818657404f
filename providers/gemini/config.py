"""Policy-file shape of the `gemini` provider type (the Gemini API, not Vertex AI)."""

from typing import Literal

from providers.openai_compat.config import ProviderConfBase


class GeminiConf(ProviderConfBase, tag_field="type", tag="gemini"):
    """Google's Gemini API. The key goes in the `x-goog-api-key` header, never in the URL."""

    base_url: str | None = "https://generativelanguage.googleapis.com"
    api_version: str = "v1beta"
    """Path segment before `/models/...`: the thinking, JSON-Schema and signature fields live in v1beta."""
    thinking: Literal["auto", "level", "budget"] = "auto"
    """How `reasoning_effort` is sent: `thinkingLevel` (Gemini 3 and later), `thinkingBudget` (Gemini 2.x),
    or `auto`: budget for model names starting with `gemini-1` or `gemini-2`, level otherwise."""
