"""The pre-cut HDF5 patch-pair format (one file per split), written safely and read lazily.

Datasets: ms (n, C, 16, 16) and pan (n, 1, 64, 64) in the scene's dtype, chunked in whole
samples and lzf-compressed; label (n,) int64 in 0..K-1; coord (n, 2) int32; scene (n,) int16.
Attributes: format_version, class_names, ms_/pan_ min, max, mean, std (train split only), patch
sizes, ratio, scenes (paths, sizes, hashes), split seed and rule, fingerprint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..runtime.errors import DataError, MissingFileError

FORMAT_VERSION = 2  # 2: split_protocol, split_blocks and overlap attributes
REQUIRED = ("ms", "pan", "label", "coord", "scene")


class PatchFileError(DataError):
    """An HDF5 file that is not a complete das2f patch file."""


class PatchWriter:
    """Appends blocks of patch pairs to ``<path>.tmp``; ``close()`` renames it to ``path``.

    An exception (or an interrupted process) leaves only the .tmp file, which no reader accepts.
    """

    def __init__(self, path: Path, ms_shape, pan_shape, ms_dtype, pan_dtype, chunk: int = 64):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.tmp.unlink(missing_ok=True)
        self.f = None
        try:
            self.f = h5py.File(self.tmp, "w", track_order=True)
            kw = dict(compression="lzf", track_times=False)
            self.d = {
                "ms": self.f.create_dataset("ms", (0, *ms_shape), ms_dtype, maxshape=(None, *ms_shape),
                                            chunks=(chunk, *ms_shape), **kw),
                "pan": self.f.create_dataset("pan", (0, *pan_shape), pan_dtype, maxshape=(None, *pan_shape),
                                             chunks=(chunk, *pan_shape), **kw),
                "label": self.f.create_dataset("label", (0,), np.int64, maxshape=(None,), chunks=(4096,), **kw),
                "coord": self.f.create_dataset("coord", (0, 2), np.int32, maxshape=(None, 2), chunks=(4096, 2), **kw),
                "scene": self.f.create_dataset("scene", (0,), np.int16, maxshape=(None,), chunks=(4096,), **kw),
            }
        except BaseException:  # an error or a stop signal while the file is being set up
            self.abort()
            raise
        self.n = 0

    def append(self, **arrays) -> None:
        k = len(arrays["label"])
        for name, ds in self.d.items():
            ds.resize(self.n + k, axis=0)
            ds[self.n:self.n + k] = arrays[name]
        self.n += k

    def close(self, attrs: dict) -> Path:
        for k, v in attrs.items():
            self.f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) and not _numeric_list(v) else v
        self.f.attrs["n"] = self.n
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            if self.f is not None:
                self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _numeric_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)


def read_attrs(path: str | Path) -> dict:
    """Validated attributes of a patch file; PatchFileError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"patch file not found: {path} (run `make prepare DATASET=...`)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED if k not in f]
            attrs = dict(f.attrs)
            sizes = {k: f[k].shape[0] for k in REQUIRED if k in f}
            ms_shape = f["ms"].shape if "ms" in f else None
    except OSError as err:
        raise PatchFileError(f"{path}: not a readable HDF5 file ({err}); delete it and prepare again") from err
    if missing or attrs.get("format_version") != FORMAT_VERSION:
        raise PatchFileError(
            f"{path}: not a das2f patch file (datasets missing: {missing}, format_version "
            f"{attrs.get('format_version')!r}, expected {FORMAT_VERSION})"
        )
    if len(set(sizes.values())) != 1 or sizes["ms"] != attrs.get("n"):
        raise PatchFileError(f"{path}: truncated: dataset lengths {sizes}, expected n={attrs.get('n')} each")
    out = {}
    for k, v in attrs.items():
        if isinstance(v, str) and v[:1] in "[{":
            v = json.loads(v)
        out[k] = v
    out["ms_shape"] = tuple(ms_shape[1:])
    return out
