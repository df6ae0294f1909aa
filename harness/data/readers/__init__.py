"""Readers of on-disk dataset formats: one module per format, each registering itself by name.

A card's ``format`` names a reader. A reader turns one :class:`~harness.data.readers.base.Sample`
into the image (``uint8 [H, W, 3]``) and its *raw* annotation; the card's mask rule
(:func:`harness.data.formats.to_classes`) then makes class indices of it. A new on-disk
format is one new module here with a :func:`register`-ed :class:`Reader` subclass: the
card schema, ``data prepare``, the loaders and instance maps pick it up by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.data.readers.base import IMAGE_SUFFIXES, Reader, Sample, fail, read_image

_READERS: dict[str, Reader] = {}
_LOADED = False


def register(cls: type[Reader]) -> type[Reader]:
    """Class decorator: make ``cls`` the reader of the formats it names (a name registered twice is a bug)."""
    for name in cls.formats:
        if name in _READERS:
            raise RuntimeError(f"format '{name}' has two readers: {type(_READERS[name]).__name__} and {cls.__name__}")
        _READERS[name] = cls()
    return cls


def _load_all() -> None:
    """Import every reader module once (a reader registered from outside before that does not stop it)."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True


def formats() -> list[str]:
    """Every format a card may name."""
    _load_all()
    return sorted(_READERS)


def get_reader(name: str) -> Reader:
    _load_all()
    if name not in _READERS:
        raise KeyError(f"no reader for format '{name}' (known: {', '.join(sorted(_READERS))})")
    return _READERS[name]


__all__ = ["IMAGE_SUFFIXES", "Reader", "Sample", "fail", "formats", "get_reader", "read_image", "register"]
