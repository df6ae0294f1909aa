"""What a feature server says about itself: its model and the content manifest of the image it runs in.

The server puts this in Triton's server id (``tritonserver --id``), which any client
reads with ``get_server_metadata``: a row computed through ``--endpoint`` (a compose
server, someone else's) then records which image computed it, and ``pfmbench reproduce``
can find that image in ``models/images.lock`` by its manifest hash and pull it.
"""

from __future__ import annotations

import re

from harness.images.manifest import manifest_hash, read_image_manifest

#: No spaces: tritonserver takes the id as one ``--id=`` argument, and PyTriton splits its options on whitespace.
_ID = re.compile(r"^pfmbench/(?P<model>[a-z0-9_]+)/manifest=(?P<manifest>sha256:[0-9a-f]{64}|none)$")


def server_id(model: str) -> str:
    """``pfmbench/<model>/manifest=<sha256 of /app/manifest.json>`` (``none`` outside an image)."""
    recorded = read_image_manifest()
    return f"pfmbench/{model}/manifest={manifest_hash(recorded) if recorded else 'none'}"


def parse_server_id(text: str) -> tuple[str, str | None] | None:
    """(model, manifest hash or None) of a pfmbench server's id; None for any other server."""
    m = _ID.match(text or "")
    if not m:
        return None
    return m["model"], (None if m["manifest"] == "none" else m["manifest"])
