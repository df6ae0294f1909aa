"""GPFM's unified distillation: loss terms by hand, crops, served teachers, kill and resume, export into the zoo."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from waiting import wait_until

from harness import constants
from harness.distill.config import DistillConfig
from harness.distill.crops import make_batch
from harness.distill.losses import DinoHead, ExpertHead, cls_cosine_loss, dino_loss, ibot_loss, koleo_loss, patch_feature_loss, resize_grid
from harness.distill.trainer import LOSSES, distill
from harness.models.spec import get_spec, list_models, parse_dockerfile, render_dockerfile

from conftest import server_processes

# --- loss terms -------------------------------------------------------------------------

def test_cls_loss_is_one_minus_mean_cosine():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert float(cls_cosine_loss(s, t)) == pytest.approx(1 - (math.sqrt(0.5) + 1.0) / 2)


def test_patch_loss_mixes_cosine_and_smooth_l1():
    s = torch.tensor([[[1.0, 0.0]]])
    t = torch.tensor([[[0.0, 3.0]]])
    # cosine 0 -> 1 - 0 = 1; SmoothL1 (beta 1): |1| -> 0.5, |3| -> 2.5, mean 1.5
    assert float(patch_feature_loss(s, t)) == pytest.approx(0.9 * 1.0 + 0.1 * 1.5)
    assert float(patch_feature_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_grid_is_resized_bicubically_to_the_student_grid():
    teacher = torch.randn(2, 14, 14, 8)
    out = resize_grid(teacher, (16, 16))
    assert out.shape == (2, 256, 8)
    assert torch.equal(resize_grid(teacher, (14, 14)), teacher.reshape(2, 196, 8))
    flat = torch.ones(1, 14, 14, 3) * 2.5
    assert torch.allclose(resize_grid(flat, (16, 16)), torch.full((1, 256, 3), 2.5))


def test_dino_loss_skips_a_crop_against_its_own_view():
    uniform = torch.full((1, 4), 0.25)
    logits = [torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4)]
    assert float(dino_loss(logits, [uniform, uniform], 0.1)) == pytest.approx(math.log(4))  # cross-entropy of uniform vs uniform
    sharp = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    student = [torch.tensor([[10.0, 0, 0, 0]]), torch.zeros(1, 4)]
    # teacher 0 is compared with student view 1 only (uniform: log 4), teacher 1 with view 0 (near 0)
    assert float(dino_loss(student, [sharp, sharp], 1.0)) == pytest.approx((math.log(4) + (-torch.log_softmax(student[0], -1)[0, 0]).item()) / 2)


def test_ibot_loss_averages_over_masked_patches_per_image():
    logits = torch.zeros(2, 3, 4)
    probs = torch.full((2, 3, 4), 0.25)
    masks = torch.tensor([[True, False, False], [False, False, False]])
    assert float(ibot_loss(logits, probs, masks, 0.1)) == pytest.approx(math.log(4))
    assert float(ibot_loss(logits, probs, torch.zeros(2, 3, dtype=torch.bool), 0.1)) == 0.0


def test_koleo_rewards_spread():
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # nearest neighbour at distance sqrt(2)
    assert float(koleo_loss(square)) == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    bunched = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert float(koleo_loss(bunched)) > float(koleo_loss(square))


def test_heads_normalise_before_the_weight_normed_layer():
    head = ExpertHead(8, 5, bottleneck=4)
    x = torch.randn(3, 8)
    z = torch.nn.functional.normalize(head.proj(x), dim=-1)
    assert torch.allclose(head.last(z), head(x)) and torch.allclose(z.norm(dim=-1), torch.ones(3))
    dino = DinoHead(8, 16, 12, 4)
    g = dino.last_layer.parametrizations.weight.original0
    assert torch.all(g == 1.0) and not g.requires_grad


# --- crops and config -------------------------------------------------------------------

def test_crops_and_masks_depend_on_the_step_only():
    cfg = DistillConfig.from_preset("tiny", batch_size=3)
    images = [np.random.default_rng(i).integers(0, 255, (250, 250, 3), dtype=np.uint8) for i in range(5)]
    a, b, c = make_batch(cfg, images, 7), make_batch(cfg, images, 7), make_batch(cfg, images, 8)
    assert np.array_equal(a.global_crops, b.global_crops) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.global_crops, c.global_crops)
    assert a.global_crops.shape == (6, 224, 224, 3) and a.local_crops.shape == (6, 98, 98, 3) and a.masks.shape == (6, 256)
    fixed = make_batch(cfg, images, 7, fixed_globals=True)
    assert np.array_equal(fixed.global_crops[3:], fixed.global_crops[:3, :, ::-1])  # view 1 is view 0 mirrored


def test_the_gpfm_preset_is_the_papers_recipe():
    cfg = DistillConfig.from_preset("gpfm")
    assert (cfg.embed_dim, cfg.depth, cfg.patch_size, cfg.global_size) == (1024, 24, 14, 224)
    assert cfg.cls_weights == {"uni": 1.0, "phikon": 0.5, "conch": 1.0} and cfg.patch_weights["uni"] == 0.25
    assert (cfg.dino_weight, cfg.ibot_weight, cfg.koleo_weight, cfg.prototypes) == (1.0, 1.0, 0.1, 65536)
    assert cfg.lr == pytest.approx(4e-4 * math.sqrt(96 / 1024))
    assert cfg.student_spec().grid(224, 224) == (16, 16)
    with pytest.raises(ValueError, match="no weight for teacher"):
        DistillConfig(**{**cfg.model_dump(), "cls_weights": {"uni": 1.0}})


def test_every_zoo_dockerfile_round_trips_through_render(tmp_path):
    for name in list_models():
        spec = get_spec(name)
        path = tmp_path / name / "Dockerfile"
        path.parent.mkdir()
        path.write_text(render_dockerfile(spec, "generated"))
        assert parse_dockerfile(path) == spec, name


# --- a real run -------------------------------------------------------------------------

@pytest.mark.slow
def test_expert_terms_fall_with_the_teacher_cache(tmp_path):
    cfg = DistillConfig.from_preset("tiny", steps=40, batch_size=2, max_images=4, teacher_cache=True, runtime="inprocess", teacher_temp_warmup_steps=5,
                                    checkpoint_every=100)
    result = distill(cfg, tmp_path / "run")
    assert result.times["teacher_wait_s"] < result.times["student_s"]  # features were computed once, up front
    for name in ("phikon", "uni"):
        for term in ("cls", "patch"):
            key = f"{name}.{term}"
            assert result.last[key] < result.first[key] - 0.01, (key, result.first[key], result.last[key])
    assert (tmp_path / "run" / "student.pt").is_file()


def _kill_after_a_checkpoint(cmd: list[str], run: Path, env: dict[str, str] | None = None) -> Path:
    """Start ``distill run``, SIGKILL it once a checkpoint and four logged steps exist; returns the loss log's path."""
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    log = run / LOSSES

    def checkpointed() -> bool:
        assert first.poll() is None, first.communicate()
        return (run / "checkpoint.pt").exists() and log.exists() and len(log.read_text().splitlines()) >= 4

    wait_until(checkpointed, 300, "a checkpoint and four logged steps")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    return log


