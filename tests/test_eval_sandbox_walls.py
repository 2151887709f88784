"""The sandbox's walls below the Python guard: hostile programs try every way we found to write, create,
rename, link or delete outside their working directory, to read what the evaluator can read, and to reach the
evaluator (signals, abstract sockets), each under every wall set the kernel gives: all walls (the default),
the kernel walls alone (guard off: Landlock and the mount view), and the mount view alone (the fallback where
Landlock is missing). Every attack is first run against a directory *inside* the sandbox, where it must
succeed, so an attack that fails for an unrelated reason (a typo, a missing module) cannot pass as contained.

Root and unprivileged: this process is usually root; `test_unprivileged_user_is_walled_in` repeats the attacks
as a fresh user (created with useradd, run through setpriv) against a directory that user owns."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from foundry.eval import sandbox
from foundry.eval.sandbox import Limits, run_programs

FAST = dict(timeout=3.0, cpu=2, memory_mb=512)
PROBE = sandbox.run_program("pass\n", Limits(**FAST))
KERNEL = Limits(**FAST, guard=False)                           # Landlock (+ mount view where allowed) alone
MOUNT_ONLY = Limits(**FAST, guard=False, landlock=False)       # the fallback wall alone

# Each attack is a body run after `D = <directory>` and `V = <a precious file in it>`. Outside, D is a directory
# of this test (the evaluator may write there); inside, the prelude makes one in the sandbox's working directory.
WRITES = {
    "open": "open(os.path.join(D, 'a'), 'w').write('x')",
    "open_append": "open(V, 'a').write('x')",
    "os_open": "os.close(os.open(os.path.join(D, 'a'), os.O_WRONLY | os.O_CREAT))",
    "os_open_dir_fd": "d = os.open(D, os.O_RDONLY | os.O_DIRECTORY)\n"
                      "os.close(os.open('a', os.O_WRONLY | os.O_CREAT, dir_fd=d))",
    "io_FileIO": "import io\nio.FileIO(os.path.join(D, 'a'), 'w').write(b'x')",
    "_io_open": "import _io\n_io.open(os.path.join(D, 'a'), 'w').write('x')",
    "pathlib": "import pathlib\npathlib.Path(D, 'a').write_text('x')",
    "pathlib_touch": "import pathlib\npathlib.Path(D, 'a').touch()",
    "shutil_copy": "import shutil\nshutil.copy('program.py', os.path.join(D, 'a'))",
    "truncate": "os.truncate(V, 0)",
    "mkdir": "os.mkdir(os.path.join(D, 'sub'))",
    "rename_out": "os.rename(V, os.path.join(D, 'moved'))",
    "rename_in": "os.rename(V, os.path.join(os.getcwd(), 'stolen'))",
    "replace": "open('mine', 'w').write('x')\nos.replace('mine', V)",
    "shutil_move": "import shutil\nshutil.move(V, 'stolen')",
    "link": "os.link(V, os.path.join(D, 'hard'))",
    "link_in": "os.link(V, 'hard')\nopen('hard', 'w').write('x')",
    "symlink": "os.symlink('/etc/passwd', os.path.join(D, 'sym'))",
    "symlink_out_of_dir": "os.symlink(D, 'door')\nopen(os.path.join('door', 'a'), 'w').write('x')",
    "unlink": "os.unlink(V)",
    "rmtree": "import shutil\nshutil.rmtree(D)",
    "mkfifo": "os.mkfifo(os.path.join(D, 'fifo'))",
    "chmod": "os.chmod(V, 0o777)",
    "utime": "os.utime(V, (0, 0))",
    "ctypes_libc": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   "fd = libc.open(os.path.join(D, 'a').encode(), 0o1101, 0o644)\nassert fd >= 0, ctypes.get_errno()",
    "ctypes_unlink": "import ctypes\nassert ctypes.CDLL(None).unlink(V.encode()) == 0",
    "mmap": "import mmap\nfd = os.open(V, os.O_RDWR)\nm = mmap.mmap(fd, 0)\nm[:1] = b'X'\nm.flush()",
    "sqlite3": "import sqlite3\nc = sqlite3.connect(os.path.join(D, 'a.db'))\nc.execute('create table t(x)')\n"
               "c.commit()",
    "dbm": "import dbm\nwith dbm.open(os.path.join(D, 'a'), 'c') as db:\n    db[b'k'] = b'v'",
    "tempfile_mkstemp": "import tempfile\nos.close(tempfile.mkstemp(dir=D)[0])",
    "tempfile_named": "import tempfile\ntempfile.NamedTemporaryFile(dir=D, delete=False).write(b'x')",
    "logging": "import logging\nh = logging.FileHandler(os.path.join(D, 'a.log'))\nh.emit(logging.makeLogRecord({}))",
    "zipfile": "import zipfile\nzipfile.ZipFile(os.path.join(D, 'a.zip'), 'w').writestr('f', 'x')",
    "unix_socket_file": "import socket\nsocket.socket(socket.AF_UNIX).bind(os.path.join(D, 'sock'))",
    "shell": "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo x > ' + os.path.join(D, 'a')], check=True)",
    "exec_python": "import subprocess, sys\n"
                   "subprocess.run([sys.executable, '-c', 'open(%r, \"w\")' % os.path.join(D, 'a')], check=True)",
}
READS = {
    "secret_file": "assert 'hunter' '2' in open(S).read()",
    "listdir_parent": "print(os.listdir('..'))",
    "evaluator_environ": "assert b'hunter' b'2' in open('/proc/%d/environ' % P, 'rb').read()",
    "evaluator_source": "print(open(F).read()[:10])",
}
ATTACKS = {**WRITES, **READS}
INSIDE = ("import os\nos.makedirs('inner', exist_ok=True)\nopen('inner/victim.txt', 'w').write('precious')\n"
          "open('inner/secret.txt', 'w').write('hunter' '2')\n"
          "D = os.path.abspath('inner')\nV = os.path.join(D, 'victim.txt')\n"
          "S = os.path.join(D, 'secret.txt')\nP = os.getpid()\nF = V\n")
# In-sandbox controls of the reads that have no inside twin: its own directory, its own environment (stripped).
INSIDE_READS = {"listdir_parent": "print(os.listdir('.'))",
                "evaluator_environ": "assert b'PATH=' in open('/proc/self/environ', 'rb').read()"}


def outside_program(name, d, v, secret, pid):
    return (f"import os\nD = {str(d)!r}\nV = {str(v)!r}\nS = {str(secret)!r}\nP = {pid}\nF = {__file__!r}\n"
            + ATTACKS[name] + "\n")


def snapshot(d: Path) -> dict:
    """Every entry under d with its type, mode, size, mtime and content: what an attack could change."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(d))] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns,
                                      p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


