"""Run untrusted Python (model-written code) in a contained child process.

Threat model: code a language model wrote, which may loop, fork, allocate, write files, open sockets or
signal processes by accident or by imitation of code it has seen; not an adversary crafting an escape from
the Python interpreter. The walls, outermost first:

  1. A fresh child interpreter (`python -I -S`: no site, no user paths, no PYTHON* variables) in its own
     session and process group, killed as a whole (SIGKILL to the group) on the wall-clock timeout and
     again after every run, so nothing it started outlives it.
  2. A stripped environment (PATH, LANG, TMPDIR = the working directory) and an empty throwaway working
     directory, deleted afterwards.
  3. Resource limits (setrlimit) set by the child before the code runs: CPU seconds, address space, size
     of any file written, open files, no core dumps, and the number of processes (the kernel ignores that
     one for root; there, the guard and the PID namespace stop forks).
  4. Private namespaces when the kernel allows them (root, or an unprivileged user through a user namespace):
     a network namespace (no interface but a down loopback: no network at the kernel level; `netns`), a PID
     namespace (`pidns`) whose init runs the code: it cannot see or signal any process outside, and when it
     ends the kernel kills every process left inside, even ones that left the process group; and a mount
     namespace (`mountns`) in which every mount is read-only but the working directory, a fresh tmpfs of
     `disk_mb` (so chmod/utime/xattr outside fail too, and a flood of files is bounded). Every capability is
     then dropped, bounding set included, so a root child can neither remount the view nor regain them by exec.
  5. Landlock (Linux >= 5.13; `landlock` records the ABI): the kernel refuses every file access the ruleset
     handles except beneath the paths given a rule: everything but device nodes in the working directory;
     read (and execute where needed) of the interpreter, its standard library, the shared library folders,
     /dev/null, /dev/urandom and the time zone files; nothing else, so the evaluator's files, /proc (another
     process's environ) and the sandbox's own stdout file are out of reach. By ABI it also handles rename or
     link across folders (2), truncate (3), TCP bind/connect (4), device ioctls (5), and scopes abstract unix
     sockets and signals to the sandbox (6). It holds for root and across exec, and it is the wall for reads;
     where it is missing, the mount view (4) is the filesystem wall; where both are missing, only the guard.
  6. A Python guard installed before the code runs (innermost): socket, ctypes, subprocess and
     multiprocessing cannot be imported; os/posix fork, exec, spawn, system, kill, killpg, setsid and friends
     raise; open()/io.FileIO for writing, and removing/renaming/creating files, are refused outside the
     working directory (and relative to directory descriptors, which is how shutil.rmtree walks). A deny-list
     of Python functions cannot be complete (sqlite3 opens files from C), hence walls 4 and 5.
Each run records which walls held (`Outcome.walls`); HumanEval reports them per program and `foundry.eval`
prints a one-line warning when a program ran with only the guard around the filesystem.
Standard output and error go to files (bounded by the file-size limit), not pipes, so a flood of output cannot
exhaust the evaluator's memory. A run passes only if the code runs to its end: the child prints a random token,
given on stdin and not in the code's namespace, after the code returns; `exit(0)` or `os._exit(0)` midway fails
(code that searched the interpreter's frames for the token could forge a pass: the threat model above).
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
    guard: bool = True          # the Python-level guard (wall 6); off only to test the outer walls alone
    landlock: bool = True       # the kernel's filesystem wall (wall 5); off only to test the fallback and the guard
    mount_namespace: bool = True  # a read-only mount view with a tmpfs working directory, where allowed
    disk_mb: int = 64           # size of that tmpfs: all the files the child may write together


@dataclass
class Outcome:
    passed: bool
    status: str                 # passed | failed | timeout | killed
    detail: str                 # last lines of the child's stderr (the exception), or why it was stopped
    seconds: float
    netns: bool = False
    pidns: bool = False
    landlock: int = 0           # the Landlock ABI the run was restricted under (0: none)
    mountns: bool = False       # the read-only mount view (the only filesystem wall without Landlock)
    guard: bool = False

    @property
    def walls(self) -> tuple[str, ...]:
        """The walls that held for this run, outermost first (the process group and rlimits always hold)."""
        return tuple(name for name, held in (("netns", self.netns), ("pidns", self.pidns),
                                             (f"landlock-abi{self.landlock}", self.landlock),
                                             ("mountns", self.mountns), ("guard", self.guard)) if held)

    @property
    def guard_only(self) -> bool:
        """True when nothing below the Python guard walled the filesystem in (no Landlock, no mount view)."""
        return not (self.landlock or self.mountns)


# The child's first code. It is trusted and runs before the untrusted program; the program is read from
# program.py in the working directory. Kept as a source string so the child imports nothing of foundry.
_BOOTSTRAP = r'''
import os, sys, resource
def _setup():
    # limits as plain integers (importing json would cost ~30 ms of interpreter start per program)
    keys = ("cpu", "memory", "fsize", "nofile", "nproc", "netns", "guard", "landlock", "mountns", "disk")
    cfg = dict(zip(keys, map(int, sys.argv[1].split(","))))
    token = sys.stdin.readline().strip()
    fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
    home = os.path.realpath(os.getcwd())
    uid, gid, tasks = os.getuid(), os.getgid(), 0
    for p in (os.listdir("/proc") if uid != 0 else ()):  # root: the kernel ignores RLIMIT_NPROC anyway
        if p.isdigit():
            try:
                with open(f"/proc/{p}/status") as f:
                    st = dict(l.split(":", 1) for l in f if ":" in l)
                if int(st["Uid"].split()[0]) == uid:
                    tasks += int(st.get("Threads", "1"))
            except (OSError, ValueError, KeyError):
                pass
    with open("program.py") as f:
        source = f.read()
    netns = pidns = mountns = False
    libc = None
    abi = 0
    if cfg["netns"] or cfg["landlock"] or cfg["mountns"]:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        L = ctypes.c_long
        sc = libc.syscall
        sc.restype = L
        NET, PID, NS, USER = 0x40000000, 0x20000000, 0x00020000, 0x10000000
        want = (NET | PID if cfg["netns"] else 0) | (NS if cfg["mountns"] else 0)
        # the most walls first, then fewer: a kernel may refuse PID or mount namespaces but allow the rest
        tries = [w for w in (want, want & ~NS, want & NET) if w]
        for f in [w | USER for w in tries] if uid != 0 else tries:   # unprivileged: a user namespace first
            if libc.unshare(L(f)) == 0:
                netns, pidns, mountns = bool(f & NET), bool(f & PID), bool(f & NS)
                if f & USER:                                    # be ourselves inside it, with no new groups
                    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                                       ("gid_map", f"{gid} {gid} 1")):
                        with open(f"/proc/self/{name}", "w") as m:
                            m.write(text)
                break
        if mountns:
            mountns = _mount_view(ctypes, libc, sc, home, cfg["disk"], source)
        if cfg["landlock"]:
            abi = max(0, sc(L(444), None, L(0), L(1)))          # landlock_create_ruleset(NULL, 0, VERSION)
        ruleset = _landlock_ruleset(ctypes, sc, abi, home) if abi else -1
        if ruleset >= 0:
            # no_new_privs: required of an unprivileged caller, and no setuid binary regains what is dropped
            libc.prctl(L(38), L(1), L(0), L(0), L(0))
            if sc(L(446), L(ruleset), L(0)) != 0:               # landlock_restrict_self(ruleset, 0)
                abi = 0
            os.close(ruleset)
        else:
            abi = 0
        for m in ("ctypes", "_ctypes", "ctypes._endian"):
            sys.modules.pop(m, None)
    def lim(what, value):
        soft, hard = resource.getrlimit(what)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass
    lim(resource.RLIMIT_NPROC, tasks + cfg["nproc"])
    lim(resource.RLIMIT_CPU, cfg["cpu"])
    lim(resource.RLIMIT_AS, cfg["memory"])
    lim(resource.RLIMIT_FSIZE, cfg["fsize"])
    lim(resource.RLIMIT_NOFILE, cfg["nofile"])
    lim(resource.RLIMIT_CORE, 0)
    sys.stderr.write("FOUNDRY-SANDBOX netns=%d pidns=%d landlock=%d mountns=%d guard=%d\n"
                     % (netns, pidns, abi, mountns, cfg["guard"])); sys.stderr.flush()
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
    _seal(libc, mountns and pidns and not abi)
    if cfg["guard"]:
        _guard(home)
    return token, source
def _landlock_ruleset(ctypes, sc, abi, home):
    # Landlock (Linux >= 5.13, include/uapi/linux/landlock.h): a ruleset names the access rights it handles;
    # whatever it handles is denied except beneath the paths given a rule. The rights handled grow with the ABI:
    # 1: execute, write, read, readdir, remove, make (char, dir, reg, sock, fifo, block, sym); 2: refer (rename or
    # link across directories); 3: truncate; 4: TCP bind/connect (no port allowed); 5: ioctl on devices;
    # 6: scopes, so abstract unix sockets and signals cannot reach a process outside the sandbox.
    L = ctypes.c_long
    fs = (1 << 13) - 1
    fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    net, scoped = (3 if abi >= 4 else 0), (3 if abi >= 6 else 0)
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    fd = sc(L(444), ctypes.byref(attr), L(8 if abi < 4 else 16 if abi < 6 else 24), L(0))
    if fd < 0:
        return -1
    class Beneath(ctypes.Structure):                            # struct landlock_path_beneath_attr (packed)
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    FILE_ONLY = 1 | 2 | 4 | (1 << 14) | (1 << 15)               # the rights a rule on a file (not a directory) may hold
    X, W, R, RD, T, IO = 1, 2, 4, 8, 1 << 14, 1 << 15
    def allow(path, rights, required=False):
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            if required:
                raise
            return
        try:
            if not os.path.isdir(path):
                rights &= FILE_ONLY
            rule = Beneath(rights & fs, pfd)
            if sc(L(445), L(fd), L(1), ctypes.byref(rule), L(0)) != 0 and required:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
        finally:
            os.close(pfd)
    try:
        allow(home, fs & ~(1 << 6 | 1 << 11), required=True)    # the working directory: all but device nodes
        exe = os.path.realpath(sys.executable)
        allow(exe, R | X)
        allow(os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "pyvenv.cfg"), R)
        allow(os.path.join(os.path.realpath(sys.base_prefix), "lib"), R | RD | X)   # stdlib and libpython
        for p in sys.path:                                      # -I -S: the stdlib, its zip and lib-dynload
            allow(os.path.realpath(p), R | RD)
        for p in ("/lib", "/lib32", "/lib64", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/local/lib"):
            allow(p, R | RD | X)                                # shared libraries of C extension modules
        for p in ("/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo", "/dev/urandom", "/dev/random",
                  "/dev/zero"):
            allow(os.path.realpath(p), R | RD)
        allow("/dev/null", R | W | T | IO)
    except OSError:
        os.close(fd)
        return -1
    return fd
def _seal(libc, own_proc):
    # With a mount view, a /proc of the PID namespace (the evaluator's /proc/PID/environ is not in it). Then every
    # capability goes (bounding set, then effective/permitted/inheritable): a root child can no longer remount
    # the view, load a module, set the clock or regain them by exec; RLIMIT_NPROC still exempts root (the
    # kernel's INIT_USER rule), which the guard and the PID namespace cover.
    import ctypes
    libc = libc or ctypes.CDLL(None, use_errno=True)
    if own_proc:
        libc.mount(b"proc", b"/proc", b"proc", 0x1 | 0x2 | 0x4 | 0x8, None)   # MS_RDONLY|NOSUID|NODEV|NOEXEC
    for cap in range(64):                                       # PR_CAPBSET_DROP: an exec'd root gets none back
        libc.prctl(24, cap, 0, 0, 0)
    libc.prctl(38, 1, 0, 0, 0)                                  # PR_SET_NO_NEW_PRIVS
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)                # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()                              # effective, permitted, inheritable: none
    libc.capset(ctypes.byref(header), ctypes.byref(data))
def _mount_view(ctypes, libc, sc, home, disk, source):
    # In a private mount namespace every mount is made read-only (mount_setattr(2), Linux >= 5.12, AT_RECURSIVE)
    # but the working directory, which becomes a fresh tmpfs of `disk` bytes holding program.py: the only
    # filesystem wall where Landlock is missing; beside Landlock, it also stops chmod/chown/utime/xattr (which
    # Landlock does not handle) and bounds the disk a flood of files can take.
    L = ctypes.c_long
    MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
    if libc.mount(None, b"/", None, L(MS_REC | MS_PRIVATE), None) != 0:
        return False
    opts = f"size={disk},mode=0700,uid={os.getuid()},gid={os.getgid()}".encode()
    if libc.mount(b"tmpfs", home.encode(), b"tmpfs", L(MS_NOSUID | MS_NODEV), opts) != 0:
        return False
    ro, clear = (ctypes.c_uint64 * 4)(1, 0, 0, 0), (ctypes.c_uint64 * 4)(0, 1, 0, 0)   # MOUNT_ATTR_RDONLY
    if sc(L(442), L(-100), b"/", L(0x8000), ctypes.byref(ro), L(32)) != 0:            # AT_FDCWD, AT_RECURSIVE
        return False
    if sc(L(442), L(-100), home.encode(), L(0), ctypes.byref(clear), L(32)) != 0:
        return False
    os.chdir(home)                                              # onto the tmpfs, off the directory below it
    with open("program.py", "w") as f:
        f.write(source)
    return True
def _guard(home):
    import builtins, io, _io, posix
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
    builtins.open = io.open = _io.open = open_
    class FileIO(io.FileIO):
        def __init__(self, file, mode="r", *a, **k):
            if any(c in mode for c in "wax+"):
                check(file, "writing")
            super().__init__(file, mode, *a, **k)
    io.FileIO = _io.FileIO = FileIO
    real_os_open = os.open
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def os_open(path, flags, *a, dir_fd=None, **k):
        if flags & W:
            if dir_fd is not None:
                raise PermissionError("sandbox: writing relative to a directory descriptor is not allowed")
            check(path, "writing")
        return real_os_open(path, flags, *a, dir_fd=dir_fd, **k)
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
del _setup, _guard, _landlock_ruleset, _mount_view, _seal, resource
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
                                         limits.nproc, limits.network_namespace, limits.guard, limits.landlock,
                                         limits.mount_namespace, limits.disk_mb << 20))
    t0 = time.perf_counter()
    status = None
    try:
        with open(os.path.join(work, "program.py"), "w") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
               "TMPDIR": work}                                   # tempfile's default: the working directory
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
    walls = {}
    if stderr.startswith("FOUNDRY-SANDBOX "):
        head, _, stderr = stderr.partition("\n")
        walls = dict(w.split("=", 1) for w in head.split()[1:] if "=" in w)
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
    return Outcome(status == "passed", status, detail, seconds, walls.get("netns") == "1", walls.get("pidns") == "1",
                   int(walls.get("landlock", "0")), walls.get("mountns") == "1", walls.get("guard") == "1")


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
