"""The DAS²F network and its parts."""
from .das2f import DAS2F
from .reference import load_reference_state_dict
from .scan import selective_scan

__all__ = ["DAS2F", "selective_scan", "load_reference_state_dict"]
