"""The local vLLM engine: its command line, launch and supervision, health and load (see README.md)."""
