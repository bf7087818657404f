"""Mistral La Plateforme (api.mistral.ai): chat completions and embeddings, natively translated."""
