"""Test runs only (tests/conftest.py puts this folder on PYTHONPATH): a `python -m das2f.<task>` or `das2f <task>`
started anywhere in the test run (by a test, by make) runs warm, forked from the test process's server
(tests/zygote.py), where it can; anything else starts as usual."""
import os
import sys


def _warm():
    argv = getattr(sys, "orig_argv", [])
    if not os.environ.get("DAS2F_TEST_WARM") or len(argv) < 2:
        return
    # a cheap first look, so that nothing is loaded into the processes that run as usual; zygote.target decides
    if not ((argv[1] == "-m" and len(argv) > 2 and argv[2].split(".")[0] == "das2f") or argv[1].endswith("/das2f")):
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("das2f_test_zygote", os.path.join(os.path.dirname(__file__), "..",
                                                                                    "zygote.py"))
    zygote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zygote)
    zygote.delegate()  # returns only where the command must run fresh


_warm()
