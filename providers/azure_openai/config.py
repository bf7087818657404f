"""Policy-file shape of the `azure_openai` provider type."""

from providers.openai_compat.config import ProviderConfBase


class AzureOpenAIConf(ProviderConfBase, tag_field="type", tag="azure_openai"):
    """One Azure OpenAI resource. A model's `model:` names the deployment, not the underlying model."""

    base_url: str
    """The resource endpoint, e.g. https://my-resource.openai.azure.com (no /openai suffix)."""
    api_version: str
    """Sent as the `api-version` query parameter, e.g. 2024-10-21 (Azure's data-plane API versions)."""