@pytest.fixture
def target(tmp_path):
    """A directory the evaluator can write, a secret file beside it, and a process of the evaluator's whose
    environment holds a secret (/proc/PID/environ shows a process's initial environment)."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim.txt").write_text("precious")
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            env={**os.environ, "FOUNDRY_TEST_SECRET": "hunter2"})
    yield d, d / "victim.txt", secret, proc.pid
    proc.kill()
    proc.wait()


def test_every_attack_works_inside_the_sandbox():
    """The controls: each attack, aimed at a directory inside the sandbox, runs to its end with no walls but
    the process group and rlimits (the walls refuse some of them wherever they aim, e.g. exec of /bin/sh)."""
    names = list(ATTACKS)
    programs = [INSIDE + INSIDE_READS.get(n, ATTACKS[n]) + "\n" for n in names]
    bare = Limits(**FAST, guard=False, network_namespace=False, landlock=False, mount_namespace=False)
    for n, o in zip(names, run_programs(programs, bare, workers=2)):
        assert o.passed, f"attack {n!r} does not even work inside the sandbox: {o.detail}"


@pytest.mark.parametrize("walls", ["all", "kernel", "mount_only"])
def test_attacks_outside_the_working_directory_are_contained(walls, target):
    limits = {"all": Limits(**FAST), "kernel": KERNEL, "mount_only": MOUNT_ONLY}[walls]
    if walls == "kernel" and not PROBE.landlock:
        pytest.skip("no Landlock on this kernel: the guard-off run would rest on the mount view alone")
    if walls == "mount_only" and not PROBE.mountns:
        pytest.skip("mount namespaces are not allowed here")
    d, v, secret, pid = target
    before = snapshot(d.parent)
    names = list(WRITES) + list(READS)
    if walls == "mount_only":       # the mount view is read-only, not hidden: reads are Landlock's wall
        names = list(WRITES)
    if walls == "kernel" and not PROBE.mountns:   # metadata changes are not Landlock's to handle
        names = [n for n in names if n not in ("chmod", "utime")]
    outcomes = run_programs([outside_program(n, d, v, secret, pid) for n in names], limits, workers=2)
    leaked = {n: o.detail for n, o in zip(names, outcomes) if o.passed}
    assert not leaked, f"these attacks ran to their end under walls={walls} {outcomes[0].walls}: {sorted(leaked)}"
    assert snapshot(d.parent) == before, "an attack changed the evaluator's files"
    for o in outcomes:
        assert "hunter2" not in o.detail


def test_walls_are_recorded_per_run():
    o = sandbox.run_program("pass\n", Limits(**FAST))
    assert o.guard and "guard" in o.walls
    if o.landlock:
        assert f"landlock-abi{o.landlock}" in o.walls and not o.guard_only
    bare = sandbox.run_program("pass\n", Limits(**FAST, network_namespace=False, landlock=False,
                                                mount_namespace=False))
    assert bare.walls == ("guard",) and bare.guard_only


def sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


@pytest.mark.parametrize("netns", [True, False], ids=["namespaces", "no_namespaces"])
def test_signals_do_not_reach_the_evaluator(netns):
    """Unguarded code signals the evaluator (its parent) and a process of the evaluator's, by kill and by
    pidfd; without namespaces only Landlock's signal scope (ABI >= 6) stands in the way."""
    if not netns and PROBE.landlock < 6:
        pytest.skip("no Landlock signal scope (ABI < 6): without a PID namespace the guard is the wall")
    victim = sleeper()
    try:
        codes = [f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n",
                 f"import os, signal\nos.kill(os.getppid(), 0)\nassert os.getppid() == {os.getpid()}\n",
                 f"import os, signal\nfd = os.pidfd_open({victim.pid})\nsignal.pidfd_send_signal(fd, signal.SIGKILL)\n",
                 f"import os, signal\nos.killpg(os.getpgid({victim.pid}), signal.SIGKILL)\n"]
        outs = run_programs(codes, Limits(**FAST, guard=False, network_namespace=netns), workers=2)
        time.sleep(0.1)
        assert victim.poll() is None, "the evaluator's process was killed"
        assert [o.passed for o in outs] == [False] * len(codes), [o.detail for o in outs]
    finally:
        victim.kill()
        victim.wait()


