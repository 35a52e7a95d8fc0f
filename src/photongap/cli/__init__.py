"""The ``photongap`` command line (``photongap --help``): a thin layer over the library."""

from photongap.cli import commands as _commands  # noqa: F401  (registers the commands on the app)
from photongap.cli import assess as _assess  # noqa: F401  (registers assess and plan-exposure)
from photongap.cli import export as _export  # noqa: F401  (registers export)
from photongap.cli.app import app, main

__all__ = ["app", "main"]
