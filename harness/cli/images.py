"""``pfmbench images``: build, publish, pull and verify model images (``models/images.lock`` pins them; docs/docker.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli._app import sub_app
from harness.cli._common import ModelsArg, log, out

images_app = sub_app("images", "Build, publish, pull and verify model images (models/images.lock pins them by digest).")

LockOpt = Annotated[Optional[Path], typer.Option("--lock", help="The lock to read or write (default models/images.lock, or $PFMBENCH_IMAGES_LOCK).")]


@images_app.command("build")
def images_build(
    models: ModelsArg = None,
    base_from: Annotated[str, typer.Option(help="FROM of the base image; offline: local/debian:bookworm (models/_base/offline-base.sh).")] = "",
    base_only: Annotated[bool, typer.Option(help="Build only pfmbench/base.")] = False,
    skip_base: Annotated[bool, typer.Option(help="Reuse the existing pfmbench/base.")] = False,
    no_cache: Annotated[bool, typer.Option(help="Rebuild the model layers from scratch (the base is kept unless rebuilt).")] = False,
) -> None:
    """Build pfmbench/base and the model images, network off, from build/ (wheels, pinned .debs): each records its content manifest."""
    from harness.images import build
    from harness.models.spec import list_models

    if not skip_base:
        build.build_base(base_from or build.DEFAULT_BASE_FROM, log=log)
    if not base_only:
        for m in models or list_models():
            build.build_model(m, log=log, no_cache=no_cache)


@images_app.command("publish")
def images_publish(
    models: ModelsArg = None,
    registry: Annotated[str, typer.Option(help="Registry host/namespace, e.g. ghcr.io/you (default $PFMBENCH_REGISTRY).")] = "",
    lock: LockOpt = None,
) -> None:
    """Push pfmbench/base and the built model images, then write their lock entries (digest, base digest, manifest hash)."""
    from harness import constants
    from harness.images.registry import publish
    from harness.models.spec import list_models

    entries = publish(models or list_models(), registry or constants.REGISTRY, lock=lock, log=log)
    for m, entry in entries.items():
        out.print(f"{m}: {entry.ref}  manifest {entry.manifest}")


@images_app.command("pull")
def images_pull(models: ModelsArg = None) -> None:
    """Pull the locked digest of each model (models/images.lock)."""
    from harness.images.lock import read_lock
    from harness.images.registry import image_identity, pull

    names = models or sorted(read_lock())
    if not names:
        raise typer.BadParameter("models/images.lock has no entries yet: publish first ('pfmbench images publish --registry R') or build ('pfmbench images build')")
    for m in names:
        out.print(f"{m}: {image_identity(pull(m, log=log), m)}")


@images_app.command("verify")
def images_verify(
    models: ModelsArg = None,
    pull: Annotated[bool, typer.Option("--pull", help="Pull the locked digest first where there is no local image.")] = False,
    lock: LockOpt = None,
) -> None:
    """Check local images against the lock: the digest, the recorded content manifest, and what is really installed.

    Exits 1 when anything differs, printing each difference (package, version, hash).
    """
    from harness.images.lock import read_lock
    from harness.images.verify import verify

    names = models or sorted(read_lock(lock))
    if not names:
        raise typer.BadParameter("the lock has no entries: publish first ('pfmbench images publish --registry R')")
    failed = 0
    for m in names:
        result = verify(m, lock=lock, pull=pull, log=log)
        out.print(f"{m}: {'OK' if result.ok else 'DIFFERS'}")
        for line in result.matched:
            out.print(f"  = {line}", highlight=False)
        for line in result.differences:
            out.print(f"  ! {line}", highlight=False)
        failed += not result.ok
    if failed:
        raise typer.Exit(1)
