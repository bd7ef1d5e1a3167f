"""The test run's warm starts (tests/zygote.py) against fresh processes: a command forked from the server sees what a
fresh `python -m` would (argv, sys.path, working directory, environment after das2f's import, its own session and
process group) and ends the same way (exit status, traceback, atexit handlers, death by SIGINT); a command whose
environment the server cannot reproduce runs fresh."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests import zygote
from tests.procs import env

pytestmark = pytest.mark.skipif(not zygote.socket_path(), reason="no warm-start server (DAS2F_TEST_FRESH=1)")


def probe(tmp_path, mode: str, *args: str, **extra: str):
    folder = tmp_path / mode
    folder.mkdir()
    e = {**env(), **extra}
    argv = [sys.executable, "-m", "tests.probe", *args]
    with open(folder / "out.txt", "w") as out, open(folder / "err.txt", "w") as err:
        if mode == "fresh":
            e.pop(zygote.ENV_KEY)
            p = subprocess.Popen(argv, cwd=folder, env=e, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 start_new_session=True)
        else:
            p = zygote.start(argv, folder, e, out, err)
    code = p.wait(120)
    text = (folder / "out.txt").read_text().replace(str(folder), "<cwd>")
    return p, code, text, (folder / "err.txt").read_text()


@pytest.mark.parametrize(("args", "status"), [(("exit", "3"), 3), (("raise",), 1), (("interrupt",), -signal.SIGINT)])
def test_a_warm_command_starts_and_ends_as_a_fresh_one(tmp_path, args, status):
    fresh, code_fresh, out_fresh, err_fresh = probe(tmp_path, "fresh", *args)
    warm, code_warm, out_warm, err_warm = probe(tmp_path, "warm", *args)
    assert isinstance(warm, zygote.Warm) and isinstance(fresh, subprocess.Popen)
    assert code_fresh == code_warm == status
    seen = json.loads(out_warm.splitlines()[0])
    assert seen == json.loads(out_fresh.splitlines()[0])
    assert seen["group_leader"] and seen["session_leader"] and seen["name"] == "__main__"
    assert seen["env"]["OMP_NUM_THREADS"] and seen["env"]["PYTHONPATH"] == env()["PYTHONPATH"]
    assert out_warm.endswith("atexit ran\n") and out_fresh.endswith("atexit ran\n")
    if args == ("raise",):
        for err in (err_fresh, err_warm):
            assert "Traceback" in err and err.rstrip().endswith("RuntimeError: probe failed on purpose")


def test_an_environment_the_server_cannot_reproduce_runs_fresh(tmp_path):
    """OpenMP reads OMP_NUM_THREADS when torch is imported: a command asking for another value is not forked."""
    omp = str(max(int(os.environ.get("OMP_NUM_THREADS") or 0), os.cpu_count()) + 1)  # not what the server has
    p, code, out, _ = probe(tmp_path, "warm", OMP_NUM_THREADS=omp)
    assert isinstance(p, subprocess.Popen) and code == 0
    assert json.loads(out.splitlines()[0])["env"]["OMP_NUM_THREADS"] == omp
