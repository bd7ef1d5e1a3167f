"""das2f: DAS²F for MS + PAN land-cover classification, and the experiment framework around it.

Importing das2f (before torch) gives OpenMP the cores this process may use (das2f.runtime.threads); it
imports nothing heavy itself.
"""
__version__ = "0.3.0.dev0"  # the one version string (pyproject.toml reads it; CHANGELOG.md: "Unreleased")

from .runtime.threads import set_environment  # noqa: E402

set_environment()
