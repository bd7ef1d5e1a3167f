"""das2f: DAS²F for MS + PAN land-cover classification, and the experiment framework around it.

Importing das2f (before torch) gives OpenMP the cores this process may use (das2f.runtime.threads); it
imports nothing heavy itself.
"""
from .runtime.threads import set_environment

set_environment()
