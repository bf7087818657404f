"""Live routing state and key spend: one Store interface, a memory and a Redis implementation.

`build_store` makes the store the policy's `state:` section asks for; `StoreKeeper` owns the live one
for a gateway (start, stop, and a rebuild when a hot reload changes the `state:` section).
"""

import os
import time

from gateway.store.base import Clock, PolicySource, Publish, Store
from gateway.store.memory import MemoryStore
from policies.schema import StateConf

__all__ = ["MemoryStore", "Store", "build_store"]


def build_store(conf: StateConf, policy: PolicySource, publish: Publish, clock: Clock = time.time) -> Store:
    """The store `conf` describes. Raises ValueError when the Redis URL's env var is not set."""
    if conf.backend == "memory":
        return MemoryStore(policy, publish, clock)
    url = os.environ.get(conf.redis_url_env, "").strip()
    if not url:
        raise ValueError(f"state.backend is redis but the env var {conf.redis_url_env} (the Redis URL) is not set")
    from gateway.store.redis import RedisStore  # only imported when used

    return RedisStore(policy, url, publish, clock, prefix=conf.key_prefix)
