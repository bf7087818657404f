"""The local vLLM engine: command line, launch and supervision (see the local-engine issue)."""
