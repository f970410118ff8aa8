"""The ``digzsl`` console script (``digzsl_ray.cli:main``)."""

from digzsl_ray.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
