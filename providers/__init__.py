"""The bottom layer: OpenAI wire schema, the typed error family, the Provider protocol and the adapters."""
