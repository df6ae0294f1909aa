"""What every command module shares: the console, option definitions made once, list parsing, completion.

Options are ``Annotated`` aliases (huggingface_hub's ``TokenOpt`` pattern): a flag means
the same thing, with the same help, in every command that takes it. Single-valued
choices are Enums built from the literals in :mod:`harness.config`, so ``--help`` lists
them and a typo is rejected before anything runs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from harness import constants
from harness.config import AUGMENTS, DECODERS, ENGINES, PRESETS, ROI_PRESETS, TASKS

out = Console()
if not out.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    out = Console(width=200)


def _choices(name: str, values: tuple[str, ...] | list[str]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


TaskChoice = _choices("TaskChoice", TASKS)
RuntimeChoice = _choices("RuntimeChoice", ("auto", "docker", "local", "inprocess"))
DecoderChoice = _choices("DecoderChoice", DECODERS)
PresetChoice = _choices("PresetChoice", (*PRESETS, *ROI_PRESETS))
InferenceChoice = _choices("InferenceChoice", ("resize", "slide"))
AugmentChoice = _choices("AugmentChoice", AUGMENTS)
ExecutorChoice = _choices("ExecutorChoice", ("local", "ray"))
EngineChoice = _choices("EngineChoice", ("auto", *ENGINES))


def log(message: str) -> None:
    """Progress lines from library code: printed as plain text (build output holds brackets rich would parse)."""
    out.print(message, markup=False, highlight=False)


def notify(message: str) -> None:
    """One-off notices of a run (skipped, licence) in yellow."""
    out.print(f"[yellow]{'note' if message.startswith('skipped') else 'licence'}:[/yellow] {escape(message)}")


def split_list(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the comma-separated lists every grid option takes."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def int_list(value: str | None, option: str) -> list[int]:
    """A comma-separated list of integers, or a one-line error naming the option."""
    from harness.errors import ConfigError

    try:
        return [int(v) for v in split_list(value)]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {value!r}", f"e.g. {option} 0,5,11") from None


def value(choice: Enum | None) -> str | None:
    return None if choice is None else str(choice.value)


def _model_names(incomplete: str) -> list[str]:
    from harness.models.spec import list_models

    return [m for m in list_models() if m.startswith(incomplete)]


def _card_names(incomplete: str) -> list[str]:
    from harness.data.cards import list_cards

    return [c for c in list_cards() if c.startswith(incomplete)]


def results_location(results_dir: Path | None) -> Path:
    return (results_dir or constants.RESULTS_DIR) / "rows"


ModelArg = Annotated[str, typer.Argument(help="Model name (see 'pfmbench models').", autocompletion=_model_names)]
ModelsArg = Annotated[Optional[list[str]], typer.Argument(help="Model names (default: all).", autocompletion=_model_names)]
CardArg = Annotated[str, typer.Argument(help="Dataset card (see 'pfmbench data list').", autocompletion=_card_names)]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name (see 'pfmbench models').", autocompletion=_model_names)]
ModelsOpt = Annotated[str, typer.Option("--model", "-m", help="Model name(s), comma-separated (see 'pfmbench models').", autocompletion=_model_names)]
DatasetsOpt = Annotated[str, typer.Option("--dataset", "-d", help="Dataset card(s), comma-separated (see 'pfmbench data list').",
                                          autocompletion=_card_names)]
StrategiesOpt = Annotated[str, typer.Option("--strategy", "-s", help="Adaptation strategy(ies), comma-separated: frozen | lora | dora | cnn_adapter | "
                                            "transformer_adapter | full. All but frozen train through the backbone (docs/strategies.md).")]
WeightsOpt = Annotated[str, typer.Option(help="random (untrained, real architecture) | hub (needs HF_TOKEN for gated models) | <dir or file>.")]
RuntimeOpt = Annotated[RuntimeChoice, typer.Option(help="Where the model runs: auto (docker if a daemon answers, else local) | docker | local | inprocess.")]  # type: ignore[valid-type]
SeedOpt = Annotated[int, typer.Option(help="Seed of decoder init, data order and bootstrap.")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Training epochs (default: the preset's 150, or the card's demo default).", min=1)]
InputSizeOpt = Annotated[Optional[int], typer.Option(help="Square input size in px (default: the card's rule for the model's patch size).", min=1)]
ResultsOpt = Annotated[Optional[Path], typer.Option("--results-dir", help="Results store (default: ./results or $PFMBENCH_RESULTS).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where datasets live (default: ~/.cache/pfmbench/data or $PFMBENCH_DATA).")]
StartupTimeoutOpt = Annotated[float, typer.Option(help="Seconds a model server may take to become healthy (a large model on a CPU loads slowly). "
                                                          "Default: $PFMBENCH_STARTUP_TIMEOUT, else 180.", min=1)]
RequestTimeoutOpt = Annotated[float, typer.Option(help="Seconds one inference request may take before it is retried "
                                                          "($PFMBENCH_REQUEST_RETRIES times, backoff 1, 2, 4 s). Default: $PFMBENCH_REQUEST_TIMEOUT, else 300.", min=1)]
DeviceOpt = Annotated[str, typer.Option(help="Where models and decoders compute: auto (CUDA when there is a GPU, else CPU) | cpu | cuda | cuda:N. "
                                              "Servers and training jobs get that GPU alone. CUDA where there is none is an error, never a CPU run. "
                                              "Default: $PFMBENCH_DEVICE, else auto.")]
EngineOpt = Annotated[EngineChoice, typer.Option(help="What runs the backbone's forward in a frozen extraction: auto (compile on a GPU where "  # type: ignore[valid-type]
                                                     "make gpu-check measured it 5% faster than eager for that model, else torch; the default) | torch (eager, the reference) | "
                                                     "compile (torch.compile; CUDA graphs on a GPU) | onnx (onnxruntime on the ONNX export; TensorRT/CUDA "
                                                     "on a GPU with make setup-gpu). Not torch: a run key and feature-cache entries of its own.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]
OutJsonOpt = Annotated[Path, typer.Option("--out", help="Where to write the JSON results.")]
