"""The HumanEval sandbox contains misbehaving code: each attack is scored as failed, and afterwards the host
(files, processes, this test process) and the evaluation (a good program still passes) are intact.

Fork bombs are tested only against the guard plus the process-count limit and the group kill; no test lets
an unguarded fork bomb loose on the shared machine."""
from __future__ import annotations

import os
import socket
import time

import pytest

from foundry.eval.sandbox import Limits, run_program, run_programs

FAST = Limits(timeout=2.0, cpu=2, memory_mb=512)


def still_works():
    o = run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n", FAST)
    assert o.passed, o.detail


def test_good_and_bad_programs():
    assert run_program("import math, re, random, hashlib, collections, itertools\nassert math.gcd(6, 4) == 2\n",
                       FAST).passed
    o = run_program("assert 1 == 2, 'wrong answer'\n", FAST)
    assert not o.passed and o.status == "failed" and "wrong answer" in o.detail


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)\nassert False\n", "import os\nos._exit(0)\n",
                                  "raise SystemExit\n"])
def test_exiting_early_is_not_a_pass(code):
    o = run_program(code, FAST)
    assert not o.passed


def test_infinite_loop_is_killed_on_time():
    t0 = time.perf_counter()
    o = run_program("while True:\n    pass\n", FAST)
    assert not o.passed and o.status in ("timeout", "killed") and time.perf_counter() - t0 < FAST.timeout + 2
    still_works()


def test_unbounded_allocation_is_contained():
    o = run_program("x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n", FAST)
    assert not o.passed and ("MemoryError" in o.detail or o.status in ("killed", "timeout"))
    still_works()


def test_fork_bomb_is_contained():
    before = len(os.listdir("/proc"))
    for code in ("import os\nwhile True:\n    os.fork()\n",
                 "import posix\nwhile True:\n    posix.fork()\n",
                 "import subprocess\nsubprocess.Popen(['sleep', '100'])\n",
                 "import multiprocessing\n",
                 "import os\nos.system('sleep 100 &')\n",
                 "import os\nos.posix_spawn('/bin/sleep', ['sleep', '100'], {})\n"):
        o = run_program(code, FAST)
        assert not o.passed, code
    assert len(os.listdir("/proc")) < before + 20, "processes were left behind"
    still_works()


def test_leftover_children_are_killed_with_the_group():
    # even unguarded, a child the program starts dies with the group when the program ends
    marker = f"foundry-sandbox-sleeper-{os.getpid()}"
    code = ("import subprocess, sys\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', '{marker}'])\n"
            "assert p.poll() is None\n")
    o = run_program(code, Limits(timeout=5.0, guard=False))
    assert o.passed, o.detail   # the sleeper really started
    time.sleep(0.2)
    alive = processes_with(marker)
    assert not alive, f"sleeper processes survived the sandbox: {alive}"


def test_writes_outside_its_directory_are_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "new.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')\n",
                 f"import os\nos.remove({str(victim)!r})\n",
                 f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                 f"import os\nos.rename({str(victim)!r}, 'stolen.txt')\n",
                 "open('../escape.txt', 'w').write('x')\n"):
        o = run_program(code, FAST)
        assert not o.passed, code
    assert victim.read_text() == "precious" and not target.exists()
    # inside its own directory it may write (and the directory is thrown away)
    assert run_program("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n", FAST).passed


def test_file_size_is_limited():
    o = run_program("open('big.bin', 'wb').write(b'x' * (64 << 20))\n", Limits(timeout=3.0, file_mb=4))
    assert not o.passed
    o = run_program("import sys\nwhile True:\n    sys.stdout.write('spam' * 10000)\n", Limits(timeout=3.0, file_mb=4))
    assert not o.passed
    still_works()


def test_no_network():
    # a listening socket on the host: the sandboxed code must not reach it
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    try:
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
                     f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
                     "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1', timeout=1)\n"):
            assert not run_program(code, FAST).passed, code
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()


def test_network_namespace_blocks_sockets_even_without_the_guard():
    o = run_program("pass\n", FAST)
    if not o.netns:
        pytest.skip("this kernel/user may not create network namespaces; the Python guard is the wall here")
    code = "import socket\ns = socket.create_connection(('127.0.0.1', 22), timeout=1)\n"
    o = run_program(code, Limits(timeout=2.0, guard=False, landlock=False))     # the namespace alone
    assert not o.passed and ("Network is unreachable" in o.detail or "refused" in o.detail
                             or "OSError" in o.detail), o.detail


def test_signalling_the_parent_is_refused():
    for code in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                 "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
                 "import os, posix, signal\nposix.kill(os.getppid(), signal.SIGTERM)\n"):
        o = run_program(code, FAST)
        assert not o.passed, code
    assert os.getpid() > 0  # this test process is alive
    still_works()


def test_environment_is_stripped_and_cwd_is_empty(monkeypatch):
    monkeypatch.setenv("FOUNDRY_SECRET_TOKEN", "hunter2")
    code = ("import os\nassert 'FOUNDRY_SECRET_TOKEN' not in os.environ, 'leaked'\n"
            "assert sorted(os.listdir('.')) == ['program.py'], os.listdir('.')\n")
    o = run_program(code, FAST)
    assert o.passed, o.detail


def test_pool_keeps_order_and_survives_attacks():
    progs = ["assert True\n", "while True: pass\n", "import os\nos.fork()\n", "assert 2 + 2 == 4\n"]
    out = run_programs(progs, Limits(timeout=1.5), workers=2)
    assert [o.passed for o in out] == [True, False, False, True]


def test_cpu_limit_kills_a_busy_loop_before_the_wall_clock():
    o = run_program("while True:\n    pass\n", Limits(timeout=10.0, cpu=1))
    assert not o.passed and o.status in ("killed", "failed") and o.seconds < 8, o


def test_pid_namespace_hides_the_host_even_without_the_guard():
    if not run_program("pass\n", FAST).pidns:
        pytest.skip("no PID namespace here (not root, no user namespaces); the Python guard is the wall")
    # unguarded code aims SIGTERM at this very test process: in its namespace that pid does not exist
    o = run_program(f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n", Limits(timeout=2.0, guard=False))
    assert not o.passed and "ProcessLookupError" in o.detail
    assert run_program("import os\nassert os.getpid() == 1 and os.getppid() == 0\n", FAST).passed


def test_descendants_that_leave_the_group_die_with_the_namespace():
    if not run_program("pass\n", FAST).pidns:
        pytest.skip("no PID namespace here; the guard refuses setsid instead")
    marker = f"foundry-sandbox-escapee-{os.getpid()}"
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', '{marker}'])\n"
            "time.sleep(0.3)\n")
    o = run_program(code, Limits(timeout=5.0, guard=False))
    assert o.passed, o.detail
    time.sleep(0.3)
    alive = processes_with(marker)
    assert not alive, f"a process that called setsid survived the sandbox: {alive}"


def processes_with(marker: str) -> list[str]:
    """PIDs of live processes whose command line contains `marker`."""
    alive = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    alive.append(pid)
        except OSError:
            pass
    return alive
