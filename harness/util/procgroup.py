"""Child process groups that cannot outlive the harness: spawn, stop, and the child's own side.

Everything the harness runs on this machine (a model server, a training job, a sweep job)
is started by :func:`spawn_group`: in its own session, so one ``killpg`` reaches the child
and whatever it started (Triton, its Python backend stubs, data-loader workers), and with
``PR_SET_PDEATHSIG``, so the kernel tells it when the harness dies, even by SIGKILL.

Being told is not enough: a Triton server asked to stop while a request is in flight can
take tens of seconds, or hang, and a Python signal handler only runs once the main thread
gets back to Python code, which a main thread blocked in a C wait may not do for seconds.
So a group leader calls :func:`die_with_parent_promptly`, which starts a watchdog thread
that does not depend on the signal: once its parent is gone it allows
:data:`ORPHAN_GRACE_S` for a clean shutdown, then SIGKILLs its whole group. A normal stop
(SIGTERM from a live parent) gets :data:`STOP_GRACE_S` for the clean shutdown that
removes Triton's shared memory and workspace. An interrupted caller (Ctrl-C) that does not
care about in-flight requests sends :data:`STOP_NOW` instead: the leader reaps its group
(SIGKILL, shared memory, workspace) and exits at once, which is complete cleanup without
the seconds Triton's clean shutdown takes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
#: seconds a group leader whose parent died gets before its group is SIGKILLed
ORPHAN_GRACE_S = 1.0
#: seconds a group leader asked to stop by its live parent gets for a clean shutdown
STOP_GRACE_S = 12.0
#: the signal that asks a group leader to reap its group and exit now (see :func:`die_with_parent_promptly`)
STOP_NOW = signal.SIGUSR1
#: how often the watchdog looks at its parent
WATCH_PERIOD_S = 0.05


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def _parent_death_signal_setter(parent: int) -> Callable[[], None]:
    """What the child runs between fork and exec: ask for SIGTERM when ``parent`` dies.

    A parent that died between the fork and the ``prctl`` sends no signal; the child sees
    that it was already reparented and exits at once instead of running unwatched.
    """
    def set_it() -> None:
        if (libc := _libc()) is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)
    return set_it


def _has_parent_death_signal() -> bool:
    """Whether this process was started tied to its parent (by :func:`spawn_group`; survives exec)."""
    libc, sig = _libc(), ctypes.c_int(0)
    return libc is not None and libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig)) == 0 and sig.value != 0


def spawn_group(cmd: list[str], **popen: Any) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session that is sent SIGTERM when this process dies.

    The parent-death signal follows the *thread* that forks: spawn from a thread that
    lives as long as the child should (the main thread, or a pool torn down after it).
    """
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_parent_death_signal_setter(os.getpid()), **popen)


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0, now: bool = False) -> None:
    """SIGTERM the group's leader (clean shutdown), then SIGKILL anything left in its group, and wait until it is gone.

    ``now``: send the leader :data:`STOP_NOW` first (a leader that called
    :func:`die_with_parent_promptly` reaps its group and exits at once; the SIGTERM path
    stays behind it for one that did not).
    """
    pgid = proc.pid  # spawn_group: the group id is the leader's pid
    if now and proc.poll() is None:
        try:
            os.kill(pgid, STOP_NOW)
        except ProcessLookupError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    wait_until_group_is_gone(pgid)


def stop_groups(procs: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """:func:`stop_group` for several groups at once: every leader gets SIGTERM first, so the grace periods run together."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for proc in procs:
        stop_group(proc, grace_s=max(0.0, deadline - time.monotonic()))


def wait_until_group_is_gone(pgid: int, timeout_s: float = 10.0, but: int | None = None) -> None:
    """Return once no live process is left in ``pgid``.

    SIGKILL is delivered at once but a process that maps gigabytes (a Triton backend stub
    with its shared-memory pools) takes a moment to be torn down, and it was reparented
    when Triton died, so ``proc.wait()`` does not cover it. Waiting here means "stopped"
    really means gone. Zombies count as gone: their reaping is up to whoever adopted them.
    ``but``: a member not waited for (the caller itself, when it leads the group).
    """
    deadline = time.monotonic() + timeout_s
    while [p for p in live_members(pgid) if p != but] and time.monotonic() < deadline:
        time.sleep(0.05)


def live_members(pgid: int) -> list[int]:
    """Pids of non-zombie processes in group ``pgid`` (Linux ``/proc``; empty elsewhere)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def kill_own_group() -> None:
    """SIGKILL every other live member of this process's group (only when it leads the group) and wait until they are gone."""
    me = os.getpid()
    if os.getpgrp() != me:
        return
    for pid in live_members(me):
        if pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wait_until_group_is_gone(me, but=me)


def mapped_files(pid: int, under: Path) -> set[Path]:
    """The files under ``under`` that process ``pid`` has mapped (``/proc/<pid>/maps``; empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text(errors="replace").splitlines()
    except OSError:
        return set()
    return {Path(path) for line in lines for path in [line.split(maxsplit=5)[-1]]
            if path.startswith(f"{under}/") and not path.endswith(" (deleted)")}


def command_line(pid: int) -> str:
    """``pid``'s command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def die_with_parent_promptly(on_stop: type[BaseException] = KeyboardInterrupt, reap: Callable[[], None] = kill_own_group) -> None:
    """In a group leader's main thread: turn SIGTERM into ``on_stop``, with a deadline behind it.

    A watchdog thread starts now. If this process was started tied to its parent
    (:func:`spawn_group`), it looks at the parent every :data:`WATCH_PERIOD_S`; once the
    parent is gone, it calls ``reap`` (by default: SIGKILL the rest of the group) and exits
    :data:`ORPHAN_GRACE_S` later, whether or not the main thread has run the SIGTERM handler
    yet. The first SIGTERM raises ``on_stop`` (for a clean shutdown) and gives that shutdown
    :data:`STOP_GRACE_S`; later SIGTERMs do not interrupt it. A server started by hand or as a
    container's PID 1 is not tied to a parent: only the SIGTERM deadline applies to it.
    :data:`STOP_NOW` makes the deadline now: the watchdog reaps and exits without waiting
    for the main thread, which may be blocked in C.

    ``reap`` also runs when the interpreter exits by itself (``atexit``): a main thread that
    does get to the handler, raises ``on_stop`` and ends the process inside the grace period
    would otherwise leave the rest of the group behind, unreaped, with no watchdog left.
    """
    parent, watch_parent = os.getppid(), _has_parent_death_signal()
    stop_asked: list[float] = []
    stop_now: list[float] = []

    def deadline() -> float:
        if stop_now:
            return stop_now[0]
        if watch_parent and os.getppid() != parent:
            return time.monotonic() + ORPHAN_GRACE_S
        return stop_asked[0] + STOP_GRACE_S if stop_asked else float("inf")

    def watchdog() -> None:
        due = deadline()
        while time.monotonic() < due:
            time.sleep(WATCH_PERIOD_S)
            due = min(due, deadline())
        try:
            reap()
        finally:
            os._exit(128 + (STOP_NOW if stop_now else signal.SIGTERM))

    def on_term(signum: int, frame: object) -> None:
        if stop_asked:
            return
        stop_asked.append(time.monotonic())
        raise on_stop()

    atexit.register(reap)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(STOP_NOW, lambda signum, frame: stop_now.append(time.monotonic()))
    threading.Thread(target=watchdog, name="shutdown-watchdog", daemon=True).start()
