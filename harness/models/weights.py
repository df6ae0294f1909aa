"""Where a model's weights come from: ``random``, ``hub`` or a local directory/file.

Weights are resolved on the host *before* a runtime starts: a hub download happens
here, with the user's token, and the runtime only ever sees a local read-only file.
So the token never reaches a container, a layer, a label or a log, and every row can
record the exact sha256 of the weights it used (or ``random`` and its init seed).
"""

from __future__ import annotations

import os

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from harness import constants
from harness.errors import GatedWeightsError, HubUnavailableError, WeightsError
from harness.util.hashing import sha256_file
from harness.models.spec import ModelSpec

WeightsKind = Literal["random", "hub", "dir"]

_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
#: Prefixes that checkpoints commonly wrap a backbone's keys in.
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "vit.", "trunk.")


@dataclass(frozen=True)
class ResolvedWeights:
    """A concrete weights choice: a verified local file, or a seeded random init."""

    kind: WeightsKind
    path: Path | None = None
    sha256: str | None = None
    init_seed: int = 0

    @classmethod
    def random(cls, init_seed: int = 0) -> "ResolvedWeights":
        return cls(kind="random", init_seed=init_seed)

    @property
    def label(self) -> str:
        """What a result row records: ``random`` or ``sha256:<hex>``."""
        return "random" if self.kind == "random" else f"sha256:{self.sha256}"

    @property
    def identity(self) -> str:
        """What features computed with these weights depend on: ``random:<init seed>`` or ``sha256:<hex>`` (feature-cache keys)."""
        return f"random:{self.init_seed}" if self.kind == "random" else self.label

    def to_arg(self) -> str:
        """How to pass these weights to a server process (``random`` or a file path)."""
        return "random" if self.path is None else str(self.path)


