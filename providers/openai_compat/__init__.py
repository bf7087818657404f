"""Any OpenAI-compatible API (OpenAI itself, vLLM, Mistral La Plateforme, and the many look-alikes)."""
