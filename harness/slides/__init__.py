"""Whole slides for GPFM's slide-level tasks: read, find tissue, tile, and embed tiles into bags.

``reader`` opens a slide (OpenSlide from the ``openslide-bin`` wheel, ``tiffslide`` as the
pure-Python fallback); ``tissue`` finds tissue on a thumbnail; ``tiling`` cuts the tissue
into tiles at the card's resolution and saves their coordinates; ``table`` reads and
validates the card's label or survival table; ``bags`` sends tiles through the served
model into the feature cache, one bag per slide; ``sample`` writes the built-in
``slides-sample`` from real H&E.
"""
