"""Every error pfmbench raises on purpose, each carrying the data a fix needs.

The CLI turns any :class:`PfmbenchError` into one line, ``error: <what> (fix: <how>)``,
and a non-zero exit; ``PFMBENCH_DEBUG=1`` shows the traceback instead. Library code
raises these and never prints, so Python callers get the same information as fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class PfmbenchError(Exception):
    """Base class: a message saying what went wrong and a ``fix`` saying what to do."""

    exit_code = 1

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        text = f"{self.message} (fix: {self.fix})" if self.fix else self.message
        return " ".join(text.split())


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters: how a failure is recorded where a run goes on (a sweep attempt, a perf cell)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:limit]


def first_problem(exc: ValidationError) -> str:
    """One line from a pydantic ValidationError: where, what, and how many problems in all."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "value"
    return f"{loc}: {first['msg']} ({len(exc.errors())} problem(s))"


def option_problem(exc: ValidationError) -> str:
    """Every problem of a config built from CLI options, named as the option: ``--input-size: ... (got 0)``."""
    problems = []
    for err in exc.errors():
        option = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "value"
        problems.append(f"{option}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


def _close(name: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean '{matches[0]}'? " if matches else ""


class UnknownNameError(PfmbenchError):
    """A name that is not in its registry: says which names are, the closest one, and how to add it."""

    kind, kinds, file = "", "", ""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"unknown {self.kind} '{name}'; known {self.kinds}: {', '.join(known)}",
                         f"{_close(name, known)}pick one of those, or add {self.file.format(name=name)}")


class UnknownModelError(UnknownNameError):
    kind, kinds, file = "model", "models", "models/{name}/Dockerfile"


class UnknownDatasetError(UnknownNameError):
    kind, kinds, file = "dataset card", "cards", "dataset_cards/{name}.yaml"


class SpecError(PfmbenchError):
    """A Dockerfile whose LABELs do not form a valid model spec."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"{path}: invalid model spec: {detail}", "correct the org.pfmbench.* LABELs in that Dockerfile")


class CardError(PfmbenchError):
    """A dataset card that does not validate."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"{path}: invalid dataset card: {detail}", "correct the card (see dataset_cards/README.md)")


class DataError(PfmbenchError):
    """The files on disk do not match what the card promises."""

    def __init__(self, message: str, fix: str = "check the download against the card, then rerun 'pfmbench data prepare'") -> None:
        super().__init__(message, fix)


class WeightsError(PfmbenchError):
    """Weights cannot be found, read, or do not fit the architecture."""


class HubUnavailableError(WeightsError):
    def __init__(self, model: str, repo: str, detail: str) -> None:
        self.model, self.repo = model, repo
        super().__init__(
            f"cannot fetch weights of '{model}' from {repo}: {detail}",
            "use WEIGHTS=random for an untrained run, or WEIGHTS=<dir> with the weights downloaded to a local directory",
        )


class GatedWeightsError(WeightsError):
    def __init__(self, model: str, repo: str) -> None:
        self.model, self.repo = model, repo
        super().__init__(
            f"'{model}' is gated on {repo} and no hub token is set",
            "accept the terms on the model page, then export HF_TOKEN=<token> (or use WEIGHTS=random / WEIGHTS=<dir>)",
        )


class ServerError(PfmbenchError):
    """The model server did not start, did not become healthy, or failed a request."""


class ServerDiedError(ServerError):
    def __init__(self, model: str, returncode: int | None, log_tail: str, where_logs: str) -> None:
        self.model, self.returncode, self.log_tail = model, returncode, log_tail
        how = f"signal {-returncode}" if returncode is not None and returncode < 0 else f"exit code {returncode}"
        last = log_tail.strip().splitlines()[-1] if log_tail.strip() else "no output"
        super().__init__(
            f"the model server for '{model}' stopped ({how}) while the run needed it; last log line: {last}",
            f"see {where_logs}; rerun the command, and if it recurs, run with RUNTIME=inprocess to see the model's own error",
        )


class RuntimeUnavailableError(PfmbenchError):
    """The requested runtime cannot run here (e.g. no Docker daemon)."""


class DeviceError(PfmbenchError):
    """A device asked for (``--device cuda``) that this machine does not have."""


class ConfigError(PfmbenchError):
    """An option value that cannot work (bad block index, epochs < 1, ...)."""


class ResultsError(PfmbenchError):
    """The results store cannot be read or written."""


class CacheError(PfmbenchError):
    """The feature cache cannot be written (a full disk, no permission)."""


class PackageError(PfmbenchError):
    """A model's builder needs a package version that is not installed."""

    def __init__(self, model: str, package: str, wanted: str, found: str | None) -> None:
        self.model, self.package, self.wanted, self.found = model, package, wanted, found
        have = f"{package} {found} is installed" if found else f"{package} is not installed"
        super().__init__(
            f"model '{model}' pins {package}=={wanted}, but {have}",
            "run 'make setup' (it installs requirements.lock), or use the model's image (RUNTIME=docker)",
        )


class ImageError(PfmbenchError):
    """A model image cannot be built, found, pushed or pulled."""


class TrainJobError(PfmbenchError):
    """A training job (``pfmbench train``, in the model's image or a local process) failed."""

    def __init__(self, where: str, returncode: int | None, tail: str) -> None:
        last = tail.strip().splitlines()[-1].removeprefix("error: ") if tail.strip() else "no output"
        super().__init__(f"training job ({where}) exited with status {returncode}: {last}",
                         "read the job log above; the same command resumes from the last checkpoint")
        self.where, self.returncode, self.tail = where, returncode, tail


class TokenCountError(ValueError):
    """A token sequence longer or shorter than the spec's prefix plus the patch grid: ``prefix-tokens`` is wrong (``models check`` reads ``found``)."""

    def __init__(self, found: int, prefix: int, h: int, w: int) -> None:
        self.found, self.prefix, self.h, self.w = found, prefix, h, w
        super().__init__(f"token sequence has {found} tokens; expected {prefix} prefix + {h}x{w} patches")
