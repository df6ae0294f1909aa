"""Open a whole slide with OpenSlide, or with tiffslide where OpenSlide cannot: one small interface for both.

OpenSlide (``openslide-python`` + the ``openslide-bin`` wheel, no system library) reads
every vendor format it knows; ``tiffslide`` (tifffile + zarr, pure Python) reads TIFF-based
slides (SVS, generic tiled TIFF) and is what runs where OpenSlide's binary cannot load.
Either way a slide that cannot be read is one :class:`~harness.errors.DataError` naming
the file: a truncated file, an unknown format, or no microns-per-pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness import constants
from harness.errors import DataError

Backend = Literal["auto", "openslide", "tiffslide"]
#: Extensions of the slide formats OpenSlide and tiffslide read.
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")


def slide_error(path: Path, problem: str, fix: str = "") -> DataError:
    """The one-line error of one bad slide; the caller goes on with the others."""
    return DataError(f"{path}: {problem}", fix or "replace the slide from the original download, or remove its row from the table")


def _openslide() -> Any | None:
    try:
        import openslide
    except (ImportError, OSError):  # no binary for this platform: tiffslide reads the TIFF-based formats
        return None
    return openslide


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


@dataclass
class Slide:
    """An open slide: level geometry, microns per pixel at level 0, and RGB reads."""

    path: Path
    backend: str
    handle: Any
    mpp: float

    @property
    def dimensions(self) -> tuple[int, int]:
        """Width and height at level 0."""
        w, h = self.handle.dimensions
        return int(w), int(h)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.handle.level_downsamples)

    def best_level(self, downsample: float) -> int:
        """The coarsest level at most ``downsample`` times smaller than level 0 (its pixels are then only shrunk)."""
        fits = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.0001]
        return max(fits, key=lambda i: self.level_downsamples[i]) if fits else 0

    def read(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB ``uint8 [h, w, 3]`` of the region at level-0 ``(x, y)``, ``size`` pixels of ``level``; transparent is white."""
        try:
            region = self.handle.read_region((int(x), int(y)), int(level), (int(size[0]), int(size[1])))
        except Exception as exc:  # OpenSlideError, tifffile and zarr errors alike: the file is damaged
            raise slide_error(self.path, f"unreadable region at ({x}, {y}) level {level} ({_first_line(exc)})") from None
        rgba = np.asarray(region.convert("RGBA") if region.mode != "RGBA" else region)
        if rgba[..., 3].min() == 255:  # opaque (the usual case): no compositing, no wider copy
            return np.ascontiguousarray(rgba[..., :3])
        alpha = rgba[..., 3:4].astype(np.uint16)
        return ((rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)

    def thumbnail(self, downsample: float, strip_rows: int = 512) -> np.ndarray:
        """RGB of the whole slide ``downsample`` times smaller than level 0, read from the nearest level in strips.

        Strips of ``strip_rows`` rows of that level are read and shrunk one at a time, so the
        memory is a strip's, not the level's (a 100k px slide's level 2 alone is gigabytes).
        """
        from PIL import Image

        w, h = self.dimensions
        out_w, out_h = max(1, math.ceil(w / downsample)), max(1, math.ceil(h / downsample))
        level = self.best_level(downsample)
        d = self.level_downsamples[level]
        lw, lh = math.ceil(w / d), math.ceil(h / d)
        scale = d / downsample  # level pixels -> thumbnail pixels
        strips = []
        for top in range(0, lh, strip_rows):
            rows = min(strip_rows, lh - top)
            strip = self.read(0, int(top * d), level, (lw, rows))
            strips.append(np.asarray(Image.fromarray(strip).resize((out_w, max(1, round(rows * scale))), Image.Resampling.BOX)))
        thumb = np.concatenate(strips)
        return thumb if thumb.shape[0] == out_h else np.asarray(Image.fromarray(thumb).resize((out_w, out_h), Image.Resampling.BOX))

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mpp(props: Any, prefix: str) -> float | None:
    try:
        x, y = float(props[f"{prefix}.mpp-x"]), float(props[f"{prefix}.mpp-y"])
    except (KeyError, TypeError, ValueError):
        return None
    return (x + y) / 2 if x > 0 and y > 0 else None


def open_slide(path: Path, backend: Backend | None = None) -> Slide:
    """Open ``path`` and check it can be tiled: readable, a known format, microns per pixel recorded.

    ``auto`` tries OpenSlide, then tiffslide on a format OpenSlide does not know.
    """
    path = Path(path)
    backend = backend or constants.slide_backend()  # type: ignore[assignment]
    if not path.is_file():
        raise slide_error(path, "no such slide file", "check the card's layout.images against the download, or remove the row")
    problems = []
    handle, used = None, ""
    if backend in ("auto", "openslide") and (openslide := _openslide()) is not None:
        try:
            handle, used = openslide.OpenSlide(str(path)), "openslide"
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError
            problems.append(f"openslide: {_first_line(exc)}")
    if handle is None and backend in ("auto", "tiffslide"):
        import tiffslide

        try:
            handle, used = tiffslide.TiffSlide(str(path)), "tiffslide"
            handle.properties  # parsed lazily: a TIFF header with no image fails here  # noqa: B018
        except Exception as exc:  # tifffile's TiffFileError, ValueError, IndexError, OSError on a damaged file
            problems.append(f"tiffslide: {_first_line(exc)}")
            handle = None
    if handle is None:
        raise slide_error(path, f"not a readable slide ({'; '.join(problems) or 'no reader available'})")
    mpp = _mpp(handle.properties, used)
    if mpp is None:
        handle.close()
        raise slide_error(path, "the file records no microns per pixel, so the tile size cannot be set",
                          "rescan or convert the slide with its resolution, or remove its row from the table")
    slide = Slide(path, used, handle, mpp)
    w, h = slide.dimensions
    for level, d in enumerate(slide.level_downsamples):  # the last tile of each level: a truncated file fails here, not mid-tiling
        try:
            slide.read(int((w - 1) // d * d), int((h - 1) // d * d), level, (1, 1))
        except DataError as exc:
            slide.close()
            raise slide_error(path, f"truncated or damaged: level {level} cannot be read ({exc.message.split('(', 1)[-1].rstrip(')')})") from None
    return slide
