"""A real Triton server (PyTriton, local runtime): parity with in-process, transfer paths, failures."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from harness import constants
from harness.errors import ServerDiedError, ServerError
from harness.models.spec import get_spec
from harness.models.weights import ResolvedWeights
from harness.runtime import InProcessRuntime, LocalRuntime
from harness.util.procgroup import mapped_files

from conftest import server_processes

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)


def _shm_regions() -> list[str]:
    return [p.name for p in Path("/dev/shm").glob(f"pfm_{os.getpid()}_*")]


@pytest.fixture(scope="module")
def phikon_reference():
    with InProcessRuntime(get_spec("phikon"), ResolvedWeights.random()) as rt:
        return {blocks: rt.infer(IMAGES, blocks) for blocks in [(11,), (4, 11)]}


@pytest.mark.parametrize("transfer", ["shm", pytest.param("grpc", marks=pytest.mark.slow), pytest.param("http", marks=pytest.mark.slow)])
def test_served_features_equal_inprocess(transfer, phikon_reference, no_leftover_servers):
    with LocalRuntime(get_spec("phikon"), ResolvedWeights.random(), transfer=transfer) as rt:
        for blocks, (ref_tokens, ref_cls) in phikon_reference.items():
            tokens, cls = rt.infer(IMAGES, blocks)
            assert tokens.shape == (5, len(blocks), 14, 14, 768) and tokens.dtype == np.float16
            assert np.abs(tokens.astype(np.float32) - ref_tokens.astype(np.float32)).max() <= 1e-3
            assert np.abs(cls.astype(np.float32) - ref_cls.astype(np.float32)).max() <= 1e-3
        tokens, _ = rt.infer(IMAGES[:2, :160, :96], (11,))  # non-square, smaller than native
        assert tokens.shape == (2, 1, 10, 6, 768)
        assert rt.transfer == transfer
        assert rt.health()
        assert rt.client.server_id() == "pfmbench/phikon/manifest=none"  # what it says of itself: no image manifest here
    assert _shm_regions() == []


def test_a_server_normalises_as_its_spec_says_when_a_preset_changes_it(phikon_reference, no_leftover_servers):
    """densebench normalises MUSK with ImageNet statistics; the server is told by --mean/--std (phikon stands in: it is smaller)."""
    from harness.config import IMAGENET_MEAN_STD
    from harness.models.spec import spec_for_preset
    from harness.runtime.served import normalisation_args

    musk = get_spec("musk")
    dense, corrected = spec_for_preset(musk, "densebench"), spec_for_preset(musk, "corrected")
    assert (dense.mean, dense.std) == IMAGENET_MEAN_STD and corrected == musk and dense.spec_hash() != musk.spec_hash()
    assert normalisation_args(dense) == ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"] and normalisation_args(musk) == []
    phikon = get_spec("phikon")
    other = phikon.model_copy(update={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    with InProcessRuntime(other, ResolvedWeights.random()) as rt:
        want, _ = rt.infer(IMAGES, (11,))
    with LocalRuntime(other, ResolvedWeights.random()) as rt:
        got, _ = rt.infer(IMAGES, (11,))
    assert np.abs(got.astype(np.float32) - want.astype(np.float32)).max() <= 1e-3
    assert np.abs(got.astype(np.float32) - phikon_reference[(11,)][0].astype(np.float32)).max() > 0.1  # not the label's normalisation


def test_requests_in_flight_together_give_exactly_the_features_of_one_at_a_time(no_leftover_servers):
    from harness.run.segmentation import iter_features

    images = RNG.integers(0, 256, (11, 224, 224, 3), dtype=np.uint8)  # a request takes long enough (~0.1 s) for the next ones to start meanwhile
    with LocalRuntime(get_spec("phikon"), ResolvedWeights.random(), in_flight=1) as rt:
        one_at_a_time = list(iter_features(rt, images, (11,), batch=2))
        assert rt.connections == 1
        rt.in_flight = 3
        seen: list[int] = []
        pipelined = list(iter_features(rt, images, (11,), batch=2, on_batch=seen.append))
        assert rt.connections == 3  # three requests were in flight at once, each on its own client and regions
        assert rt.transfer == "shm"
    assert seen == [2, 2, 2, 2, 2, 1]  # delivered in order
    assert len(pipelined) == len(one_at_a_time) == 6
    for a, b in zip(pipelined, one_at_a_time):
        assert np.array_equal(a, b)  # exactly: the server computes each request as sent, whatever else is in flight
    assert _shm_regions() == []


@pytest.mark.slow
def test_uni_timm_served_equals_inprocess(no_leftover_servers):
    spec = get_spec("uni")
    imgs = IMAGES[:2]
    with InProcessRuntime(spec, ResolvedWeights.random()) as rt:
        ref, _ = rt.infer(imgs, (23,))
    with LocalRuntime(spec, ResolvedWeights.random()) as rt:
        tokens, _ = rt.infer(imgs, (23,))
        assert rt.transfer == "shm"
    assert np.abs(tokens.astype(np.float32) - ref.astype(np.float32)).max() <= 1e-3


def test_a_request_that_times_out_is_sent_again_and_gives_the_same_features(phikon_reference, no_leftover_servers):
    """The server frozen (SIGSTOP) past the request deadline: the client retries, the retry thaws it, the answer is right."""
    with LocalRuntime(get_spec("phikon"), ResolvedWeights.random()) as rt:
        rt.infer(IMAGES, (11,))  # regions registered at full size, model warm: only the request itself can time out
        client, group = rt.client, rt.proc.pid
        retries = []

        def thaw(n: int, exc: Exception) -> None:
            retries.append(str(exc))
            client.timeout_s = 300.0
            os.killpg(group, signal.SIGCONT)

        client.timeout_s, client.on_retry = 1.0, thaw
        os.killpg(group, signal.SIGSTOP)
        try:
            tokens, cls = rt.infer(IMAGES, (11,))
        finally:
            os.killpg(group, signal.SIGCONT)
        assert len(retries) == 1 and "Deadline" in retries[0], retries
        ref_tokens, ref_cls = phikon_reference[(11,)]
        assert np.abs(tokens.astype(np.float32) - ref_tokens.astype(np.float32)).max() <= 1e-3
        assert np.abs(cls.astype(np.float32) - ref_cls.astype(np.float32)).max() <= 1e-3


def test_killed_server_gives_a_clear_error_and_no_orphans(no_leftover_servers):
    rt = LocalRuntime(get_spec("phikon"), ResolvedWeights.random())
    with pytest.raises(ServerDiedError) as exc:
        with rt:
            rt.infer(IMAGES[:1], (11,))
            group = rt.proc.pid
            os.kill(rt.proc.pid, signal.SIGKILL)
            rt.infer(IMAGES[:1], (11,))
    assert "stopped (signal 9)" in exc.value.one_line()
    # the failed server's log is kept where the error says, under the logs dir (not a temp dir that piles up)
    assert f"see the full log at {rt.log_path}" in exc.value.one_line()
    assert rt.log_path.parent == constants.LOGS_DIR and "serving phikon" in rt.log_path.read_text()
    assert rt.proc is None
    assert not [p for p in server_processes() if p[1] == group]
    assert _shm_regions() == []


def _mapped_shm(pids: list[int]) -> set[Path]:
    """``/dev/shm`` files these processes have mapped, but a client's ``pfm_`` regions: what the server's side created."""
    return {path for pid in pids for path in mapped_files(pid, Path("/dev/shm")) if not path.name.startswith("pfm_")}


@pytest.mark.parametrize("how, exit_code", [("interrupt", 128 + signal.SIGUSR1), pytest.param("stop", 0, marks=pytest.mark.slow)])
def test_a_stopped_or_interrupted_server_leaves_no_process_and_none_of_its_shared_memory(how, exit_code, no_leftover_servers):
    """``stop`` drains Triton; ``interrupt`` (Ctrl-C) has the server reap its group at once: both leave nothing."""
    rt = LocalRuntime(get_spec("phikon"), ResolvedWeights.random())
    with rt:
        rt.infer(IMAGES[:2], (11,))  # PyTriton's tensor store creates its regions on the first request
        proc = rt.proc
        regions = _mapped_shm([p[0] for p in server_processes() if p[1] == proc.pid])
        assert any(r.name.startswith("psm_") for r in regions), regions
        getattr(rt, how)()
    assert proc.returncode == exit_code  # 138: the server's watchdog reaped it (STOP_NOW), not Triton's clean shutdown
    assert not rt.log_path.exists()  # a server stopped on purpose leaves no log behind
    assert not [p for p in server_processes() if p[1] == proc.pid]
    assert [r for r in regions if r.exists()] == []
    assert _shm_regions() == []


def test_server_that_cannot_start_reports_its_log(tmp_path, no_leftover_servers):
    bad = ResolvedWeights(kind="dir", path=tmp_path / "missing.safetensors", sha256="0" * 64)
    rt = LocalRuntime(get_spec("phikon"), bad, startup_timeout_s=120)
    with pytest.raises(ServerError, match="exited with code 1 while starting; log tail: .*does not exist"):
        with rt:
            pass
    assert rt.proc is None
