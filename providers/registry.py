"""Provider type (the policy's `type:` tag) -> adapter factory. Adding a provider is one line here."""

from collections.abc import Callable
from typing import Any

from providers.anthropic.adapter import AnthropicProvider
from providers.anthropic.config import AnthropicConf
from providers.azure_openai.adapter import AzureOpenAIProvider
from providers.azure_openai.config import AzureOpenAIConf
from providers.base import Provider, Timeouts
from providers.gemini.adapter import GeminiProvider
from providers.gemini.config import GeminiConf
from providers.mistral.adapter import MistralProvider
from providers.mistral.config import MistralConf
from providers.openai_compat.adapter import OpenAICompatProvider
from providers.openai_compat.config import OpenAIConf, VllmConf
from providers.secrets import Secret

Factory = Callable[[str, Any, Secret | None, Timeouts], Provider]

FACTORIES: dict[type, Factory] = {
    OpenAIConf: OpenAICompatProvider,
    VllmConf: OpenAICompatProvider,
    MistralConf: MistralProvider,
    AnthropicConf: AnthropicProvider,
    AzureOpenAIConf: AzureOpenAIProvider,
    GeminiConf: GeminiProvider,
}

ProviderConf = OpenAIConf | VllmConf | MistralConf | AnthropicConf | AzureOpenAIConf | GeminiConf
"""Every provider config type the policy file accepts (a tagged union on `type`)."""

PROVIDER_TYPES: tuple[str, ...] = tuple(t.__struct_config__.tag for t in FACTORIES)  # type: ignore[attr-defined]


def build_provider(name: str, conf: Any, key: Secret | None, timeouts: Timeouts) -> Provider:
    return FACTORIES[type(conf)](name, conf, key, timeouts)


def adapter_capabilities(conf: Any) -> frozenset[str]:
    """What the adapter for this provider config can translate (its class's `capabilities`)."""
    return getattr(FACTORIES[type(conf)], "capabilities", frozenset())
