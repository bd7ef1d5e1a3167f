"""The GPU tooling that must work the first time it meets a GPU: mamba-ssm's build restricted to one architecture."""
import ast

import pytest

from das2f.gpu_deps import GENCODE, restrict_arches

# the layout of mamba-ssm 2.3.2.post1's setup.py (a pair per architecture, some inside version checks)
SETUP = '''
if True:
    if True:
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_75,code=sm_75")
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_80,code=sm_80")
        if bare_metal_version >= Version("11.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_90,code=sm_90")
        if bare_metal_version >= Version("12.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_100,code=sm_100")
'''


def test_mamba_build_keeps_only_the_gpus_architecture():
    out = restrict_arches(SETUP, "90")
    ast.parse(out)  # the emptied version checks still parse
    assert GENCODE.findall(out) == [("        ", "90")]
    flags = []
    exec(compile(out, "setup.py", "exec"), {"cc_flag": flags, "bare_metal_version": 12.9, "Version": float})
    assert flags == ["-gencode", "arch=compute_90,code=sm_90"]


def test_an_unknown_setup_layout_is_refused():
    with pytest.raises(RuntimeError, match="layout changed"):
        restrict_arches("cc_flag.append('-gencode')\n", "90")
