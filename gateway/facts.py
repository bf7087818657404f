"""What routing knows about a client request before any call: its estimated size, whether it streams, and
the client's own cost cap (a header that can only narrow the route's `max_cost_usd`)."""

import math
from typing import Any

from policies.cost import request_size
from policies.strategies import Facts
from providers.errors import InvalidRequest

MAX_COST_HEADER = "x-escalade-max-cost-usd"


def request_facts(body_bytes: int, typed: Any, max_cost_header: str | None = None) -> Facts:
    """Facts of a decoded request (chat, completion or embedding) whose body was `body_bytes` long."""
    n = getattr(typed, "n", None)
    choices = n if isinstance(n, int) and n > 0 else 1
    cap = getattr(typed, "output_cap", 0)  # embeddings produce no output tokens
    return Facts(
        size=request_size(body_bytes, cap, choices),
        stream=bool(getattr(typed, "is_stream", False)),
        choices=choices,
        max_cost_usd=parse_cost_cap(max_cost_header),
    )


def parse_cost_cap(value: str | None) -> float | None:
    """The header's USD amount; a value that is not a finite number of 0 or more is the client's error."""
    if value is None:
        return None
    try:
        cap = float(value.strip())
    except ValueError:
        cap = math.nan
    if not math.isfinite(cap) or cap < 0:
        raise InvalidRequest(
            f"header {MAX_COST_HEADER} must be a number of US dollars, 0 or more",
            param=MAX_COST_HEADER,
            code="invalid_value",
        )
    return cap