def _pick_file(directory: Path, spec: ModelSpec) -> Path:
    named = directory / spec.weights_file
    if named.is_file():
        return named
    candidates = sorted(p for p in directory.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise WeightsError(
            f"no weights file in {directory} (looked for {spec.weights_file} or one *{'/*'.join(_SUFFIXES)})",
            f"put the checkpoint of '{spec.name}' in that directory, or use WEIGHTS=random",
        )
    raise WeightsError(
        f"{directory} holds several checkpoints ({', '.join(p.name for p in candidates)}) and none is named {spec.weights_file}",
        "pass the file itself as WEIGHTS=<file>",
    )


def _verify(path: Path, spec: ModelSpec) -> str:
    digest = sha256_file(path)
    if spec.weights_sha256 and digest != spec.weights_sha256:
        raise WeightsError(
            f"{path} has sha256 {digest[:12]}..., but {spec.name}'s spec expects {spec.weights_sha256[:12]}...",
            "download the weights again (the file is corrupt or a different release)",
        )
    return digest


HUB_PROBE_TIMEOUT_S = 3.0


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, from one TCP connection to its host; None if it can (or a proxy decides).

    Without this, a machine with no network spends about half a minute in
    huggingface_hub's retries before saying so.
    """
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants as hub

    if hub.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy, not a direct connection, decides
    url = urlsplit(hub.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host}:{port} unreachable ({exc.strerror or type(exc).__name__}: no network, or a firewall)"
    return None


def _from_hub(spec: ModelSpec) -> Path:
    repo = spec.hub_repo
    if repo is None:
        local = constants.WEIGHTS_DIR / spec.name
        if spec.source.startswith("local:") and local.is_dir():  # a model made here (pfmbench distill export)
            return _pick_file(local, spec)
        raise WeightsError(f"'{spec.name}' has no hub source ({spec.source})", f"put its weights in {local}/, or use WEIGHTS=<dir> or WEIGHTS=random")
    token = constants.hub_token()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        # local_files_only is tried first so a populated cache never touches the network.
        return Path(hf_hub_download(repo, spec.weights_file, token=token, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if spec.gated and token is None:
        raise GatedWeightsError(spec.name, f"hf:{repo}")
    if (unreachable := _hub_unreachable()) is not None:  # fail in seconds, not after a minute of retries
        raise HubUnavailableError(spec.name, f"hf:{repo}", unreachable)
    try:
        return Path(hf_hub_download(repo, spec.weights_file, token=token))
    except GatedRepoError as exc:
        raise GatedWeightsError(spec.name, f"hf:{repo}") from exc
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as exc:
        # Only the exception's type: its text may carry request headers, and so the token.
        raise HubUnavailableError(spec.name, f"hf:{repo}", f"{type(exc).__name__} (no network or no access)") from exc


def resolve_weights(spec: ModelSpec, weights: str = "random", init_seed: int = 0) -> ResolvedWeights:
    """Resolve ``random`` | ``hub`` | ``<dir or file>`` to a verified :class:`ResolvedWeights`."""
    if weights == "random":
        return ResolvedWeights.random(init_seed)
    if weights == "hub":
        path = _from_hub(spec)
        return ResolvedWeights(kind="hub", path=path, sha256=_verify(path, spec))
    target = Path(weights).expanduser()
    if not target.exists():
        raise WeightsError(
            f"weights path {target} does not exist",
            "use WEIGHTS=random, WEIGHTS=hub, or WEIGHTS=<dir> pointing at a downloaded checkpoint",
        )
    path = _pick_file(target, spec) if target.is_dir() else target
    return ResolvedWeights(kind="dir", path=path.resolve(), sha256=_verify(path, spec))


def cached_weights(spec: ModelSpec) -> Path | None:
    """The checkpoint already on this machine, if any: ``$PFMBENCH_WEIGHTS/<name>/`` or the hub cache.

    Looks only; never downloads. ``pfmbench models`` shows it as "weights cached".
    """
    local = constants.WEIGHTS_DIR / spec.name
    if local.is_dir():
        try:
            return _pick_file(local, spec)
        except WeightsError:
            pass
    if spec.hub_repo:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec.hub_repo, spec.weights_file)
        if isinstance(hit, str):
            return Path(hit)
    return None


def licence_notice(spec: ModelSpec, weights: ResolvedWeights) -> str | None:
    """The licence line to show the first time real weights of ``spec`` are used here, else None.

    Most PFM licences are non-commercial; a user should see the terms once, not on
    every run. "Seen" is a marker file under ``$PFMBENCH_CACHE/licences/``.
    """
    if weights.kind == "random":
        return None
    marker = constants.CACHE_DIR / "licences" / spec.name
    if marker.exists():
        return None
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{spec.license}\n")
    gated = ", gated: you accepted its terms on the hub" if spec.gated else ""
    return f"{spec.display_name} weights are licensed {spec.license} ({spec.source}{gated}); check that your use is allowed"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch checkpoint (tensors only, no pickled code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc}", "check that the file is a complete safetensors/torch checkpoint") from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not contain a state dict", "export the model's state_dict()")
    return obj


def _map_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes until the keys match the architecture's own names."""
    for _ in range(3):
        if set(state) & expected:
            break
        prefixes = [p for p in _STRIP_PREFIXES if all(k.startswith(p) for k in state)]
        if not prefixes:
            break
        state = {k[len(prefixes[0]):]: v for k, v in state.items()}
    return state


def apply_key_map(state: dict[str, torch.Tensor], key_map: tuple[tuple[str, str | None], ...]) -> dict[str, torch.Tensor]:
    """Rewrite checkpoint keys with the spec's ``key-map`` rules, in order.

    Each rule is ``[regex, replacement]``: keys that match are rewritten with
    ``re.sub``; a ``null`` replacement drops them. This is how a Dockerfile states how
    its model's released checkpoint maps onto the architecture (CONCH keeps
    ``visual.trunk.*``, GPFM's training dict flattens ``blocks.<chunk>.<i>``...).
    """
    for pattern, replacement in key_map:
        rx = re.compile(pattern)
        if replacement is None:
            state = {k: v for k, v in state.items() if not rx.search(k)}
        else:
            state = {rx.sub(replacement, k): v for k, v in state.items()}
    return state


def load_into(
    module: torch.nn.Module,
    path: Path,
    spec: ModelSpec,
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Load ``path`` into ``module`` strictly, with the model's own key names mapped.

    Keys go through, in order: wrapper prefixes (``module.``...) stripped, the spec's
    ``key-map`` rules, then ``rename``, the builder family's mapping from checkpoint
    names to this library version's names.
    """
    expected = set(module.state_dict())
    state = apply_key_map(_map_keys(read_state_dict(path), expected), spec.key_map)
    if rename is not None:
        state = rename(state)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(("head.", "pooler."))}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit '{spec.name}': {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            f"check that the checkpoint is {spec.display_name} ({spec.source})",
        )
    module.load_state_dict(state, strict=True)
