"""`make gpu-deps`: build mamba-ssm's CUDA kernel from its source archive for the GPU at hand only.

mamba-ssm's setup.py compiles its selective scan for a fixed list of architectures (sm_75 up to sm_121
with CUDA 13), several times the work one GPU needs, and ignores TORCH_CUDA_ARCH_LIST. This unpacks the
archive (fetched beforehand by `make gpu-wheels`), keeps only the GPU's own ``-gencode`` pair, and installs
it with pip (no index, no build isolation: the machine's CUDA torch is the one it builds against) into
the directory `make gpu-check` puts on PYTHONPATH. Only ``selective_scan_cuda`` is built: das2f uses
mamba-ssm's ``selective_scan_fn`` alone, so causal-conv1d is not needed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

GENCODE = re.compile(r'^([ \t]*)cc_flag\.append\("-gencode"\)\n[ \t]*cc_flag\.append\("arch=compute_(\d+a?),code=sm_\d+a?"\)\n',
                     re.MULTILINE)


def restrict_arches(setup_py: str, arch: str) -> str:
    """setup.py with its ``-gencode`` pairs replaced by the one for ``arch`` (e.g. "90"); the others become
    ``pass`` (they sit in ``if`` blocks of their own)."""
    found = GENCODE.findall(setup_py)
    if not found:
        raise RuntimeError("mamba-ssm's setup.py has no `cc_flag.append(\"-gencode\")` pairs: its layout changed, "
                           "update das2f/bench/gpu_deps.py")
    first = [True]

    def keep_one(m):
        if not first[0]:
            return f"{m.group(1)}pass\n"
        first[0] = False
        return f'{m.group(1)}cc_flag.append("-gencode")\n{m.group(1)}cc_flag.append("arch=compute_{arch},code=sm_{arch}")\n'

    return GENCODE.sub(keep_one, setup_py)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", type=Path, help="mamba_ssm-<version>.tar.gz")
    ap.add_argument("--target", type=Path, required=True, help="pip --target directory")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu-deps: no CUDA device: mamba-ssm is built for the GPU at hand")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.archive) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = Path(tmp).iterdir()
        setup = src / "setup.py"
        setup.write_text(restrict_arches(setup.read_text(), arch))
        print(f"gpu-deps: building {args.archive.name} for sm_{arch} only ({torch.cuda.get_device_name()}, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
        t = time.perf_counter()
        env = {"MAMBA_FORCE_BUILD": "TRUE", "MAX_JOBS": str(len(os.sched_getaffinity(0)))}
        rc = subprocess.call([sys.executable, "-m", "pip", "install", "-v", "--no-index", "--no-deps",
                              "--no-build-isolation", "--target", str(args.target), str(src)],
                             env={**os.environ, **env})
        print(f"gpu-deps: pip exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
