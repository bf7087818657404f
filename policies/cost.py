"""What a request costs: estimated before the call (routing, caps, budgets) and actual from usage. Pure.

The estimate is deliberately cheap and a little pessimistic: prompt tokens from the request body's size
(about 4 bytes a token, which over-counts JSON punctuation) and output tokens from the client's cap, or
a default when it set none. It runs on every request of a cost-aware route, so it never tokenizes.
"""

from dataclasses import dataclass
from typing import Any

from policies.schema import Price

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 512
"""Output tokens assumed when the client set no max_tokens."""


@dataclass(frozen=True, slots=True)
class Size:
    """A request's estimated token counts."""

    prompt_tokens: int
    output_tokens: int


def request_size(body_bytes: int, output_cap: int | None, n: int = 1) -> Size:
    """Estimated size of a request whose body is `body_bytes` long and asks for at most `output_cap`
    tokens per choice (None: DEFAULT_OUTPUT_TOKENS), `n` choices."""
    per_choice = output_cap if output_cap is not None else DEFAULT_OUTPUT_TOKENS
    return Size(prompt_tokens=max(1, body_bytes // BYTES_PER_TOKEN), output_tokens=max(0, per_choice) * max(1, n))


def estimate_cost(price: Price, size: Size) -> float:
    """USD a deployment at `price` would charge for a request of `size`, before the call."""
    return (size.prompt_tokens * price.input_per_mtok + size.output_tokens * price.output_per_mtok) / 1e6


def usage_cost(price: Price, usage: Any) -> float | None:
    """USD the answer cost, from the usage the provider reported (None when it reported none)."""
    if not usage:
        return None
    return (usage.prompt_tokens * price.input_per_mtok + usage.completion_tokens * price.output_per_mtok) / 1e6
