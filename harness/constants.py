"""Paths and environment variables, read in one place.

Everything else imports from here, so a user can find every knob pfmbench reads from
the environment by reading this file. Most are read once, at import. The few that a
test, a sweep job or a training job points elsewhere while the process runs (the
feature cache, the tokens) are functions read at call time; they say so.
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

#: Where ``models/images.lock`` lives (image references and digests of each model).
IMAGES_LOCK = Path(os.environ.get("PFMBENCH_IMAGES_LOCK", MODELS_DIR / "images.lock"))

#: Build context of the images (the wheelhouse of the lock lives here).
BUILD_DIR = Path(os.environ.get("PFMBENCH_BUILD", PROJECT_ROOT / "build"))

#: ``FROM`` of the base image (offline: ``local/debian:bookworm``, models/_base/offline-base.sh).
DOCKER_BASE = os.environ.get("PFMBENCH_DOCKER_BASE", "python:3.11-slim-bookworm")

#: Registry host/namespace that ``images publish`` pushes to (the release workflow sets it).
REGISTRY = os.environ.get("PFMBENCH_REGISTRY", "ghcr.io/pfmbench")

#: A Docker CLI with BuildKit, if not the one on PATH.
DOCKER_CLI = os.environ.get("PFMBENCH_DOCKER_CLI")

#: Seconds between the plain progress lines printed off a terminal (logs, CI, nohup); PFMBENCH_PROGRESS_INTERVAL.
PROGRESS_INTERVAL_S = float(os.environ.get("PFMBENCH_PROGRESS_INTERVAL", "30"))

#: Where a local model server writes its log: a server that fails keeps it here (the error names it); one that stops cleanly removes it.
LOGS_DIR = Path(os.environ.get("PFMBENCH_LOGS") or CACHE_DIR / "logs")

#: Measured eager and compiled forward rates per GPU model, which ``--engine auto`` reads (``make gpu-check`` writes them).
ENGINE_STORE = Path(os.environ.get("PFMBENCH_ENGINES") or CACHE_DIR / "engines.json")

#: Where exported ONNX graphs are kept.
ONNX_DIR = Path(os.environ.get("PFMBENCH_ONNX") or CACHE_DIR / "onnx")

#: The model a server serves when ``--model`` is not given (set in every model image).
SERVE_MODEL = os.environ.get("PFMBENCH_MODEL")

#: Address a server binds when ``--host`` is not given (0.0.0.0 inside a container).
SERVE_BIND = os.environ.get("PFMBENCH_BIND", "127.0.0.1")

#: Default of ``--device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; :mod:`harness.util.devices`): where runs compute.
DEVICE = os.environ.get("PFMBENCH_DEVICE") or "auto"

#: Seconds a model server may take to become healthy (a large model on a CPU loads slowly).
STARTUP_TIMEOUT_S = float(os.environ.get("PFMBENCH_STARTUP_TIMEOUT", "180"))

#: Seconds one inference request may take before it fails (gRPC deadline, HTTP timeout).
REQUEST_TIMEOUT_S = float(os.environ.get("PFMBENCH_REQUEST_TIMEOUT", "300"))

#: Extraction requests a served runtime keeps in flight: the next batch is written and sent while the server
#: computes this one. The server runs each request as sent (no dynamic batcher), so the features equal one-at-a-time's.
IN_FLIGHT = int(os.environ.get("PFMBENCH_IN_FLIGHT", "2"))

#: Times a request that timed out or found the server unavailable is sent again (after 1, 2, 4... s) before the run fails.
REQUEST_RETRIES = int(os.environ.get("PFMBENCH_REQUEST_RETRIES", "3"))

#: Environment variable of the feature cache's root (see :func:`features_dir`).
FEATURES_ENV = "PFMBENCH_FEATURES"

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


#: ``PFMBENCH_SLIDE_BACKEND``: the library that opens slides (auto: OpenSlide, then tiffslide; or one of them).
SLIDE_BACKEND_ENV = "PFMBENCH_SLIDE_BACKEND"


def slide_backend() -> str:
    """``$PFMBENCH_SLIDE_BACKEND`` or ``auto``. Read at call time, as tests switch it."""
    return os.environ.get(SLIDE_BACKEND_ENV) or "auto"


def features_dir() -> Path:
    """``$PFMBENCH_FEATURES``, else the cache's ``features/``. Read at call time: tests and jobs point it elsewhere."""
    return Path(os.environ.get(FEATURES_ENV) or CACHE_DIR / "features")


def triton_token() -> str | None:
    """The Triton access token a server requires and a client sends. Read at call time; never logged."""
    return os.environ.get(TOKEN_ENV) or None


def hub_token() -> str | None:
    """The user's hub token, if any. Read at call time so tests can set it."""
    return os.environ.get(HUB_TOKEN_ENV) or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
