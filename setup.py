"""The optional C accelerator for spans: OTLP encoding and the span end path (gateway/_otlp_span.c). Everything
else is in pyproject.toml. Without a C compiler the build skips it and escalade uses the Python code."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gateway._otlp_span", ["gateway/_otlp_span.c"], optional=True)])
