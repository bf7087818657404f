"""Cost estimates before the call and actual cost from usage."""

import pytest

from policies.cost import DEFAULT_OUTPUT_TOKENS, Size, estimate_cost, request_size, usage_cost
from policies.schema import Price
from providers.schema.chat import Usage


def test_request_size_uses_the_cap_or_the_default():
    assert request_size(4000, 100) == Size(prompt_tokens=1000, output_tokens=100)
    assert request_size(4000, None) == Size(prompt_tokens=1000, output_tokens=DEFAULT_OUTPUT_TOKENS)
    assert request_size(4000, 100, n=3).output_tokens == 300
    assert request_size(0, 0).prompt_tokens == 1


def test_estimate_and_usage_cost_share_the_price_arithmetic():
    price = Price(input_per_mtok=2.5, output_per_mtok=10.0)
    assert estimate_cost(price, Size(prompt_tokens=1000, output_tokens=500)) == pytest.approx(0.0075)
    usage = Usage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500)
    assert usage_cost(price, usage) == pytest.approx(0.0075)
    assert usage_cost(price, None) is None
