"""The processes pfmbench starts itself: ``serve`` (a model's feature server) and ``train`` (a training job)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli._app import app
from harness.cli._common import ModelOpt, WeightsOpt


@app.command()
def serve(
    model: ModelOpt,
    weights: WeightsOpt = "random",
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
) -> None:
    """Serve a model's token features over Triton in the foreground (Ctrl-C stops it)."""
    from harness.models.spec import get_spec
    from harness.serve.server import serve as serve_model

    serve_model(get_spec(model), weights, 0, host, http_port, grpc_port, metrics_port)


@app.command(epilog="The harness writes RUN_DIR/job.json and starts this command (in the model's image or locally); "
                    "'pfmbench bench -s lora ...' is how users run it.")
def train(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding job.json; checkpoint.pt, best.pt and result.json are written there.")],
) -> None:
    """Run one training job (LoRA, DoRA, CNN/Transformer adapter, full): train, select on validation, test once.

    Progress is printed as JSON event lines; a killed job resumes from its last checkpoint when run again.
    """
    from harness.errors import ConfigError
    from harness.train.job import JOB_FILE, run_job

    if not (run_dir / JOB_FILE).is_file():
        raise ConfigError(f"{run_dir / JOB_FILE} does not exist", "start training with 'pfmbench bench -s <strategy> ...', which writes it")
    run_job(run_dir)
