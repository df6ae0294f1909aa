"""``python -m harness.serve --model NAME ...``: what a runtime starts (also the container's CMD)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from harness import constants
from harness.errors import PfmbenchError
from harness.models.spec import get_spec
from harness.serve.server import serve


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.serve", description="Serve a PFM's token features over Triton.")
    p.add_argument("--model", default=constants.SERVE_MODEL, required=constants.SERVE_MODEL is None)
    p.add_argument("--weights", default="random", help="random | hub | path to a checkpoint file or directory")
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--host", default=constants.SERVE_BIND)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--device", default=None, help="auto (default: CUDA when there is a GPU) | cpu | cuda | cuda:N")
    p.add_argument("--engine", default="torch", choices=["torch", "compile", "onnx"],
                   help="eager PyTorch, torch.compile, or onnxruntime on the model's ONNX export")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"], help="autocast dtype of the forward on a GPU (a CPU computes in fp32)")
    p.add_argument("--mean", default=None, help="comma-separated RGB mean replacing the model's label (the densebench preset's MUSK: ImageNet)")
    p.add_argument("--std", default=None, help="comma-separated RGB std replacing the model's label")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice, one per core)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        spec = get_spec(args.model)
        if args.mean or args.std:
            spec = spec.model_copy(update={k: tuple(float(v) for v in getattr(args, k).split(",")) for k in ("mean", "std") if getattr(args, k)})
        serve(spec, args.weights, args.init_seed, args.host, args.http_port, args.grpc_port, args.metrics_port, args.device, engine=args.engine, dtype=args.dtype)
    except PfmbenchError as exc:  # a device, weights or model error: the log's last line says it, as the CLI would
        print(f"error: {exc.one_line()}", file=sys.stderr, flush=True)
        sys.exit(1)
    _exit_now()


def _exit_now() -> None:
    """Leave without the interpreter's teardown once ``serve`` has shut down cleanly.

    By then Triton, its backend stubs, their shared memory and the workspace lease are
    gone (``serve``'s ``finally``). What remains is finalising torch and PyTriton's
    threads, about 1.5 s on 2 cores, which a Ctrl-C'd sweep would wait for on every server.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
