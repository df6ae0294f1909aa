"""Re-pin models/_base/apt.lock from a Debian image that has the packages installed.

    python tools/apt_lock.py local/debian:bookworm      (models/_base/offline-base.sh makes it)

The pins are python3, python3-venv, libpython3.11 and their dependency closure, less the
Essential packages and the C runtime every Debian image already carries (those come with
the FROM image, whose content the image manifest records anyway).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOTS = ("python3", "python3-venv", "libpython3.11")
C_RUNTIME = {"libc6", "libgcc-s1", "gcc-12-base", "libcrypt1", "zlib1g", "libacl1", "libselinux1", "libpcre2-8-0",
             "libzstd1", "liblzma5", "libbz2-1.0", "libmd0", "libtinfo6"}
LOCK = Path(__file__).resolve().parent.parent / "models/_base/apt.lock"


def closure(status: str) -> dict[str, str]:
    rows = {}
    for line in status.splitlines():
        name, essential, version, depends = line.split("\t")
        rows[name] = (essential, version, depends)
    seen: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen or name not in rows:
            continue
        seen.add(name)
        for group in filter(None, (g.strip() for g in rows[name][2].split(","))):
            for alt in group.split("|"):
                dep = re.split(r"[ (:]", alt.strip())[0]
                if dep in rows:
                    todo.append(dep)
                    break
    return {n: rows[n][1] for n in sorted(seen) if n not in C_RUNTIME and rows[n][0] != "yes"}


def main(image: str) -> None:
    fmt = "${Package}\t${Essential}\t${Version}\t${Depends}, ${Pre-Depends}\n"
    status = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "dpkg-query", "-W", "-f", fmt],
                            capture_output=True, text=True, check=True).stdout
    pins = closure(status)
    head = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
    LOCK.write_text("\n".join(head) + "\n" + "".join(f"{n}={v}\n" for n, v in pins.items()))
    print(f"{LOCK}: {len(pins)} packages pinned from {image}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "local/debian:bookworm")
