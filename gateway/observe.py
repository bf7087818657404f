"""Fan-out of attempt outcomes to whoever keeps score (the state store, metrics).

Observers are plain callables run inline on the event loop: they must be quick and must not await
(a store that writes to Redis queues the outcome and flushes in the background). One that raises is
logged and never fails the request.
"""

import logging
from collections.abc import Callable, Sequence

from policies.health import Outcome

log = logging.getLogger("escalade.observe")

Observer = Callable[[Outcome], None]


def notify(observers: Sequence[Observer], outcome: Outcome) -> None:
    for observer in observers:
        try:
            observer(outcome)
        except Exception:
            log.exception("observer %r failed on an outcome of %s", observer, outcome.deployment)
