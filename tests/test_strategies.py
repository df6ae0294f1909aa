"""Adaptation strategies: adapters in every block of every model, the reference's LoRA/DoRA maths,
the CNN and Transformer adapters, trainable-parameter counts, and every strategy run end to end."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from waiting import wait_until

from harness.adapt import lora
from harness.adapt.cnn_adapter import CNNAdapter
from harness.adapt.decoders import TransUNetDecoder
from harness.adapt.strategies import STRATEGIES, build_segmenter, trainable_parameters, trainable_state
from harness.models.builders import build_backbone, build_extractor
from harness.models.spec import get_spec, list_models

#: Any linear layer of an attention module, adapted or not.
_ANY_ATTENTION = re.compile(r"^(?P<block>.*\.\d+)\.(?:attn|attention|self_attn)\.")


@pytest.mark.parametrize("name", list_models())
def test_adapters_land_in_every_transformer_block(name):
    spec = get_spec(name)
    with torch.device("meta"):
        backbone = build_backbone(spec)
    attention = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear) and _ANY_ATTENTION.match(n)]
    blocks = list(dict.fromkeys(_ANY_ATTENTION.match(n).group("block") for n in attention))
    expected = lora.expected_adapter_params(backbone, "lora", 16, "densebench")
    targets = lora.inject(backbone, "lora", 16, 1.0, "densebench")
    assert lora.adapted_blocks(targets) == blocks
    depth = {"ctranspath": 2 + 2 + 6 + 2}.get(name, spec.depth)  # Swin-T: blocks over its four stages
    assert len(blocks) == depth
    # every attention linear is adapted, except MUSK's text expert (".B"), which never sees an image token
    skipped = sorted(set(attention) - set(targets))
    assert all(n.endswith(".B") for n in skipped) and (bool(skipped) == (name == "musk")), skipped[:3]
    per_block = len(targets) // depth
    assert len(targets) == per_block * depth and per_block in (2, 4)  # fused qkv+proj, or q, k, v, o
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("name", ["phikon", "uni", "musk", "ctranspath", "conch"])
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_peft_adapters_count(name, kind):
    spec = get_spec(name)
    with torch.device("meta"):
        backbone = build_backbone(spec)
    targets = lora.attention_targets(backbone)
    outs = sum(backbone.get_submodule(t).out_features for t in targets)
    expected = lora.expected_adapter_params(backbone, kind, 8, "peft")
    lora.inject(backbone, kind, 8, 16.0, "peft")
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == expected
    assert expected == sum(8 * (backbone.get_submodule(t).base_layer.in_features + backbone.get_submodule(t).base_layer.out_features)
                           for t in targets) + (outs if kind == "dora" else 0)


def test_reference_lora_is_alpha_scaled_and_reference_dora_has_one_scalar_magnitude():
    torch.manual_seed(0)
    base = nn.Linear(12, 6)
    x = torch.randn(5, 12)
    lo = lora.ReferenceLoRALinear(base, rank=4, alpha=2.0)
    assert lo.lora_A.shape == (12, 4) and lo.lora_B.shape == (4, 6)
    assert torch.allclose(lo(x), base(x))  # B starts at zero
    assert lo.lora_A.abs().max() <= 1 / math.sqrt(4)  # kaiming(a=sqrt5) on [in, r]: fan_in = r
    nn.init.normal_(lo.lora_B)
    assert torch.allclose(lo(x), base(x) + x @ lo.lora_A @ lo.lora_B * 2.0, atol=1e-5)  # scale alpha, not alpha/r

    do = lora.ReferenceLoRALinear(base, rank=4, alpha=2.0, dora=True)
    assert do.magnitude.shape == ()
    assert torch.allclose(do(x), base(x), atol=1e-6)  # m = 1, B = 0: W' = ||W|| W / ||W||
    nn.init.normal_(do.lora_B)
    with torch.no_grad():
        do.magnitude.fill_(0.5)
    merged = base.weight + (do.lora_A @ do.lora_B).t() * 2.0
    want = x @ (0.5 * base.weight.norm() * merged / merged.norm()).t() + base.bias
    assert torch.allclose(do(x), want, atol=1e-5)


def test_peft_lora_is_alpha_over_rank_scaled():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("blocks", nn.ModuleList([nn.Module()]))
    model.blocks[0].attn = nn.Module()
    model.blocks[0].attn.qkv = nn.Linear(8, 24)
    model.blocks[0].attn.proj = nn.Linear(8, 8)
    ref = nn.Linear(8, 24)
    ref.load_state_dict(model.blocks[0].attn.qkv.state_dict())
    lora.inject(model, "lora", 4, 16.0, "peft")
    layer = model.blocks[0].attn.qkv
    nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(3, 8)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.allclose(layer(x), ref(x) + x @ a.t() @ b.t() * (16.0 / 4), atol=1e-5)


@pytest.mark.parametrize("strategy", ["lora", "dora"])
def test_densebench_leaves_the_references_six_unadapted_models_frozen_and_peft_adapts_them(strategy):
    """The reference's LoRA/DoRA wrap timm Attention of listed models only: phikon (HF) gets none there."""
    assert lora.REFERENCE_UNADAPTED == {"phikon", "phikon_v2", "hibou_l", "midnight", "musk", "pathorchestra"}
    assert set(lora.REFERENCE_UNADAPTED) <= set(list_models())
    torch.manual_seed(0)
    ref = build_segmenter(build_extractor(get_spec("phikon")), strategy, "linear", 2, (11,), impl="densebench")
    assert ref.adapted_modules == 0
    assert trainable_parameters(ref) == trainable_parameters(ref.decoder)  # a frozen run through the image path, as published
    peft = build_segmenter(build_extractor(get_spec("phikon")), strategy, "linear", 2, (11,), impl="peft", alpha=16.0)
    assert peft.adapted_modules == 12 * 4  # query, key, value, output.dense in each of 12 blocks
    assert trainable_parameters(peft) > trainable_parameters(peft.decoder)
    uni = build_segmenter(build_extractor(get_spec("uni")), strategy, "linear", 2, (23,), impl="densebench")
    assert uni.adapted_modules == 24 * 2  # timm: fused qkv and proj of each of 24 blocks


