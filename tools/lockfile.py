"""Pin every line of ``requirements.lock`` to the sha256 of the wheel that gets installed.

``python tools/lockfile.py`` (``make lock``) downloads the locked wheels into ``build/wheelhouse``
(the same set the image build uses) and rewrites each ``name==version`` line with
``--hash=sha256:...``. With hashes present, pip installs in require-hashes mode, both
in ``make setup`` and inside the base image: a changed file fails the install.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from harness import constants


def wheel_hashes(wheelhouse: Path) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for dist in sorted(wheelhouse.iterdir()):
        if dist.name.endswith(".whl"):
            name, version = parse_wheel_filename(dist.name)[:2]
        elif dist.name.endswith(".tar.gz"):
            name, version = parse_sdist_filename(dist.name)
        else:
            continue
        digest = hashlib.sha256(dist.read_bytes()).hexdigest()
        out.setdefault((canonicalize_name(name), str(version)), []).append(digest)
    return out


def add_hashes(lock: Path, wheelhouse: Path) -> int:
    """Rewrite ``lock`` with hashes; returns the number of pinned requirements."""
    hashes = wheel_hashes(wheelhouse)
    lines, count = [], 0
    for raw in lock.read_text().splitlines():
        line = raw.split("\\")[0].strip()
        if not line or line.startswith(("#", "--hash")):
            if raw.startswith("#"):
                lines.append(raw)
            continue
        name, _, version = line.partition("==")
        from packaging.version import Version

        key = (canonicalize_name(name), str(Version(version)))
        if key not in hashes:
            raise SystemExit(f"no wheel for {line} in {wheelhouse}; run 'pfmbench images build --base-only' or pip download first")
        lines.append(" \\\n    ".join([line] + [f"--hash=sha256:{h}" for h in hashes[key]]))
        count += 1
    lock.write_text("\n".join(lines) + "\n")
    return count


def main() -> None:
    from harness.images.build import ensure_wheelhouse

    lock = constants.PROJECT_ROOT / "requirements.lock"
    house = ensure_wheelhouse(log=lambda m: print(m, file=sys.stderr))
    print(f"{add_hashes(lock, house)} requirements pinned by sha256 in {lock}")


if __name__ == "__main__":
    main()
