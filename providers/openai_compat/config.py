"""Policy-file shapes of the OpenAI-compatible provider types: `openai`, `vllm` (and the shared base)."""

import msgspec


class ProviderConfBase(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Fields every provider type accepts. Keys are named by env var or file, never given as values."""

    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    headers: dict[str, str] = {}
    """Static extra headers sent upstream (no secrets here: they would sit in the policy file)."""
    stream_usage: bool = True
    """Ask the upstream for a usage chunk on every stream (stream_options.include_usage)."""


class OpenAIConf(ProviderConfBase, tag_field="type", tag="openai"):
    base_url: str | None = "https://api.openai.com/v1"


class EngineConf(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A vLLM server escalade launches and supervises itself."""

    model: str
    command: list[str] = msgspec.field(default_factory=lambda: ["vllm", "serve"])
    served_model_name: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    ready_timeout_s: float = 900.0


class VllmConf(ProviderConfBase, tag_field="type", tag="vllm"):
    engine: EngineConf | None = None


OpenAICompatConf = OpenAIConf | VllmConf
