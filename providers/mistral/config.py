"""Policy-file shape of the `mistral` provider type (La Plateforme, or any server speaking its API)."""

from typing import Literal

from providers.openai_compat.config import ProviderConfBase

Effort = Literal["none", "low", "medium", "high"]


class MistralConf(ProviderConfBase, tag_field="type", tag="mistral"):
    """Mistral's API: bearer key, OpenAI-like bodies with Mistral's own names and rules."""

    base_url: str | None = "https://api.mistral.ai/v1"
    reasoning_efforts: tuple[Effort, ...] = ("none", "high")
    """The `reasoning_effort` values the deployment's models accept (Mistral Small 4 and Medium 3.5 take
    none and high). A client's value is raised to the nearest one listed: low and medium become high here."""
