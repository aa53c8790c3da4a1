"""Deep Compression through the classification runtime: retraining with the masks fixed (``compression.plan=``)
keeps the pruned weights at exactly zero through a resume, the stages of ``classification.compress`` on a tiny
model (files, sizes on disk, exact decoding, ``pretrained=<file>.dcmp`` giving the same top-1 in ``eval_only``),
and bad plans, patterns and bit widths refused before any work."""

from __future__ import annotations

import os
import subprocess

import lightning as L
import pytest
import torch
from tiny_runs import child_env, compose_cfg, run_tool, tool

import backbones
from backbones import compression as dc
from classification import compress as lib
from classification.data import digits_datasets
from classification.module import run

QUIET = ["trainer.loggers=[]", "trainer.progress_bar=false"]
TINY = ["dataset.image_size=16", "epochs=1", "trainer.limit_train_batches=2", *QUIET]
MODEL = "mobilenet_v1_x0_25"


def cfg_of(*overrides: str):
    return compose_cfg(overrides, task="classify")


@torch.no_grad()
def centroid_model(seed: int = 0) -> torch.nn.Module:
    """A MobileNet whose classifier is the nearest class centroid of its random features on digits (16 px): far
    from constant predictions, so equal top-1 figures mean something."""
    torch.manual_seed(seed)
    model = backbones.create_model(MODEL, num_classes=10).eval()
    card = backbones.model_card(MODEL)
    data = digits_datasets(card, image_size=16)
    x, y = data.train.images[:600], data.train.labels[:600]
    mean, std = torch.tensor(card.mean)[:, None, None], torch.tensor(card.std)[:, None, None]
    model.fc = torch.nn.Identity()
    feats = model((x - mean) / std)
    model.fc = torch.nn.Linear(feats.shape[1], 10)
    mu = feats.mean(0)
    w = torch.stack([feats[y == c].mean(0) for c in range(10)]) - mu
    model.fc.weight.copy_(w / w.norm(dim=1, keepdim=True))
    model.fc.bias.copy_(-(model.fc.weight @ mu))
    return model


