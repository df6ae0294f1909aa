"""``pfmbench images``: build, push and pull model images (``models/images.lock`` pins them by digest; docs/docker.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from harness.cli._app import sub_app
from harness.cli._common import ModelsArg, log, out

images_app = sub_app("images", "Build, push and pull model images (models/images.lock pins them by digest).")


@images_app.command("build")
def images_build(
    models: ModelsArg = None,
    base_from: Annotated[str, typer.Option(help="FROM of the base image; offline: local/debian:bookworm (models/_base/offline-base.sh).")] = "",
    base_only: Annotated[bool, typer.Option(help="Build only pfmbench/base.")] = False,
    skip_base: Annotated[bool, typer.Option(help="Reuse the existing pfmbench/base.")] = False,
) -> None:
    """Build pfmbench/base (hermetic, from a wheelhouse of requirements.lock) and the model images."""
    from harness.models.spec import list_models
    from harness.runtime import images

    if not skip_base:
        images.build_base(base_from or images.DEFAULT_BASE_FROM, log=log)
    if not base_only:
        for m in models or list_models():
            images.build_model(m, log=log)


@images_app.command("push")
def images_push(
    models: ModelsArg,
    registry: Annotated[str, typer.Option(help="Registry host/namespace (default $PFMBENCH_REGISTRY).")] = "",
) -> None:
    """Push model images and record their digests in models/images.lock."""
    from harness.models.spec import list_models
    from harness.runtime import images

    for m in models or list_models():
        entry = images.push(m, registry or images.DEFAULT_REGISTRY, log=log)
        out.print(f"{m}: {entry['image']}@{entry['digest']}")


@images_app.command("pull")
def images_pull(models: ModelsArg) -> None:
    """Pull the locked digest of each model (models/images.lock)."""
    from harness.models.spec import list_models
    from harness.runtime import images

    for m in models or list_models():
        image = images.pull(m, log=log)
        out.print(f"{m}: {images.image_identity(image)}")
