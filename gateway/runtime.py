"""The live policy: a validated Policy plus the provider clients and key index built from it.

A Runtime is immutable once built. Hot reload builds a new one off the request path and swaps the
reference; every request reads the reference once, so no request ever sees two policies.
"""

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field

from policies.schema import KeyConf, Policy
from providers.base import Provider
from providers.registry import build_provider
from providers.secrets import load_secret

log = logging.getLogger("escalade.runtime")


@dataclass(frozen=True, slots=True)
class Runtime:
    policy: Policy
    version: str
    """Short content hash of the policy text: what traces and the status endpoint call this policy."""
    providers: dict[str, Provider]
    provider_confs: dict[str, object]
    keys: tuple[KeyConf, ...]
    loaded_at: float = field(default_factory=time.time)
    span_heads: dict[tuple[object, ...], dict[str, object]] = field(default_factory=dict, compare=False)
    """Memo of gateway/instrument.py: the attributes an attempt span starts with, which follow from this
    policy and the attempt's operation, route, deployment, rung and number alone."""


def policy_version(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:12]


def build_runtime(policy: Policy, text: bytes, previous: Runtime | None = None) -> Runtime:
    """Build provider clients for `policy`, reusing the previous runtime's where the config is unchanged.

    Raises providers.secrets.MissingSecret (or ValueError) when a provider cannot be set up.
    """
    providers: dict[str, Provider] = {}
    for name, conf in policy.providers.items():
        if previous is not None and previous.provider_confs.get(name) == conf and name in previous.providers:
            providers[name] = previous.providers[name]
            continue
        key = load_secret(env=conf.api_key_env, file=conf.api_key_file, what=f"provider {name}")
        providers[name] = build_provider(name, conf, key, policy.timeouts)
    return Runtime(
        policy=policy,
        version=policy_version(text),
        providers=providers,
        provider_confs=dict(policy.providers),
        keys=tuple(policy.keys),
    )


async def retire(old: Runtime, new: Runtime | None, grace_s: float) -> None:
    """Close the clients `old` owned that `new` does not reuse, after in-flight requests had time to end."""
    stale = [p for name, p in old.providers.items() if new is None or new.providers.get(name) is not p]
    if not stale:
        return
    if grace_s > 0:
        await asyncio.sleep(grace_s)
    for provider in stale:
        try:
            await provider.aclose()
        except Exception:  # closing is best effort; never let it take the gateway down
            log.warning("closing provider %s failed", provider.name, exc_info=True)
