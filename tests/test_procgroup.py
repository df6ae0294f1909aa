"""A group leader started by the harness dies with it, with its group, even when its main thread cannot run a signal handler."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest
from waiting import wait_until

from conftest import _stat

# The harness: starts the group leader with spawn_group, prints its pid, then waits to be killed.
PARENT = """
import sys
from harness.util.procgroup import spawn_group
leader = spawn_group([sys.executable, "-c", sys.argv[1]], stdout=sys.stdout)
sys.stdin.readline()
"""

# A group leader whose main thread never runs the SIGTERM handler: SIGTERM is blocked before the
# watchdog thread starts, so no thread of it takes the signal and only the watchdog can act (a Triton
# server's main thread in a C-level wait is the real case).
SIGTERM_BLOCKED = """
import os, signal, subprocess, time
from harness.util.procgroup import die_with_parent_promptly
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
die_with_parent_promptly()
member = subprocess.Popen(["sleep", "600"])
print(os.getpid(), member.pid, flush=True)
time.sleep(600)
"""

# A group leader whose main thread does run the handler and lets ``on_stop`` end the process at once,
# inside the watchdog's grace period, without stopping its member itself.
EXITS_AT_ONCE = """
import os, subprocess, time
from harness.util.procgroup import die_with_parent_promptly
die_with_parent_promptly()
member = subprocess.Popen(["sleep", "600"])
print(os.getpid(), member.pid, flush=True)
while True:
    time.sleep(0.05)
"""


def _gone(pid: int) -> bool:
    st = _stat(pid)
    if st is not None and st[2] == "Z":  # re-parented to this test process (a subreaper): reap it
        os.waitpid(pid, os.WNOHANG)
        return True
    return st is None


@pytest.mark.parametrize("leader", [SIGTERM_BLOCKED, EXITS_AT_ONCE], ids=["main-thread-blocked", "main-thread-exits-at-once"])
def test_a_leader_dies_with_its_parent_and_takes_its_group_with_it(leader: str):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, leader], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    leader, member = map(int, parent.stdout.readline().split())  # type: ignore[union-attr]
    try:
        assert _stat(member)[1] == leader  # the member is in the leader's group  # type: ignore[index]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        # ORPHAN_GRACE_S (1 s) plus the reap; the bound is the one the reliability issue sets for a killed harness
        wait_until(lambda: _gone(leader) and _gone(member), 5, "the orphaned leader and its group to be gone")
    finally:  # what a failure leaves is this test's to remove
        parent.kill()
        parent.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)


def test_only_processes_started_by_spawn_group_are_tied_to_their_parent():
    probe = [sys.executable, "-c", "from harness.util.procgroup import _has_parent_death_signal as tied; print(tied())"]
    from harness.util.procgroup import spawn_group

    tied = spawn_group(probe, stdout=subprocess.PIPE, text=True)
    assert tied.communicate()[0].strip() == "True"
    assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "False"
