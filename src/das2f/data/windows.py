"""A scene read window by window: memory bounded by a window, not by the scene.

``LazyImage`` reads a (C, H, W) image region by region: GeoTIFF through rasterio windows, ``.npy``
through a memory map; MATLAB files (and Wald-protocol RGB tiles, which are small) are read whole.
``window_patches`` cuts the patches of a window of MS pixels exactly as ``PatchCutter`` cuts them
from the whole scene (same reflect-101 borders), reading only the window and its patch margins.
``SceneWindows`` is the Dataset of a scene's windows for ``trainer.predict``; each DataLoader
worker opens the files itself.
"""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .nodata import BandSums, declared, declares_mask, fill, may_hold_nodata, on_ms_grid, valid_pixels
from .patches import PatchCutter
from .readers import Raster, _channels_first, mat_key, read_raster
from .scenes import LABEL_MAPS, Scene, check_georeferencing, load_scene, wald_from_rgb
from .transforms import normalize_pair


class LazyImage:
    """A (C, H, W) image with ``read(r0, r1, c0, c1)``; nothing but its header is read up front. Nodata pixels
    (das2f.data.nodata: the GeoTIFF's mask, NaN, the scene's ``nodata`` value) read as their band's mean over the
    image's valid pixels (``fill``, computed on first need by a pass over the image), as the preparation fills
    them; ``valid`` tells where they are."""

    def __init__(self, path: str | Path, key: str | None = None, band_axis: int | None = None,
                 bands: list[int] | None = None, array: np.ndarray | None = None, nodata: float | None = None,
                 valid: np.ndarray | None = None):
        """``array``: the image in memory, already filled; ``valid`` its valid pixels (None: all)."""
        self.path, self.bands, self.nodata = Path(path), bands, nodata
        self.profile: dict = {}
        self.fill: np.ndarray | None = None
        suffix = self.path.suffix.lower()
        self._array = self._tif = self._h5 = self._valid = None
        declares, in_memory = False, True  # in memory: filled when read whole
        if array is not None:
            self._array, self._valid = array, valid
        elif suffix in (".tif", ".tiff"):
            import warnings

            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(self.path) as src:
                    self._shape, self.dtype = (src.count, src.height, src.width), np.dtype(src.dtypes[0])
                    if src.crs is not None:
                        self.profile = {"crs": src.crs, "transform": src.transform}
                    declares = declares_mask(src)
            self._tif, in_memory = str(self.path), False
        elif suffix == ".npy":
            self._array = _channels_first(np.load(self.path, mmap_mode="r"), self.path, band_axis)  # a view
            in_memory = False
        elif suffix == ".mat" and h5py.is_hdf5(self.path):  # MATLAB v7.3: HDF5, arrays stored transposed
            self._h5 = _mat73_layout(self.path, key, band_axis)
            self._shape, self.dtype = self._h5["shape"], self._h5["dtype"]
            in_memory = False
        else:  # .mat v5: read whole, like the readers do (nodata filled there)
            raster = read_raster(self.path, key=key, band_axis=band_axis, nodata=nodata)
            self._array, self._valid = raster.data, raster.valid
        if self._array is not None:
            self._shape, self.dtype = self._array.shape, self._array.dtype
        self.shape = (len(bands) if bands is not None else self._shape[0], *self._shape[1:])
        self._declares, self.in_memory = declares, in_memory
        self.may_hold_nodata = self._valid is not None or (not in_memory and may_hold_nodata(self.dtype, declares, nodata))

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The region as stored, and the file's own mask of it (None: every pixel valid)."""
        if self._tif is not None:
            import rasterio
            from rasterio.windows import Window

            indexes = [b + 1 for b in self.bands] if self.bands is not None else None
            with rasterio.open(self._tif) as src:
                window = Window(c0, r0, c1 - c0, r1 - r0)
                return src.read(indexes, window=window), declared(src, window) if self._declares else None
        if self._h5 is not None:
            region = _mat73_read(self._h5, r0, r1, c0, c1)
            return (region[list(self.bands)] if self.bands is not None else region), None
        region = self._array[:, r0:r1, c0:c1]
        mask = None if self._valid is None else self._valid[r0:r1, c0:c1]
        return np.asarray(region[list(self.bands)] if self.bands is not None else region), mask

    def read_masked(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The region, its nodata pixels filled, and where it holds data ((h, w) bool; None: everywhere): one read."""
        data, mask = self._read(r0, r1, c0, c1)
        if self.in_memory or not self.may_hold_nodata:
            return data, mask  # in memory: filled when read whole, the mask as it was read
        valid = valid_pixels(data, mask, self.nodata)
        return (data, None) if valid is None else (fill(data, valid, self.fill_values()), valid)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self.read_masked(r0, r1, c0, c1)[0]

    def fill_values(self, rows: int = 256) -> np.ndarray:
        """Each band's mean over the image's valid pixels (what its nodata pixels read as), computed once."""
        if self.fill is None:
            sums = BandSums(self.shape[0], self.dtype)
            for a in range(0, self.shape[1], rows):
                data, mask = self._read(a, min(a + rows, self.shape[1]), 0, self.shape[2])
                sums.add(data, valid_pixels(data, mask, self.nodata))
            self.fill = sums.means()
        return self.fill


def _mat73_layout(path: Path, key: str | None, band_axis: int | None) -> dict:
    """Where a MATLAB v7.3 array's bands and rows are: MATLAB's (H, W[, C]) is stored as (C, W, H)."""
    from .readers import SceneError

    with h5py.File(path, "r") as f:
        arrays = {k: f[k] for k in f.keys() if isinstance(f[k], h5py.Dataset) and f[k].ndim >= 2}
        key = mat_key(path, arrays, key)
        logical, dtype = arrays[key].shape[::-1], arrays[key].dtype
    if len(logical) == 2:
        band, spatial = None, [0, 1]
    else:
        band = int(np.argmin(logical)) if band_axis is None else int(band_axis)
        if band_axis is None and logical[band] > 64:
            raise SceneError(f"{path}: cannot tell the band axis of shape {logical}; set band_axis explicitly")
        spatial = [a for a in range(3) if a != band]
    shape = (1 if band is None else logical[band], logical[spatial[0]], logical[spatial[1]])
    return {"path": str(path), "key": key, "band": band, "spatial": spatial, "ndim": len(logical), "shape": shape,
            "dtype": dtype}


def _mat73_read(layout: dict, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0..r1, cols c0..c1 of a v7.3 array as (C, h, w), reading only that block from the file."""
    index = [slice(None)] * layout["ndim"]
    index[layout["spatial"][0]], index[layout["spatial"][1]] = slice(r0, r1), slice(c0, c1)
    with h5py.File(layout["path"], "r") as f:
        block = f[layout["key"]][tuple(index[::-1])].T  # stored order reversed -> MATLAB's order
    return block[None] if layout["band"] is None else np.moveaxis(block, layout["band"], 0)


def open_scene(spec: dict, ratio: int) -> tuple[LazyImage, LazyImage]:
    """The MS and PAN images of a scene spec, opened for windowed reads."""
    if spec.get("kind", "files") == "wald_rgb":
        ms, pan = wald_from_rgb(Path(spec["image"]), ratio)  # a small RGB tile, made whole
        return LazyImage(ms.path, array=ms.data), LazyImage(pan.path, array=pan.data)
    if spec.get("align"):  # resampled onto one grid in memory, as training saw it (scenes.align)
        scene = load_scene({k: v for k, v in spec.items() if k not in LABEL_MAPS}, ratio)
        images = tuple(LazyImage(r.path, array=r.data, valid=r.valid) for r in (scene.ms, scene.pan))
        images[0].profile = scene.ms.profile
        return images
    nodata = spec.get("nodata")
    ms = LazyImage(spec["ms"], spec.get("ms_key"), spec.get("band_axis"), spec.get("ms_bands"), nodata=nodata)
    pan = LazyImage(spec["pan"], spec.get("pan_key"), spec.get("band_axis"), nodata=nodata)
    # the same ground, as training checks it (scenes.check_georeferencing), from the headers alone
    headers = [Raster(np.broadcast_to(np.zeros((), img.dtype), img.shape), img.path, img.profile) for img in (ms, pan)]
    check_georeferencing(Scene(spec.get("name", ms.path.stem), *headers, maps={}), ratio)
    return ms, pan


def _padded(img: LazyImage, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows r0..r1, cols c0..c1 of the image (may reach outside it), outside parts reflected (reflect-101), and
    where they hold data (reflected alike; None: everywhere)."""
    _, h, w = img.shape
    a0, a1, b0, b1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    region, valid = img.read_masked(a0, a1, b0, b1)
    pad = ((0, 0), (a0 - r0, r1 - a1), (b0 - c0, c1 - b1))
    if not any(p for ax in pad for p in ax):
        return region, valid
    return np.pad(region, pad, mode="reflect"), None if valid is None else np.pad(valid, pad[1:], mode="reflect")


def window_patches(ms: LazyImage, pan: LazyImage, r0: int, r1: int, c0: int, c1: int, ms_patch: int, ratio: int,
                   coords: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Patches of the MS pixels rows r0..r1, cols c0..c1 (all of them, row-major, or ``coords`` inside
    the window): (ms (n, C, P, P), pan (n, 1, rP, rP), coords (n, 2)), bit for bit PatchCutter's, and the
    window's valid pixels on the MS grid ((r1 - r0, c1 - c0) bool, das2f.data.nodata.on_ms_grid; None: all)."""
    before, after = ms_patch // 2 - 1, ms_patch // 2
    ms_region, ms_valid = _padded(ms, r0 - before, r1 + after, c0 - before, c1 + after)
    pan_region, pan_valid = _padded(pan, ratio * (r0 - before), ratio * (r1 + after), ratio * (c0 - before),
                                    ratio * (c1 + after))
    if coords is None:
        rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        coords = np.stack([rows.ravel(), cols.ravel()], 1)
    cutter = PatchCutter.from_padded(ms_region, pan_region, ms_patch, ratio)
    m, p = cutter.cut(coords - np.array([r0, c0]))
    h, w, k = r1 - r0, c1 - c0, ratio * before  # the window inside its margins
    valid = on_ms_grid(None if ms_valid is None else ms_valid[before:before + h, before:before + w],
                       None if pan_valid is None else pan_valid[k:k + ratio * h, k:k + ratio * w], ratio)
    return m, p, coords, valid


class SceneWindows(Dataset):
    """The windows of a scene: item i = the patches of window i (``size`` x ``size`` MS pixels, row-major
    windows). ``stride`` k classifies every k-th pixel of each row and column only (a preview). Nodata pixels are not
    classified: an item's ``nodata`` holds their coordinates."""

    def __init__(self, spec: dict, ratio: int, ms_patch: int, size: int = 16, stride: int = 1,
                 region: tuple[int, int, int, int] | None = None, images: tuple | None = None):
        """``images``: the scene's (ms, pan) from :func:`open_scene`, when the caller has opened it already."""
        self.spec, self.ratio, self.ms_patch, self.size, self.stride = spec, ratio, ms_patch, size, stride
        ms, pan = images or open_scene(spec, ratio)
        self.shape = ms.shape[1:]
        # what nodata pixels read as, computed once here
        self.fills = [img.fill_values() if img.may_hold_nodata else None for img in (ms, pan)]
        # the images hold no open file (each read opens its file), so forked DataLoader workers share them: an
        # aligned scene (resampled in memory) is read and warped once per map, not once per worker
        self._images = (ms, pan)
        self.region = region or (0, self.shape[0], 0, self.shape[1])
        r0, r1, c0, c1 = self.region
        self.grid = (math.ceil((r1 - r0) / size), math.ceil((c1 - c0) / size))

    def __len__(self) -> int:
        return self.grid[0] * self.grid[1]

    def __getstate__(self):  # a spawned process (DDP) gets the images held in memory, and opens files itself
        in_memory = self._images is not None and all(img.in_memory for img in self._images)
        return {**self.__dict__, "_images": self._images if in_memory else None}

    def bounds(self, i: int) -> tuple[int, int, int, int]:
        r0, r1, c0, c1 = self.region
        gi, gj = divmod(i, self.grid[1])
        return (r0 + gi * self.size, min(r0 + (gi + 1) * self.size, r1),
                c0 + gj * self.size, min(c0 + (gj + 1) * self.size, c1))

    def __getitem__(self, i: int) -> dict:
        if self._images is None:
            self._images = open_scene(self.spec, self.ratio)
            for img, values in zip(self._images, self.fills):
                img.fill = values
        r0, r1, c0, c1 = self.bounds(i)
        coords = None
        if self.stride > 1:
            rows = np.arange(r0, r1)[(np.arange(r0, r1) - self.region[0]) % self.stride == 0]
            cols = np.arange(c0, c1)[(np.arange(c0, c1) - self.region[2]) % self.stride == 0]
            rr, cc = np.meshgrid(rows, cols, indexing="ij")
            coords = np.stack([rr.ravel(), cc.ravel()], 1).astype(np.int64)
        ms, pan, coords, valid = window_patches(*self._images, r0, r1, c0, c1, self.ms_patch, self.ratio, coords)
        nodata = np.empty((0, 2), np.int64)
        if valid is not None:
            keep = valid[coords[:, 0] - r0, coords[:, 1] - c0]
            ms, pan, coords, nodata = ms[keep], pan[keep], coords[keep], coords[~keep]
        return {"ms": torch.from_numpy(ms), "pan": torch.from_numpy(pan), "coord": torch.from_numpy(coords),
                "nodata": torch.from_numpy(np.asarray(nodata, np.int64)), "window": torch.tensor(i)}


class SceneDataModule(L.LightningDataModule):
    """Streams the windows ``todo`` of a scene to ``trainer.predict``: patches are cut in DataLoader workers
    while the network runs; under DDP each rank takes every world_size-th window; batches are normalised
    after the transfer to the device (das2f.data.transforms). Picklable (a spawned DDP process gets a
    copy): it holds the window index, never an open file."""

    def __init__(self, windows: SceneWindows, todo: np.ndarray, shift: np.ndarray, scale: np.ndarray,
                 num_workers: int = 2, worker_options=None):
        """``worker_options(num_workers, rank)``: extra DataLoader arguments for the workers (the entry points'
        signal policy, das2f.runtime.signals.loader_options)."""
        super().__init__()
        self.windows, self.todo, self.num_workers = windows, np.asarray(todo), num_workers
        self.worker_options = worker_options
        self.shift = torch.as_tensor(np.asarray(shift), dtype=torch.float32)
        self.scale = torch.as_tensor(np.asarray(scale), dtype=torch.float32)

    def predict_dataloader(self):
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        mine = [int(i) for i in self.todo[rank::world]]
        return DataLoader(self.windows, batch_size=None, sampler=mine, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available(),
                          **(self.worker_options(self.num_workers, rank) if self.worker_options else {}))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        batch["ms"], batch["pan"] = normalize_pair(batch["ms"], batch["pan"], self.shift, self.scale)
        return batch
