"""OpenAI wire schema (the contract escalade speaks to clients and to OpenAI-compatible upstreams)."""
