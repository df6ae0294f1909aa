"""Paths and environment variables, read in one place.

Everything else imports from here, so a user can find every knob pfmbench reads from
the environment by reading this file.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Project root when running from a checkout (models/ and dataset_cards/ live there).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Directory scanned for ``<name>/Dockerfile`` (the model registry).
MODELS_DIR = Path(os.environ.get("PFMBENCH_MODELS_DIR", PROJECT_ROOT / "models"))

#: Directory scanned for ``<name>.yaml`` dataset cards.
CARDS_DIR = Path(os.environ.get("PFMBENCH_CARDS_DIR", PROJECT_ROOT / "dataset_cards"))

#: Cache for weights, prepared datasets and feature caches.
CACHE_DIR = Path(os.environ.get("PFMBENCH_CACHE", Path.home() / ".cache" / "pfmbench"))

#: Where datasets live: ``<DATA_DIR>/<card>/`` (samples are generated there on first use).
DATA_DIR = Path(os.environ.get("PFMBENCH_DATA", CACHE_DIR / "data"))

#: Local weight directories: ``<WEIGHTS_DIR>/<model>/``.
WEIGHTS_DIR = Path(os.environ.get("PFMBENCH_WEIGHTS", CACHE_DIR / "weights"))

#: The results store (a Parquet dataset, one file per row).
RESULTS_DIR = Path(os.environ.get("PFMBENCH_RESULTS", "results"))

#: Label namespace of the model spec in Dockerfiles.
LABEL_PREFIX = "org.pfmbench."

#: Name of the Triton model that serves token features.
TRITON_MODEL = "features"

#: Environment variable carrying the Triton access token to a server (never logged).
TOKEN_ENV = "PFMBENCH_TRITON_TOKEN"

#: Hub token variable (read only when weights come from the hub; never logged).
HUB_TOKEN_ENV = "HF_TOKEN"

#: Show tracebacks instead of one-line errors.
DEBUG = os.environ.get("PFMBENCH_DEBUG", "") not in ("", "0")


def hub_token() -> str | None:
    """The user's hub token, if any. Read at call time so tests can set it."""
    return os.environ.get(HUB_TOKEN_ENV) or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
