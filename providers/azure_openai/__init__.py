"""Azure OpenAI: OpenAI's chat, completions and embeddings bodies, addressed by deployment."""
