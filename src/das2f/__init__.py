"""das2f: DAS²F for MS + PAN land-cover classification, and the experiment framework around it.

Importing das2f (before torch) gives OpenMP the cores this process may use (das2f.threads); it
imports nothing heavy itself.
"""
from .threads import set_environment

set_environment()
