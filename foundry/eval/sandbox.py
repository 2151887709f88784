"""Run untrusted Python (model-written code) in a contained child process.

Threat model: code a language model wrote, which may loop, fork, allocate, write files, open sockets or
signal processes by accident or by imitation of code it has seen; not an adversary crafting an escape from
the Python interpreter. The walls, outermost first:

  1. A fresh child interpreter (`python -I -S`: no site, no user paths, no PYTHON* variables) in its own
     session and process group, killed as a whole (SIGKILL to the group) on the wall-clock timeout and
     again after every run, so nothing it started outlives it.
  2. A stripped environment (PATH, LANG only) and an empty throwaway working directory, deleted afterwards.
  3. Resource limits (setrlimit) set by the child before the code runs: CPU seconds, address space, size
     of any file written, open files, no core dumps, and the number of processes (the kernel ignores that
     one for root; there, wall 5 below stops forks).
  4. Private namespaces when the kernel allows them (root, or user namespaces): a network namespace (no
     interface but a down loopback, so no network at the kernel level; recorded per run as `netns`) and a PID
     namespace (recorded as `pidns`) whose init runs the code: it cannot see or signal any process outside,
     and when it ends the kernel kills every process left inside, even ones that left the process group.
  5. A Python guard installed before the code runs: socket, ctypes, subprocess and multiprocessing cannot be
     imported; os/posix fork, exec, spawn, system, kill, killpg, setsid and friends raise; open() for writing,
     and removing/renaming/creating files, are refused outside the working directory
     (and relative to directory descriptors, which is how shutil.rmtree walks).
Standard output and error go to files (bounded by the file-size limit), not pipes, so a flood of output cannot
exhaust the evaluator's memory. A run passes only if the code runs to its end: the child prints a random token,
given on stdin and never visible to the code, after the code returns; `exit(0)` or `os._exit(0)` midway fails.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    timeout: float = 3.0        # wall-clock seconds for the whole child
    cpu: int = 4                # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024       # address space (RLIMIT_AS)
    file_mb: int = 16           # largest file the child may write, stdout/stderr included (RLIMIT_FSIZE)
    nofile: int = 64            # open file descriptors
    nproc: int = 8              # processes/threads beyond those the user already runs (RLIMIT_NPROC)
    network_namespace: bool = True
    guard: bool = True          # the Python-level guard (wall 5); off only to test the outer walls alone


@dataclass
class Outcome:
    passed: bool
    status: str                 # passed | failed | timeout | killed
    detail: str                 # last lines of the child's stderr (the exception), or why it was stopped
    seconds: float
    netns: bool = False
    pidns: bool = False


# The child's first code. It is trusted and runs before the untrusted program; the program is read from
# program.py in the working directory. Kept as a source string so the child imports nothing of foundry.
_BOOTSTRAP = r'''
import os, sys, resource
def _setup():
    # limits as plain integers (importing json would cost ~30 ms of interpreter start per program)
    cfg = dict(zip(("cpu", "memory", "fsize", "nofile", "nproc", "netns", "guard"), map(int, sys.argv[1].split(","))))
    token = sys.stdin.readline().strip()
    fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
    netns = pidns = False
    if cfg["netns"]:
        try:
            import ctypes
            unshare = ctypes.CDLL(None, use_errno=True).unshare
            if unshare(0x40000000 | 0x20000000) == 0:          # CLONE_NEWNET | CLONE_NEWPID
                netns = pidns = True
            else:
                netns = unshare(0x40000000) == 0               # CLONE_NEWNET alone
        except Exception:
            pass
        for m in ("ctypes", "_ctypes", "ctypes._endian"):
            sys.modules.pop(m, None)
    def lim(what, value):
        soft, hard = resource.getrlimit(what)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass
    uid, tasks = os.getuid(), 0
    for p in (os.listdir("/proc") if uid != 0 else ()):  # root: the kernel ignores RLIMIT_NPROC anyway
        if p.isdigit():
            try:
                with open(f"/proc/{p}/status") as f:
                    st = dict(l.split(":", 1) for l in f if ":" in l)
                if int(st["Uid"].split()[0]) == uid:
                    tasks += int(st.get("Threads", "1"))
            except (OSError, ValueError, KeyError):
                pass
    lim(resource.RLIMIT_NPROC, tasks + cfg["nproc"])
    lim(resource.RLIMIT_CPU, cfg["cpu"])
    lim(resource.RLIMIT_AS, cfg["memory"])
    lim(resource.RLIMIT_FSIZE, cfg["fsize"])
    lim(resource.RLIMIT_NOFILE, cfg["nofile"])
    lim(resource.RLIMIT_CORE, 0)
    sys.stderr.write("FOUNDRY-SANDBOX netns=%d pidns=%d\n" % (netns, pidns)); sys.stderr.flush()
    if pidns:
        # The first child is the new PID namespace's init: it cannot see (so cannot signal) any process outside,
        # and when it ends the kernel kills everything left inside. This process only relays its fate.
        child = os.fork()
        if child:
            while True:
                try:
                    status = os.waitpid(child, 0)[1]
                    break
                except InterruptedError:
                    pass
            code = os.waitstatus_to_exitcode(status)
            if code < 0:                                        # died of a signal: die of the same one
                import signal
                try:
                    signal.signal(-code, signal.SIG_DFL)
                except (OSError, ValueError):                    # SIGKILL/SIGSTOP keep their default
                    pass
                os.kill(os.getpid(), -code)
                code = 128 - code
            os._exit(code)
    with open("program.py") as f:
        source = f.read()
    if cfg["guard"]:
        _guard(os.path.realpath(os.getcwd()))
    return token, source
def _guard(home):
    import builtins, io, posix
    for m in ("socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "subprocess", "_posixsubprocess",
              "multiprocessing", "_multiprocessing", "pty", "asyncio", "select", "selectors", "mmap", "resource"):
        sys.modules[m] = None
    def refuse(name):
        def f(*a, **k):
            raise PermissionError(f"sandbox: {name} is not allowed")
        return f
    for mod in (os, posix):
        for name in ("fork", "forkpty", "kill", "killpg", "system", "popen", "execv", "execve", "execl", "execle",
                     "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                     "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setsid", "setpgid",
                     "setpgrp", "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "chroot",
                     "putenv", "unsetenv", "pidfd_open", "plock", "fchdir", "chdir",
                     "fchmod", "fchown", "lchown", "mkfifo", "mknod"):
            if hasattr(mod, name):
                setattr(mod, name, refuse("os." + name))
    def inside(path):
        if isinstance(path, int):
            return True
        p = os.path.realpath(os.fsdecode(path))
        return p == home or p.startswith(home + os.sep)
    def check(path, what):
        if not inside(path):
            raise PermissionError(f"sandbox: {what} outside the working directory: {path!r}")
    real_open = io.open
    def open_(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            check(file, "writing")
        return real_open(file, mode, *a, **k)
    builtins.open = io.open = open_
    real_os_open = os.open
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def os_open(path, flags, *a, **k):
        if flags & W:
            check(path, "writing")
        return real_os_open(path, flags, *a, **k)
    os.open = posix.open = os_open
    def wrap1(mod, name):
        fn = getattr(mod, name, None)
        if fn is None:
            return
        def g(path, *a, **k):
            if any(k.get(d) is not None for d in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                raise PermissionError(f"sandbox: {name} relative to a directory descriptor is not allowed")
            check(path, name)
            for x in a[:1]:
                if isinstance(x, (str, bytes, os.PathLike)):
                    check(x, name)
            return fn(path, *a, **k)
        setattr(mod, name, g)
    for mod in (os, posix):
        for name in ("remove", "unlink", "rmdir", "rename", "replace", "mkdir", "makedirs", "removedirs",
                     "symlink", "link", "truncate", "chmod", "chown", "utime", "setxattr", "removexattr"):
            wrap1(mod, name)
token, source = _setup()
del _setup, _guard, resource
sys.argv = ["program.py"]
exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
del source
sys.stdout.flush()
sys.stdout.write("\n" + token + "\n"); sys.stdout.flush()
'''


def run_program(program: str, limits: Limits = Limits()) -> Outcome:
    """Run one program in a fresh contained child; passed = it ran to its end without an exception."""
    base = tempfile.mkdtemp(prefix="foundry-sandbox-")
    work = os.path.join(base, "work")
    os.mkdir(work)
    token = secrets.token_hex(16)
    cfg = ",".join(str(int(v)) for v in (limits.cpu, limits.memory_mb << 20, limits.file_mb << 20, limits.nofile,
                                         limits.nproc, limits.network_namespace, limits.guard))
    t0 = time.perf_counter()
    status = None
    try:
        with open(os.path.join(work, "program.py"), "w") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        with open(os.path.join(base, "stdout"), "wb") as out, open(os.path.join(base, "stderr"), "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BOOTSTRAP, cfg], cwd=work,
                                    env=env, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                                    close_fds=True)
            try:
                try:
                    proc.stdin.write((token + "\n").encode())
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.perf_counter() - t0
        stdout = _tail(os.path.join(base, "stdout"), 4096)
        stderr = _tail(os.path.join(base, "stderr"), 4096)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    netns = pidns = False
    if stderr.startswith("FOUNDRY-SANDBOX "):
        head, _, stderr = stderr.partition("\n")
        netns, pidns = "netns=1" in head, "pidns=1" in head
    lines = stdout.rstrip("\n").rsplit("\n", 1)
    ran_to_end = proc.returncode == 0 and lines[-1] == token
    if status is None:
        status = "passed" if ran_to_end else ("killed" if proc.returncode < 0 else "failed")
    if status == "timeout":
        detail = f"timed out after {limits.timeout:g} s"
    elif status == "killed":
        detail = f"killed by signal {signal.Signals(-proc.returncode).name}" + _last_line(stderr)
    else:
        detail = "\n".join(stderr.strip().splitlines()[-3:]) if status == "failed" else ""
        if status == "failed" and not detail:
            detail = f"exited with status {proc.returncode} before the end of the program"
    return Outcome(status == "passed", status, detail, seconds, netns, pidns)


def run_programs(programs: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    """Run many programs, `workers` children at a time (default: the CPU count)."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read().decode("utf-8", "replace")


def _last_line(text: str) -> str:
    text = text.strip()
    return (": " + text.splitlines()[-1]) if text else ""


def outcome_dict(o: Outcome) -> dict:
    return asdict(o)