class MasksHold(L.Callback):
    """After every optimiser step: each pruned weight is exactly zero."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks, self.steps = masks, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        params = dict(module.model.named_parameters())
        for name, mask in self.masks.items():
            assert torch.count_nonzero(params[name].detach().cpu()[~mask]) == 0, (trainer.global_step, name)
        self.steps += 1


def ckpt_of(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_retraining_keeps_the_masks_exactly_through_a_resume(tmp_path):
    torch.manual_seed(0)
    model = backbones.create_model(MODEL, num_classes=10)
    masks = dc.prune(model, lib.load_plan("mobilenet_v1"))
    pruned = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(pruned, tmp_path / "pruned.pth")
    args = [f"backbone={MODEL}", f"pretrained={tmp_path / 'pruned.pth'}", "compression.plan=mobilenet_v1", *TINY]
    out = tmp_path / "retrain"

    hold = MasksHold(masks)
    run(cfg_of(*args), out, callbacks=[hold])
    first = ckpt_of(out)
    saved = first["compression"]["masks"]
    assert hold.steps == 2 and set(saved) == set(masks)
    assert all(torch.equal(saved[k], masks[k]) for k in masks)  # the masks the pruning made, recomputed by the run
    weights = {k.removeprefix("model."): v for k, v in first["state_dict"].items()}
    for name, mask in masks.items():
        assert torch.count_nonzero(weights[name][~mask]) == 0
        assert not torch.equal(weights[name][mask], pruned[name][mask]), f"{name} was not retrained"

    hold = MasksHold(masks)
    resumed = run(cfg_of(*args, "epochs=2", "resume=true"), out, callbacks=[hold])
    assert resumed["global_step"] == 4 and hold.steps == 2
    second = {k.removeprefix("model."): v for k, v in ckpt_of(out)["state_dict"].items()}
    for name, mask in masks.items():
        assert torch.count_nonzero(second[name][~mask]) == 0
        assert not torch.equal(second[name][mask], weights[name][mask]), f"{name} was not retrained after resume"

    # a resume must keep them: without compression.plan it is refused
    with pytest.raises(ValueError, match=r"retrained with compression masks; resume with the same compression.plan"):
        run(cfg_of(f"backbone={MODEL}", *TINY, "epochs=3", "resume=true"), out)


def test_compress_stages_on_a_tiny_model(tmp_path):
    model = centroid_model()
    dataset = lib.classify_config(["dataset.image_size=16"])["dataset"]
    rows = lib.compress(model, "mobilenet_v1", tmp_path, bits=(8, 3), dataset_cfg=dataset)
    stages = [r["stage"] for r in rows]
    assert stages == ["trained", "pruned", "shared 8-bit", "decoded 8-bit", "shared 3-bit", "decoded 3-bit"]
    top1 = {r["stage"]: r["top1"] for r in rows}
    assert top1["trained"] > 18  # the centroid head is far from one class (10%)
    params = sum(p.numel() for p in model.parameters())
    assert rows[0]["bytes"] == 4 * params and rows[1]["nonzero"] < 0.75 * params
    for bits in (8, 3):
        path = tmp_path / f"{MODEL}_{bits}bit.dcmp"
        row = rows[stages.index(f"decoded {bits}-bit")]
        assert row["bytes"] == os.path.getsize(path) < 0.25 * rows[0]["bytes"]
        assert row["top1"] == top1[f"shared {bits}-bit"]  # decoding is exact
        decoded = dc.load_compressed(path).state_dict()
        via_pretrained = backbones.create_model(MODEL, num_classes=10, pretrained=str(path)).state_dict()
        assert all(torch.equal(decoded[k], via_pretrained[k]) for k in decoded)
    assert len(torch.unique(dc.load_compressed(tmp_path / f"{MODEL}_3bit.dcmp").body.block13.pw.conv.weight)) <= 9
    assert (tmp_path / "stages.json").is_file() and (tmp_path / "pruned.pth").is_file()

    # the runtime's evaluation of the file (eval_only, pretrained=<file>.dcmp) gives the stage's top-1
    m = run(cfg_of(f"backbone={MODEL}", "dataset.image_size=16", "eval_only=true",
                   f"pretrained={tmp_path / f'{MODEL}_8bit.dcmp'}", *QUIET), tmp_path / "eval")  # fmt: skip
    assert m["top1"] == pytest.approx(top1["decoded 8-bit"], abs=1e-6)


def test_bad_plans_patterns_and_bits_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"plan 'squeezenet1_O'.*did you mean 'squeezenet1_0'.*shipped plans"):
        run(cfg_of(f"backbone={MODEL}", "compression.plan=squeezenet1_O", *TINY), tmp_path)
    with pytest.raises(ValueError, match=r"pattern 'body.fire\[2-7\].expand3x3.weight' matches no conv/linear weight"):
        run(cfg_of(f"backbone={MODEL}", "compression.plan=squeezenet1_0", *TINY), tmp_path)
    with pytest.raises(ValueError, match=r"unknown key compression.bits"):
        run(cfg_of(f"backbone={MODEL}", "+compression.bits=6", *TINY), tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # nothing ran
    for bits in (0, 17):
        with pytest.raises(ValueError, match=rf"bits={bits} is not valid; use an integer from 1 to 16"):
            lib.read_plan("squeezenet1_0", bits)
    with pytest.raises(ValueError, match="matches no conv/linear weight"):
        lib.compress(backbones.create_model(MODEL, num_classes=10), "squeezenet1_0", tmp_path / "dc")
    assert not (tmp_path / "dc").exists()
    other = tmp_path / "squeezenet.dcmp"
    sq = backbones.create_model("squeezenet1_1", num_classes=10)
    other.write_bytes(dc.encode(sq, {}, {}))
    with pytest.raises(backbones.CheckpointMismatchError, match=r"holds a compressed 'squeezenet1_1', not 'mobilenet"):
        backbones.create_model(MODEL, pretrained=str(other))


def test_tool_refuses_bits_out_of_range_before_any_work(tmp_path):
    cmd = tool("compress.py", MODEL, "--random-init", "--plan", "mobilenet_v1", "--bits", "8", "20", "--out",
               str(tmp_path / "out"))  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode != 0 and "bits=20 is not valid; use an integer from 1 to 16" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tool_prunes_retrains_through_train_cls_and_encodes(tmp_path):
    """The whole tool on a tiny trained model: a train_cls run, then prune, retrain (a train_cls subprocess with
    compression.plan), share at 8 and 6 bits, encode, decode, evaluate."""
    small = ["dataset.image_size=16", "trainer.limit_train_batches=3", *QUIET]
    run_tool("train_cls.py", f"backbone={MODEL}", "epochs=1", *small, f"hydra.run.dir={tmp_path / 'train'}")
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    proc = run_tool("compress.py", str(ckpt), "--plan", "mobilenet_v1", "--out", str(tmp_path / "dc"),
                    "--retrain-epochs", "1", *small)  # fmt: skip
    assert "| decoded 6-bit |" in proc.stdout
    retrained = ckpt_of(tmp_path / "dc" / "retrain")
    assert retrained["global_step"] == 3 and "masks" in retrained["compression"]
    for bits in (8, 6):
        assert (tmp_path / "dc" / f"{MODEL}_{bits}bit.dcmp").stat().st_size > 0
