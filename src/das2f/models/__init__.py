"""The DAS²F network and its parts."""
from ..ops.scan import selective_scan, selective_scan_time_major
from .das2f import DAS2F
from .reference import load_reference_state_dict

__all__ = ["DAS2F", "selective_scan", "selective_scan_time_major", "load_reference_state_dict"]
