"""A server somebody else started (``docker-compose up``, another machine's loopback tunnel).

``--endpoint host:port`` points the harness at its gRPC port; nothing is started or
stopped here. The server's id names its image's content manifest, which the row records
(as the locked image with that manifest, when ``models/images.lock`` has one). The access token, if the server has one, comes from
``$PFMBENCH_TRITON_TOKEN``. Features always cross as gRPC bytes unless the server
shares this machine's /dev/shm.
"""

from __future__ import annotations

import time

from harness import constants
from harness.client.triton import Transfer
from harness.errors import ServerError
from harness.images.lock import MANIFEST_PREFIX, entry_by_manifest
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights
from harness.runtime.served import ServedRuntime
from harness.serve.identity import parse_server_id


class EndpointRuntime(ServedRuntime):
    name = "endpoint"

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, endpoint: str, transfer: Transfer = "auto", startup_timeout_s: float = 20.0) -> None:
        super().__init__(spec, weights, startup_timeout_s, transfer)
        self.endpoint = endpoint
        self._image: str | None = None

    def start(self) -> None:
        self._connect(self.endpoint, constants.triton_token())
        deadline = time.monotonic() + self.startup_timeout_s  # a server just started may still be loading
        assert self.client is not None
        while not self.client.ready():
            if time.monotonic() > deadline:
                raise ServerError(f"no ready '{constants.TRITON_MODEL}' model at {self.endpoint} after {self.startup_timeout_s:.0f} s", f"start the server (e.g. docker-compose -f compose/serve.yml up -d {self.spec.name}) or fix --endpoint")
            time.sleep(0.25)
        self._image = self._identify(self.client.server_id())

    def _identify(self, server_id: str) -> str | None:
        """What the row records of the server's image: the locked ``repo@sha256:`` whose manifest the server reports,
        else ``manifest:sha256:...`` (the content, which a later lock may name); None for a server that says nothing."""
        ident = parse_server_id(server_id)
        if ident is None:
            return None
        model, manifest = ident
        if model != self.spec.name:
            raise ServerError(f"the server at {self.endpoint} serves '{model}', not '{self.spec.name}'", f"point --endpoint at a {self.spec.name} server, or run -m {model}")
        if manifest is None:
            return None  # a server outside an image (pfmbench serve in a checkout)
        entry = entry_by_manifest(model, manifest)
        return entry.ref if entry else f"{MANIFEST_PREFIX}{manifest}"

    @property
    def image_digest(self) -> str | None:
        return self._image

    def alive(self) -> bool:
        return self.client is not None and self.client.ready()

    def exit_status(self) -> int | None:
        return None

    def logs(self, lines: int = 15) -> str:
        return ""

    @property
    def where_logs(self) -> str:
        return f"the logs of the server at {self.endpoint}"

    def stop(self) -> None:
        self._close_client()
