"""Policy-file shape of the `anthropic` provider type."""

from typing import Annotated, Literal

import msgspec

from providers.openai_compat.config import ProviderConfBase

Budget = Annotated[int, msgspec.Meta(ge=1024)]
"""Anthropic's smallest thinking budget is 1,024 tokens (extended-thinking docs, 2026-05)."""


class ThinkingBudgets(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`budget_tokens` sent for each OpenAI `reasoning_effort` level (`none`/`minimal` turn thinking off)."""

    low: Budget = 1024
    medium: Budget = 4096
    high: Budget = 16384
    xhigh: Budget = 32768


class AnthropicConf(ProviderConfBase, tag_field="type", tag="anthropic"):
    base_url: str | None = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    """Sent as the `anthropic-version` header on every request."""
    betas: list[str] = []
    """Beta features, sent as one `anthropic-beta` header (comma-separated)."""
    max_tokens_default: Annotated[int, msgspec.Meta(ge=1)] = 4096
    """Anthropic requires `max_tokens`; this is used when the client sets neither `max_tokens` nor
    `max_completion_tokens`. With thinking on, the thinking budget is added to it."""
    thinking: Literal["budget", "adaptive"] = "budget"
    """How `reasoning_effort` is sent: `budget` = `thinking: {type: enabled, budget_tokens}` (every
    thinking model); `adaptive` = `thinking: {type: adaptive}` plus `output_config.effort` (newer models)."""
    thinking_budgets: ThinkingBudgets = ThinkingBudgets()
    structured_output: Literal["native", "tool"] = "native"
    """How `response_format: json_schema` is sent: `native` = `output_config.format` (models with
    structured outputs); `tool` = a forced tool whose input is the answer (any tool-capable model)."""
