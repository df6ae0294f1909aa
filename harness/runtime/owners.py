"""Who started a server, container or job, so that one whose owner died can be found and removed.

A docker container cannot die with the harness that started it (``PR_SET_PDEATHSIG`` does
not cross the daemon), so every container carries its owner in labels: pid, the pid's
start time (pids are reused) and host. Before a command starts a container it reaps
every pfmbench container on that daemon whose owner on this host is gone.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger("pfmbench.runtime")

RUN_LABEL = "org.pfmbench.run"
PID_LABEL, START_LABEL, HOST_LABEL = "org.pfmbench.owner-pid", "org.pfmbench.owner-start", "org.pfmbench.owner-host"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None if it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_labels() -> dict[str, str]:
    """Labels naming this process as the owner."""
    return {PID_LABEL: str(os.getpid()), START_LABEL: process_start(os.getpid()) or "", HOST_LABEL: socket.gethostname()}


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the owner named by ``labels`` still runs. Owners on other hosts, or unlabelled, count as alive."""
    if labels.get(HOST_LABEL) != socket.gethostname() or not labels.get(PID_LABEL, "").isdigit():
        return True
    return process_start(int(labels[PID_LABEL])) == labels.get(START_LABEL)


def reap_orphan_containers(client: Any) -> list[str]:
    """Remove every pfmbench container whose owner on this host has exited; returns their names."""
    reaped = []
    for container in client.containers.list(all=True, filters={"label": RUN_LABEL}):
        if owner_alive(container.labels):
            continue
        try:
            container.remove(force=True)
            reaped.append(container.name)
            log.warning("removed container %s: the process that started it (pid %s) is gone", container.name, container.labels.get(PID_LABEL))
        except Exception:
            continue
    return reaped
