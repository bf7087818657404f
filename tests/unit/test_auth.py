"""gateway/auth.py: client key -> principal, and which routes that principal may use."""

import hashlib
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.auth import ANONYMOUS, authenticate, authorize_route
from gateway.runtime import Runtime, build_runtime
from policies.loader import parse_policy
from providers.errors import Forbidden, ModelNotFound, Unauthorized

SUPPORT_KEY = "esk-support-0123456789"
ADMIN_KEY = "esk-admin-abcdefghij"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


BASE = """
version: 1
providers:
  local:
    type: vllm
    base_url: http://127.0.0.1:8000/v1
models:
  small:
    provider: local
    model: tiny
routes:
  auto: {models: [small]}
  fast: {models: [small]}
  private: {models: [small]}
"""

WITH_KEYS = (
    BASE
    + f"""
keys:
  - name: support-bot
    key_sha256: {sha(SUPPORT_KEY)}
    routes: [auto, fast]
  - name: admin
    key_sha256: {sha(ADMIN_KEY)}
"""
)


@pytest.fixture
async def make_runtime() -> AsyncIterator[Callable[[str], Runtime]]:
    built: list[Runtime] = []

    def make(text: str) -> Runtime:
        runtime = build_runtime(parse_policy(text), text.encode())
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        for provider in runtime.providers.values():
            await provider.aclose()


# ---------------------------------------------------------------- no keys in the policy


def test_keyless_policy_is_open_on_loopback(make_runtime: Callable[[str], Runtime]) -> None:
    runtime = make_runtime(BASE)
    assert authenticate(None, runtime, loopback=True) is ANONYMOUS
    assert authenticate("Bearer anything", runtime, loopback=True) is ANONYMOUS
    assert ANONYMOUS.may_use("private")


@pytest.mark.parametrize("header", [None, "Bearer anything"])
def test_keyless_policy_refuses_non_loopback_listeners(
    make_runtime: Callable[[str], Runtime], header: str | None
) -> None:
    with pytest.raises(Unauthorized) as caught:
        authenticate(header, make_runtime(BASE), loopback=False)
    assert caught.value.status == 401
    assert "keys" in caught.value.message


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("loopback", [True, False])
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {SUPPORT_KEY}",
        f"Token {SUPPORT_KEY}",
        SUPPORT_KEY,
        "Bearer sk-wrong-key",
        f"Bearer {SUPPORT_KEY}x",
        f"Bearer {SUPPORT_KEY[:-1]}",
        f"Bearer {sha(SUPPORT_KEY)}",  # the stored hash is not a key
    ],
)
def test_missing_malformed_or_wrong_key_is_401(
    make_runtime: Callable[[str], Runtime], header: str | None, loopback: bool
) -> None:
    with pytest.raises(Unauthorized) as caught:
        authenticate(header, make_runtime(WITH_KEYS), loopback=loopback)
    error = caught.value
    assert (error.status, error.type, error.code) == (401, "authentication_error", "invalid_api_key")
    assert SUPPORT_KEY not in error.message


@pytest.mark.parametrize("header", [f"Bearer {SUPPORT_KEY}", f"bearer {SUPPORT_KEY}", f"Bearer   {SUPPORT_KEY}  "])
def test_right_key_gives_its_principal_and_routes(make_runtime: Callable[[str], Runtime], header: str) -> None:
    principal = authenticate(header, make_runtime(WITH_KEYS), loopback=False)
    assert principal.name == "support-bot"
    assert principal.routes == ("auto", "fast")
    assert principal.may_use("auto") and principal.may_use("fast")
    assert not principal.may_use("private")


def test_key_without_route_list_may_use_every_route(make_runtime: Callable[[str], Runtime]) -> None:
    principal = authenticate(f"Bearer {ADMIN_KEY}", make_runtime(WITH_KEYS), loopback=False)
    assert principal.name == "admin"
    assert principal.routes == ("*",)
    assert all(principal.may_use(r) for r in ("auto", "fast", "private"))


def test_runtime_stores_only_hashes(make_runtime: Callable[[str], Runtime]) -> None:
    runtime = make_runtime(WITH_KEYS)
    assert [k.key_sha256 for k in runtime.keys] == [sha(SUPPORT_KEY), sha(ADMIN_KEY)]
    assert SUPPORT_KEY not in repr(runtime.keys)


# ---------------------------------------------------------------- routes


def test_unknown_route_is_404(make_runtime: Callable[[str], Runtime]) -> None:
    runtime = make_runtime(WITH_KEYS)
    principal = authenticate(f"Bearer {ADMIN_KEY}", runtime, loopback=False)
    with pytest.raises(ModelNotFound) as caught:
        authorize_route(principal, "gpt-9", runtime)
    assert (caught.value.status, caught.value.param, caught.value.code) == (404, "model", "model_not_found")


def test_route_the_key_may_not_use_is_403(make_runtime: Callable[[str], Runtime]) -> None:
    runtime = make_runtime(WITH_KEYS)
    principal = authenticate(f"Bearer {SUPPORT_KEY}", runtime, loopback=False)
    authorize_route(principal, "auto", runtime)
    with pytest.raises(Forbidden) as caught:
        authorize_route(principal, "private", runtime)
    assert (caught.value.status, caught.value.param) == (403, "model")


def test_unknown_route_is_404_even_for_a_restricted_key(make_runtime: Callable[[str], Runtime]) -> None:
    runtime = make_runtime(WITH_KEYS)
    principal = authenticate(f"Bearer {SUPPORT_KEY}", runtime, loopback=False)
    with pytest.raises(ModelNotFound):
        authorize_route(principal, "nope", runtime)


def test_anonymous_on_loopback_may_use_every_route(make_runtime: Callable[[str], Runtime]) -> None:
    runtime = make_runtime(BASE)
    for route in ("auto", "fast", "private"):
        authorize_route(ANONYMOUS, route, runtime)