@pytest.mark.slow
def test_teacher_features_live_in_the_feature_cache_and_a_killed_run_resumes_without_recomputing_them(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", "distill", "run", "--out", str(run), "--steps", "8", "--batch-size", "2", "--max-images", "4",
           "--checkpoint-every", "3", "--runtime", "inprocess", "--teacher-cache", "--no-progress"]
    log = _kill_after_a_checkpoint(cmd, run)
    entries = sorted(p.name for p in Path(os.environ["PFMBENCH_FEATURES"]).iterdir() if not p.name.startswith("."))
    assert len(entries) == 4  # CLS and grid of each of the two teachers, written before the first step

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed from the checkpoint at step 3" in done.stdout
    assert "teacher features of the fixed views: phikon, uni from the feature cache" in done.stdout, done.stdout
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 9))  # the loss curve continues: no step lost or doubled
    assert sorted(p.name for p in Path(os.environ["PFMBENCH_FEATURES"]).iterdir() if not p.name.startswith(".")) == entries


@pytest.mark.slow
def test_served_teachers_kill_resume_export_and_bench(tmp_path, no_leftover_servers):
    before = {p[0] for p in server_processes()}
    models = tmp_path / "models"
    shutil.copytree(constants.MODELS_DIR, models)
    env = {**os.environ, "PFMBENCH_MODELS_DIR": str(models), "PFMBENCH_WEIGHTS": str(tmp_path / "weights")}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", "distill", "run", "--out", str(run), "--steps", "8", "--batch-size", "2", "--max-images", "4",
           "--checkpoint-every", "3", "--runtime", "local", "--no-progress"]
    log = _kill_after_a_checkpoint(cmd, run, env)
    # the teachers' servers die with their parent (PDEATHSIG)
    wait_until(lambda: not [p for p in server_processes() if p[0] not in before], 20, "the teachers' servers to die with the killed run")

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed from the checkpoint at step" in done.stdout
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 9))  # steps after the checkpoint were redone once, none lost or doubled
    assert "waiting for crops and teachers" in done.stdout and "phikon:shm,uni:shm" in done.stdout

    exported = subprocess.run([sys.executable, "-m", "harness", "distill", "export", str(run), "--name", "tiny_student"],
                              env=env, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    spec = parse_dockerfile(models / "tiny_student" / "Dockerfile")
    assert spec.builder == "timm" and spec.embed_dim == 192 and spec.depth == 4 and spec.weights_sha256
    listed = subprocess.run([sys.executable, "-m", "harness", "models"], env=env, capture_output=True, text=True, timeout=120)
    assert "tiny_student" in listed.stdout
    again = subprocess.run([sys.executable, "-m", "harness", "distill", "export", str(run), "--name", "tiny_student"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists" in again.stderr

    res = tmp_path / "results"
    bench = subprocess.run([sys.executable, "-m", "harness", "bench", "-m", "tiny_student", "-d", "nuclei-sample", "--weights", "hub",
                            "--decoder", "linear", "--epochs", "1", "--runtime", "local", "--results-dir", str(res), "--no-progress"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    from harness.results.store import read_rows

    (row,) = read_rows(res)
    assert row["model"] == "tiny_student" and row["weights"] == f"sha256:{spec.weights_sha256}" and row["transfer"] == "shm"
