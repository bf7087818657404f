"""The Redis key layout. Every key starts with `<state.key_prefix>:v1:` and expires on its own.

    <p>:v1:lat:<deployment>:<slice_s>:<index>  hash    latency/error counters of one time slice (HINCRBY)
                                                        TTL: the latency window + 2 slices
    <p>:v1:brk:<deployment>                    string  the breaker state (JSON), changed by compare-and-set
                                                        TTL: max(1 h, 4 x open_s), renewed on every change
    <p>:v1:probe:<deployment>:<episode>        string  probe claims of one half-open spell (INCR)
                                                        TTL: open_s (a probe that never reports lapses)
    <p>:v1:cool:<deployment>                   string  "<until>|<why>", only ever extended
                                                        TTL: until the cooldown ends
    <p>:v1:spend:<key>:<period>:<period id>    string  USD spent by a virtual key (INCRBYFLOAT)
                                                        TTL: the period's length + 1 day
    <p>:v1:rate:<key>:rpm|tpm                  string  GCRA theoretical arrival time of a key's limit
                                                        TTL: until the bucket is full again (+ 60 s)

Deployment and key names are escaped (`%` and `:`), so a name can never reach into another key.
Each script touches one key, so the layout also works on Redis Cluster.
"""

from policies.spend import PERIOD_S

SPEND_GRACE_S = 86400.0


def _name(text: str) -> str:
    return text.replace("%", "%25").replace(":", "%3A")


class Keys:
    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:v1"

    def latency(self, deployment: str, slice_s: int, index: int) -> str:
        return f"{self.base}:lat:{_name(deployment)}:{slice_s}:{index}"

    def breaker(self, deployment: str) -> str:
        return f"{self.base}:brk:{_name(deployment)}"

    def probe(self, deployment: str, episode: int) -> str:
        return f"{self.base}:probe:{_name(deployment)}:{episode}"

    def cooldown(self, deployment: str) -> str:
        return f"{self.base}:cool:{_name(deployment)}"

    def spend(self, key: str, slot: str) -> str:
        """`slot` is "<period>:<period id>", e.g. "day:2025-03-31"."""
        return f"{self.base}:spend:{_name(key)}:{slot}"

    def rate(self, key: str, kind: str) -> str:
        """`kind` is rpm or tpm."""
        return f"{self.base}:rate:{_name(key)}:{kind}"


def spend_ttl_s(slot: str) -> int:
    return int(PERIOD_S[slot.split(":", 1)[0]] + SPEND_GRACE_S)


def breaker_ttl_s(open_s: float) -> float:
    return max(3600.0, 4 * open_s)
