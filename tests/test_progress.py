"""Progress off a terminal: plain timestamped lines per stage (start, a steady heartbeat, done), never a truncated live bar."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading

from harness.util.progress import PlainProgress

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| ")


class _Lines(io.StringIO):
    """A stream that says when a line arrives (so the test waits on the event, not on a sleep)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Condition()

    def write(self, text: str) -> int:
        with self.arrived:
            n = super().write(text)
            self.arrived.notify_all()
        return n

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[str]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.getvalue().splitlines()) >= count, timeout_s), self.getvalue()
        return self.getvalue().splitlines()


def test_a_stage_prints_its_start_a_heartbeat_while_nothing_moves_and_its_end():
    out = _Lines()
    with PlainProgress(out, interval_s=0.2) as progress:
        task = progress.add_task("train transunet decoder", total=4, info="")
        first, beat = out.wait_for(2)  # no step finished, yet a line came: a long epoch is not silence
        assert first.endswith("train transunet decoder | 0/4 (0%) | elapsed 0:00:00 | started") and LINE.match(first)
        assert "0/4 (0%)" in beat and "started" not in beat
        progress.update(task, advance=3, info="loss 0.5")
        progress.update(task, advance=1, info="loss 0.4")
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines)
    last = lines[-1]
    assert "4/4 (100%)" in last and "/s" in last and last.endswith("loss 0.4 | done") and "ETA" not in last
    assert sum("done" in line for line in lines) == 1  # nothing more after the end


def test_an_open_stage_says_stopped_when_the_work_is_interrupted():
    out = _Lines()
    try:
        with PlainProgress(out, interval_s=60) as progress:
            task = progress.add_task("features phikon (local)", total=10, info="96px")
            progress.update(task, advance=4)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    last = out.getvalue().splitlines()[-1]
    assert "4/10 (40%)" in last and "ETA" in last and last.endswith("96px | stopped")


def test_a_bench_logged_to_a_file_shows_every_stage_as_lines(tmp_path):
    env = {**os.environ, "PFMBENCH_PROGRESS_INTERVAL": "0"}
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "-m", "phikon", "-d", "nuclei-sample", "--runtime", "inprocess",
                          "--epochs", "2", "--input-size", "64", "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if LINE.match(line)]
    # val + test (11 images) to the cache; the augmented training batches go through the model during the epochs
    assert any("features phikon (inprocess" in line and "11/11 (100%)" in line and line.endswith("done") for line in lines), res.stderr
    assert any("train transunet decoder (augment densebench: features through inprocess each epoch) | 2/2 (100%)" in line and "val mIoU" in line
               for line in lines), res.stderr
    assert "━" not in res.stderr  # no bar drawn into the log
