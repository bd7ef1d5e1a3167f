"""The selective scan's kernels, apart from the network's modules (das2f.models): the backends behind
``model.net.scan_backend`` (``scan.py``: the dispatch and the torch / reference scans; ``scan_cpu.py``: numba;
``scan_triton.py``: Triton)."""
from .scan import BACKENDS, selective_scan, selective_scan_time_major

__all__ = ["BACKENDS", "selective_scan", "selective_scan_time_major"]
