"""Test harness: the gateway served for real in a background thread, and policy builders."""
