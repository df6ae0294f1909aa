"""A registry of named files (timm's ``list_models`` / ``is_model`` / ``create`` trio, over a folder).

Models are ``models/<name>/Dockerfile``, dataset cards ``dataset_cards/<name>.yaml``: the
folder is the registry and there is no second list. Parsed entries are cached by path and
modification time, so an edited file is read again without a restart.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class FileRegistry(Generic[T]):
    """``names`` / ``contains`` / ``get`` over the files ``glob`` finds below a folder."""

    def __init__(self, glob: str, name_of: Callable[[Path], str], parse: Callable[[Path], T],
                 unknown: Callable[[str, list[str]], Exception], default_dir: Callable[[], Path]) -> None:
        self._glob, self._name_of, self._unknown, self._default_dir = glob, name_of, unknown, default_dir
        self._parse = lru_cache(maxsize=None)(lambda path, mtime: parse(path))

    def files(self, folder: Path | None = None) -> dict[str, Path]:
        """Name -> file, sorted by name; names starting with ``_`` (shared parts such as ``_base``) are not entries."""
        found = {self._name_of(p): p for p in sorted((folder or self._default_dir()).glob(self._glob))}
        return {name: path for name, path in sorted(found.items()) if not name.startswith("_")}

    def names(self, pattern: str = "*", folder: Path | None = None) -> list[str]:
        return [n for n in self.files(folder) if fnmatch.fnmatch(n, pattern)]

    def contains(self, name: str, folder: Path | None = None) -> bool:
        return name in self.files(folder)

    def get(self, name: str, folder: Path | None = None) -> T:
        """The parsed entry ``name``; the ``unknown`` error (listing the known names) if there is none."""
        files = self.files(folder)
        if name not in files:
            raise self._unknown(name, sorted(files))
        path = files[name]
        return self._parse(path, path.stat().st_mtime)