def test_abstract_unix_sockets_of_the_evaluator_are_out_of_reach():
    if PROBE.landlock < 6:
        pytest.skip("no Landlock scopes (ABI < 6); a network namespace also hides abstract sockets")
    name = f"\0foundry-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    srv.listen(1)
    try:
        code = f"import socket\nsocket.socket(socket.AF_UNIX).connect({name!r})\n"
        o = sandbox.run_program(code, Limits(**FAST, guard=False, network_namespace=False))
        assert not o.passed and "PermissionError" in o.detail, o.detail
    finally:
        srv.close()


def test_tcp_is_refused_by_landlock_without_a_network_namespace():
    if PROBE.landlock < 4:
        pytest.skip("Landlock handles TCP from ABI 4")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {srv.getsockname()[1]}), timeout=1)\n"
        o = sandbox.run_program(code, Limits(**FAST, guard=False, network_namespace=False))
        assert not o.passed and "PermissionError" in o.detail, o.detail
    finally:
        srv.close()


@pytest.mark.parametrize("code", [
    "import threading, time\nts = []\nwhile True:\n"
    "    t = threading.Thread(target=time.sleep, args=(30,), daemon=True)\n    t.start()\n    ts.append(t)\n",
    "import os\nfs = []\nwhile True:\n    fs.append(open('program.py'))\n",
    "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (8 << 20))\n    i += 1\n",
    "import sys\nwhile True:\n    sys.stderr.write('flood' * 10000)\n",
], ids=["thread_bomb", "fd_flood", "disk_flood", "stderr_flood"])
def test_bombs_and_floods_are_contained(code, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))     # where the sandbox makes its directories
    before = len(os.listdir("/proc"))
    t0 = time.perf_counter()
    o = sandbox.run_program(code, Limits(**FAST))
    assert not o.passed and time.perf_counter() - t0 < FAST["timeout"] + 3
    assert len(os.listdir("/proc")) < before + 10, "processes or threads were left behind"
    assert not list(tmp_path.iterdir()), "the sandbox left files behind"


