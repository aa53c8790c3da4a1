"""CPU bf16: ``trainer.precision=bf16-mixed`` trains and evaluates in both tasks on tiny runs, under bf16 autocast,
computing what float32 computes up to bf16 rounding; the runs' checkpoints then export (tools/export.py) and, for
classification, quantise (tools/quantize.py). Speed and accuracy at full length: docs/deployment.md."""

from __future__ import annotations

import importlib.util
import json

import lightning as L
import pytest
import torch
from tiny_runs import ROOT, compose_cfg, tiny

QUIET = ["trainer.loggers=[]", "trainer.progress_bar=false", "trainer.precision=bf16-mixed"]


class Bf16Probe(L.Callback):
    """Records the dtype the first convolution computes in, per stage; at the first training batch computes the loss
    once more with autocast off (same batch, same random state: same RPN / RoI sampling) beside the run's own."""

    def __init__(self, loss_fn) -> None:
        self.loss_fn = loss_fn
        self.dtypes: dict[str, set[torch.dtype]] = {}
        self.fp32_loss = self.bf16_loss = None
        self._hooked = self._own_pass = False

    def setup(self, trainer, module, stage) -> None:
        if not self._hooked:
            conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
            conv.register_forward_hook(lambda m, i, o: self._record(trainer.state.stage.value, o.dtype))
            self._hooked = True

    def _record(self, stage: str, dtype: torch.dtype) -> None:
        if not self._own_pass:
            self.dtypes.setdefault(stage, set()).add(dtype)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self._own_pass = True
            with torch.random.fork_rng(), torch.autocast("cpu", enabled=False), torch.no_grad():
                self.fp32_loss = float(self.loss_fn(module, batch))
            self._own_pass = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            self.bf16_loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)


def _tool(name: str, *args: str) -> int:
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(list(args))


def _float_weights(ckpt_path) -> set[torch.dtype]:
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    return {v.dtype for v in state.values() if v.is_floating_point()}


def test_detection_bf16_trains_evaluates_and_exports(tmp_path):
    from detection.evaluation import STAT_NAMES
    from detection.module import run

    def loss(module, batch):
        images, targets, _ = batch
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        return sum(module.model(images, targets).values())

    probe = Bf16Probe(loss)
    cfg = compose_cfg([*tiny(tmp_path, steps=3), "backbone=mobilenet_v1_x0_5", *QUIET])
    stats = run(cfg, tmp_path / "run", callbacks=[probe])
    assert probe.dtypes == {"train": {torch.bfloat16}, "validate": {torch.bfloat16}}
    # bf16 keeps 8 bits of mantissa (0.4 %): the loss of the same batch and sampling agrees to a percent or so
    assert probe.bf16_loss == pytest.approx(probe.fp32_loss, rel=0.03)
    assert list(stats) == list(STAT_NAMES) and all(v == v for v in stats.values())
    results = json.loads(next((tmp_path / "run" / "eval").glob("coco_results_step*.json")).read_text())
    assert results and all(len(r["bbox"]) == 4 and all(v == v for v in r["bbox"]) for r in results)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _float_weights(last) == {torch.float32}  # mixed precision: float32 weights, bf16 compute
    out = tmp_path / "det.pt"
    assert _tool("export", str(last), "--format", "torchscript", "--output", str(out)) == 0 and out.is_file()


def test_classification_bf16_trains_evaluates_exports_and_quantises(tmp_path, capsys):
    from classification.module import run
    from classification.recipes import classification_loss

    def loss(module, batch):
        x, y, _, _ = batch
        return classification_loss(module.model(x), y, float(module.recipe.get("label_smoothing", 0.0)), 0.0)[0]

    probe = Bf16Probe(loss)
    threads = torch.get_num_threads()
    size = "dataset.image_size=16"
    small = ["backbone=mobilenet_v1_x0_25", size, "epochs=1", "trainer.limit_train_batches=4"]
    try:
        m = run(compose_cfg([*small, *QUIET], task="classify"), tmp_path / "run", callbacks=[probe])
    finally:
        torch.set_num_threads(threads)  # the run sets its cpu_threads
    assert probe.dtypes == {"train": {torch.bfloat16}, "validate": {torch.bfloat16}}
    assert probe.bf16_loss == pytest.approx(probe.fp32_loss, rel=0.02)
    assert m["images"] == 360 and 0 <= m["top1"] <= 100
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _float_weights(last) == {torch.float32}
    out = tmp_path / "cls.onnx"
    assert (
        _tool("export", str(last), "--format", "onnx", "--legacy-onnx", "--input-size", "16", "--output", str(out)) == 0
    )
    assert out.is_file()
    pytest.importorskip("torchao", reason="int8 quantisation needs torchao")
    capsys.readouterr()
    # one batch of all 360 val images: the oneDNN kernels are built once
    assert (
        _tool("quantize", str(last), "--set", "image_size=16", "--calibration-batches", "1", "--batch-size", "360") == 0
    )
    table = capsys.readouterr().out
    assert "| fp32 |" in table and "| bf16 |" in table and "| int8 |" in table
    # --no-int8: the float32 and bf16 rows only, for models int8 does not cover; int8 files cannot be asked for then
    assert _tool("quantize", str(last), "--set", "image_size=16", "--batch-size", "360", "--no-int8") == 0
    table = capsys.readouterr().out
    assert "| fp32 |" in table and "| bf16 |" in table and "| int8 |" not in table
    with pytest.raises(SystemExit):
        _tool("quantize", str(last), "--no-int8", "--output", str(tmp_path / "x.pt2"))
    assert not (tmp_path / "x.pt2").exists()
