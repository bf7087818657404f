"""The routing extension: each non-OpenAI wire format registers the paths it serves.

Every module here adds matchers with ``server.add_matcher``; a matcher maps (method, path, query)
to a ``Route`` (handler, error dialect, model/stream taken from the path, request checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import MockUpstream


def register(server: MockUpstream) -> None:
    from . import anthropic_wire, azure_wire, gemini_wire, mistral_wire

    for module in (anthropic_wire, azure_wire, gemini_wire, mistral_wire):
        module.register(server)
    from . import extra_faults

    extra_faults.register(server)
