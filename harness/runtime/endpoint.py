"""A server somebody else started (``docker-compose up``, another machine's loopback tunnel).

``--endpoint host:port`` points the harness at its gRPC port; nothing is started or
stopped here. The access token, if the server has one, comes from
``$PFMBENCH_TRITON_TOKEN``. Features always cross as gRPC bytes unless the server
shares this machine's /dev/shm.
"""

from __future__ import annotations

import time

from harness import constants
from harness.client.triton import Transfer
from harness.errors import ServerError
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights
from harness.runtime.served import ServedRuntime


class EndpointRuntime(ServedRuntime):
    name = "endpoint"

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, endpoint: str, transfer: Transfer = "auto", startup_timeout_s: float = 20.0) -> None:
        super().__init__(spec, weights, startup_timeout_s, transfer)
        self.endpoint = endpoint

    def start(self) -> None:
        self._connect(self.endpoint, constants.triton_token())
        deadline = time.monotonic() + self.startup_timeout_s  # a server just started may still be loading
        assert self.client is not None
        while not self.client.ready():
            if time.monotonic() > deadline:
                raise ServerError(f"no ready '{constants.TRITON_MODEL}' model at {self.endpoint} after {self.startup_timeout_s:.0f} s", f"start the server (e.g. docker-compose -f compose/serve.yml up -d {self.spec.name}) or fix --endpoint")
            time.sleep(0.25)

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