def test_disk_flood_is_bounded_by_the_working_directory_size():
    if not PROBE.mountns:
        pytest.skip("no mount namespace: the working directory is on the host's disk, bounded only by time")
    code = "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n    i += 1\n"
    o = sandbox.run_program(code, Limits(**FAST, disk_mb=8))
    assert o.status == "failed" and "No space left" in o.detail, o


# ---- as an unprivileged user ----------------------------------------------------------------------------------

USER = "foundry-sandbox-test"
DRIVER = """
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox
programs = json.load(open(sys.argv[1]))
walls = sys.argv[2]
limits = sandbox.Limits(timeout=3.0, cpu=2, memory_mb=512, guard=walls == "all", landlock=walls != "mount_only")
outs = sandbox.run_programs(list(programs.values()), limits, workers=2)
json.dump({n: [o.passed, o.detail, list(o.walls)] for n, o in zip(programs, outs)}, sys.stdout)
"""


@pytest.fixture(scope="module")
def unprivileged():
    """A fresh unprivileged user and a Python it can run (this venv may live in root's home)."""
    if os.getuid() != 0:
        return pwd.getpwuid(os.getuid())
    if not shutil.which("useradd") or not shutil.which("setpriv"):
        pytest.skip("needs useradd and setpriv to run as an unprivileged user")
    created = False
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        r = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"useradd failed: {r.stderr.strip()}")
        created = True
        pw = pwd.getpwnam(USER)
    yield pw
    if created:
        subprocess.run(["userdel", USER], capture_output=True)


def python_for(pw) -> str | None:
    """An interpreter the user can execute, with its standard library readable."""
    for exe in (sys.executable, "/usr/bin/python3"):
        r = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                            exe, "-I", "-c", "import subprocess, sys; subprocess.run([sys.executable, '-I', '-c', 'import json'], "
                            "check=True)"], capture_output=True)
        if r.returncode == 0:
            return exe
    return None


@pytest.mark.parametrize("walls", ["all", "kernel", "mount_only"])
def test_unprivileged_user_is_walled_in(unprivileged, walls):
    pw = unprivileged
    exe = python_for(pw) if os.getuid() == 0 else sys.executable
    if exe is None:
        pytest.skip(f"no Python that user {pw.pw_name} can run")
    tmp_path = Path(tempfile.mkdtemp(prefix="foundry-unprivileged-"))   # pytest's tmp_path is root's alone
    try:
        walled_in_as(pw, exe, tmp_path, walls)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def walled_in_as(pw, exe, tmp_path, wall_set):
    home = tmp_path / "userdir"                 # owned by the user: only the walls stop its writes
    home.mkdir()
    (home / "victim.txt").write_text("precious")
    secret = home / "secret.txt"
    secret.write_text("hunter2")
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(sandbox.__file__, lib / "sandbox.py")
    (lib / "driver.py").write_text(textwrap.dedent(DRIVER))
    names = list(WRITES) + (["secret_file"] if wall_set != "mount_only" else [])
    progs = {n: outside_program(n, home, home / "victim.txt", secret, os.getpid()) for n in names}
    progs["control"] = INSIDE + "open('inner/x', 'w').write('ok')\n"
    (lib / "programs.json").write_text(json.dumps(progs))
    for p in (tmp_path, home, lib, *home.iterdir(), *lib.iterdir()):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    before = snapshot(home)
    cmd = [exe, "-I", str(lib / "driver.py"), str(lib / "programs.json"), wall_set]
    if os.getuid() == 0:
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": str(tmp_path)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(lib), env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res.pop("control")[0], "a good program failed as the unprivileged user"
    walls = next(iter(res.values()))[2]
    if wall_set == "mount_only" and "mountns" not in walls:
        pytest.skip(f"no user and mount namespaces for an unprivileged user here (walls {walls})")
    if wall_set == "kernel" and not any(w.startswith("landlock") or w == "mountns" for w in walls):
        pytest.skip(f"no kernel wall for an unprivileged user here (walls {walls})")
    if "mountns" not in walls:      # metadata changes are the mount view's to stop (or the guard's)
        res = {n: r for n, r in res.items() if n not in ("chmod", "utime") or wall_set == "all"}
    leaked = sorted(n for n, (passed, _, _) in res.items() if passed)
    assert not leaked, f"as {pw.pw_name} with walls {walls}: {leaked}"
    assert snapshot(home) == before