@pytest.mark.parametrize("patch,size", [(16, 64), (14, 56), (8, 64), (16, 48)])
def test_cnn_adapter_skips_and_decoder_output(patch, size):
    cnn = CNNAdapter(with_unused_stage=False)
    x = torch.randn(2, 3, size, size)
    skips = cnn(x)
    assert [tuple(s.shape[1:]) for s in skips] == [(512, size // 8, size // 8), (256, size // 4, size // 4), (64, size // 2, size // 2)]
    # as TransUNet and the reference: stage 2 reads stage 1's unpadded map; only the skips are zero-padded
    with torch.no_grad():
        quarter = cnn.stage1(torch.nn.functional.max_pool2d(cnn.root(x), 3, 2))
        eighth = cnn.stage2(quarter)
        assert torch.equal(skips[0][..., :eighth.shape[-2], :eighth.shape[-1]], eighth)
        assert torch.equal(skips[1][..., :quarter.shape[-2], :quarter.shape[-1]], quarter)
    dec = TransUNetDecoder(32, 3, patch, skip_channels=(512, 256, 64))
    out = dec(torch.randn(2, 1, size // patch, size // patch, 32), skips)
    assert out.shape == (2, 3, size, size)
    # the reference's unused third stage, trainable but never run: a projecting unit 512->1024 (mid 256)
    # of 1,512,448 parameters and 8 units 1024->1024 of 1,117,184 each
    extra = sum(p.numel() for p in CNNAdapter(with_unused_stage=True).parameters()) - sum(p.numel() for p in cnn.parameters())
    assert extra == 1_512_448 + 8 * 1_117_184


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval_mode():
    spec = get_spec("phikon")
    seg = build_segmenter(build_extractor(spec), "cnn_adapter", "transunet", 3, (11,))
    seg.train()
    assert not seg.extractor.training and seg.decoder.training
    seg(torch.randn(1, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in seg.extractor.parameters())
    assert all(p.grad is not None for p in seg.decoder.parameters())
    state = trainable_state(seg)
    assert not any(k.startswith("extractor.") for k in state) and any(k.startswith("cnn.") for k in state)


# Trainable parameters the adapters add (independent of the decoder), from the architectures:
# LoRA r=16 on q,k,v,o (phikon, transformers: 12 x 4 x 16 x (768+768)) or fused qkv+proj (uni: 24 x 16 x (4096+2048));
# DoRA (reference) +1 per adapted linear; Transformer adapter 2 x (12 D^2 + 15 D) + 2 D; CNN adapter with its unused stage;
# full = the whole backbone (the published parameter counts).
ADAPTER_PARAMS = {
    # densebench: the reference's LoRA/DoRA wrap no phikon module (HF attention), so they train the decoder only;
    # the corrected preset's peft adapters are counted in test_corrected_preset_uses_peft_and_records_it
    "phikon": {"frozen": 0, "lora": 0, "dora": 0, "cnn_adapter": 11_894_848, "transformer_adapter": 14_180_352, "full": 85_798_656},
    "uni": {"frozen": 0, "lora": 2_359_296, "dora": 2_359_344, "cnn_adapter": 11_894_848, "transformer_adapter": 25_198_592, "full": 303_350_784},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["phikon", "uni"])
def test_every_strategy_runs_on_nuclei_sample_with_the_expected_trainable_parameters(name, tmp_path):
    from harness.results.store import read_rows
    from harness.run.lifecycle import execute
    from harness.run.plan import resolve_config

    for strategy in STRATEGIES:
        cfg, _ = resolve_config("segmentation", name, "nuclei-sample", runtime="inprocess", strategy=strategy, epochs=1, input_size=32, n_bootstrap=50)
        execute(cfg, results_dir=tmp_path)
    rows = {r["strategy"]: r for r in read_rows(tmp_path)}
    assert sorted(rows) == sorted(STRATEGIES)
    spec = get_spec(name)
    decoder = sum(p.numel() for p in TransUNetDecoder(spec.embed_dim, 4, spec.patch_size).parameters())
    skip_decoder = sum(p.numel() for p in TransUNetDecoder(spec.embed_dim, 4, spec.patch_size, skip_channels=(512, 256, 64)).parameters())
    for strategy, row in rows.items():
        head = skip_decoder if strategy == "cnn_adapter" else decoder
        assert row["trainable_params"] == head + ADAPTER_PARAMS[name][strategy], strategy
        assert row["preset"] == "densebench" and row["split_sizes"] == [25, 7, 4] and row["input_size"] == 32
        assert 0 <= row["mIoU"] <= row["mDice"] <= 1 and row["best_epoch"] == 0
        assert (row["step_time_s"] is None) == (strategy == "frozen"), strategy
        assert '"adapter_impl": "densebench"' in row["config_json"]
        if strategy in ("lora", "dora"):  # uni: fused qkv and proj in each of 24 blocks; phikon: none, as the reference
            assert row["adapted_modules"] == {"phikon": 0, "uni": 48}[name], strategy
        else:
            assert row["adapted_modules"] is None, strategy
    # the report over these real rows: six strategies, all marked untrained, none compared to published numbers
    from harness.report.html import build_report

    files = build_report(tmp_path, tmp_path / "report")
    assert sorted(e.strategy for e in files.board.entries) == sorted(STRATEGIES)
    assert all(e.random and e.published is None for e in files.board.entries)
    assert files.html.read_text().count("not compared") == len(STRATEGIES)


def test_corrected_preset_uses_peft_and_records_it(tmp_path):
    from harness.run.lifecycle import execute
    from harness.run.plan import resolve_config

    spec = get_spec("phikon")
    decoder = sum(p.numel() for p in TransUNetDecoder(spec.embed_dim, 4, spec.patch_size).parameters())
    for strategy, extra in (("lora", 1_179_648), ("dora", 1_179_648 + 48 * 768)):  # peft DoRA: a magnitude per output column
        cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", preset="corrected", strategy=strategy, epochs=1,
                                input_size=32, inference="resize", n_bootstrap=20)
        row = execute(cfg, results_dir=tmp_path)
        assert row.trainable_params == decoder + extra and row.preset == "corrected"
        assert '"adapter_impl": "peft"' in row.config_json and '"lora_alpha": 16.0' in row.config_json


def test_strategy_errors_are_one_line_config_errors():
    from harness.errors import ConfigError
    from harness.run.plan import plan_run, resolve_config

    with pytest.raises(ConfigError, match="--strategy"):
        resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", strategy="prompt_tuning")
    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", strategy="cnn_adapter", decoder="linear")
    with pytest.raises(ConfigError, match="transunet decoder"):
        plan_run(cfg)
    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", strategy="transformer_adapter", blocks=(5, 11))
    with pytest.raises(ConfigError, match="reads one block"):
        plan_run(cfg)
    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="endpoint", strategy="lora")
    with pytest.raises(ConfigError, match="feature server cannot"):
        plan_run(cfg)


def test_trainable_count_helper_matches_requires_grad():
    seg = build_segmenter(build_extractor(get_spec("lunit_vits8")), "lora", "linear", 2, (11,))
    assert trainable_parameters(seg) == lora.expected_adapter_params(build_backbone(get_spec("lunit_vits8")), "lora", 16, "densebench") + sum(
        p.numel() for p in seg.decoder.parameters())


def _job_processes() -> list[tuple[int, int, str]]:
    from conftest import processes

    return [p for p in processes() if "harness train" in p[2]]


@pytest.mark.slow
def test_kill_9_mid_run_resumes_from_the_checkpoint_and_the_run_has_one_row(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from harness.results.store import read_rows
    from harness.run.lifecycle import execute
    from harness.run.plan import resolve_config

    res = tmp_path / "res"
    args = [sys.executable, "-m", "harness.cli", "bench", "-m", "phikon", "-d", "nuclei-sample", "-s", "lora", "--runtime", "local",
            "--epochs", "4", "--input-size", "64", "--no-progress", "--results-dir", str(res)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def checkpointed() -> bool:
        assert proc.poll() is None, proc.communicate()
        return bool(list(res.glob("runs/*/checkpoint.pt")))

    wait_until(checkpointed, 300, "the first checkpoint", interval=0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (ckpt,) = res.glob("runs/*/checkpoint.pt")
    done_epoch = torch.load(ckpt, weights_only=False)["epoch"]
    assert done_epoch < 3 and not (ckpt.parent / "result.json").exists() and read_rows(res) == []
    wait_until(lambda: not _job_processes(), 15, "the job to die with the harness (PR_SET_PDEATHSIG)")

    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resuming run {ckpt.parent.name} at epoch {done_epoch + 2} of 4" in again.stderr
    rows = read_rows(res)
    assert len(rows) == 1 and rows[0]["run_key"] == ckpt.parent.name
    assert not ckpt.exists() and (ckpt.parent / "best.pt").is_file()  # the resume point goes once the row is stored

    skipped = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert skipped.returncode == 0 and "skipped" in skipped.stdout and len(read_rows(res)) == 1

    # an uninterrupted run of the same configuration ends with the same numbers
    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", strategy="lora", epochs=4, input_size=64)
    straight = execute(cfg, results_dir=tmp_path / "straight")
    assert straight.run_key == rows[0]["run_key"]
    for m in ("mIoU", "mDice", "best_val", "best_epoch", "per_class_iou"):
        assert getattr(straight, m) == rows[0][m], m


def test_an_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from harness.train import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint({"epoch": 0}, path)

    def torn(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint({"epoch": 1}, path)
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path) == {"epoch": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left
