"""detectron2 plugin: registration, the Backbone contract, FREEZE_AT, and one training iteration + one inference of
detectron2's GeneralizedRCNN with FPN backbones of ours. Skips (with the reason) when detectron2 is absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import backbones


def test_clear_import_error_without_detectron2():
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "try:\n    import detection.detectron2\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "IMPORTERROR" in out and "not on PyPI" in out and "--no-build-isolation" in out


d2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (not on PyPI; build it from source)")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from detection.detectron2 import CNNBackbone, add_backbone_config, check_pretrained, configure_backbone  # noqa: E402

E2E = [n for n in ("nasnet_a_mobile", "resnext50_32x4d") if n in backbones.list_models()]


def test_every_detection_ready_model_registered():
    for name in backbones.list_models(detection_ready=True):
        assert f"build_{name}_backbone" in BACKBONE_REGISTRY
        assert f"build_{name}_fpn_backbone" in BACKBONE_REGISTRY
    for name in backbones.list_models(detection_ready=False):
        assert f"build_{name}_backbone" not in BACKBONE_REGISTRY


def test_backbone_contract_and_freeze_at():
    name = backbones.list_models(detection_ready=True)[0]
    b = CNNBackbone(name, freeze_at=2)
    shapes = b.output_shape()
    assert list(shapes) == ["c2", "c3", "c4", "c5"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert b.size_divisibility == 32 and b.padding_constraints == {"size_divisibility": 32}
    out = b(torch.randn(1, 3, 64, 96))
    assert {k: v.shape[1] for k, v in out.items()} == {k: s.channels for k, s in shapes.items()}
    stages = b.body.stage_modules()
    frozen = {n for s in stages[:2] for n in s}  # FREEZE_AT=2: stem and first stage
    for pname, p in b.body.named_parameters():
        assert p.requires_grad != any(pname.startswith(m + ".") for m in frozen), pname
    with pytest.raises(ValueError, match="MODEL.CNN_BACKBONE.NORM='frozen' is not valid.*FrozenBN"):
        CNNBackbone(name, norm="frozen")


SAMPLE = Path(__file__).resolve().parents[1] / "detection/configs/faster_rcnn_cnn_fpn.yaml"
LIGHT = "mobilenet_v1_x0_25"


def _cfg(name: str):
    """The sample config (the documented starting point), pointed at ``name``, at test sizes."""
    cfg = add_backbone_config(get_cfg())
    cfg.merge_from_file(str(SAMPLE))
    configure_backbone(cfg, name, fpn=True, weights="")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 160
    return cfg


def _batch(h: int = 128, w: int = 160, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (3, h, w), generator=g).float()
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0], [80.0, 10.0, 150.0, 60.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    return [{"image": image, "instances": inst, "height": h, "width": w}]


def _train(model, cfg, iterations: int) -> list[float]:
    """``iterations`` steps of detectron2's own optimiser and LR schedule for ``cfg``; the total loss of each."""
    from detectron2.solver import build_lr_scheduler, build_optimizer

    opt = build_optimizer(cfg, model)
    sched, totals = build_lr_scheduler(cfg, opt), []
    model.train()
    with EventStorage(0) as storage:
        for it in range(iterations):
            storage.iter = it
            losses = model(_batch(seed=2 * it) + _batch(seed=2 * it + 1))  # 2 images per iteration
            total = sum(losses.values())
            totals.append(float(total))
            opt.zero_grad()
            total.backward()
            opt.step()
            sched.step()
    return totals


@pytest.mark.parametrize("name", E2E)
def test_generalized_rcnn_train_iteration_and_inference(name):
    torch.manual_seed(0)
    model = build_model(_cfg(name))
    assert model.pixel_mean.flatten().tolist() == pytest.approx([255 * m for m in backbones.model_card(name).mean])
    batch = _batch()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 128, "width": 160}])
    assert out[0]["instances"].image_size == (128, 160)
    assert out[0]["instances"].pred_boxes.tensor.shape[-1] == 4


def test_sample_config_loads():
    cfg = add_backbone_config(get_cfg())
    cfg.merge_from_file(str(SAMPLE))
    assert cfg.MODEL.BACKBONE.NAME == "build_nasnet_a_mobile_fpn_backbone"
    check_pretrained(cfg)  # trains from scratch as written: no FrozenBN, nothing frozen


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# detectron2's configs/Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml over Base-RCNN-FPN.yaml (box part), with a one-FC
# head, small anchors and BGR input: what a user brings, written for detectron2's ResNet
CASCADE = """
MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  BACKBONE: {NAME: build_resnet_fpn_backbone, FREEZE_AT: 0}
  RESNETS: {OUT_FEATURES: [res2, res3, res4, res5]}
  FPN: {IN_FEATURES: [res2, res3, res4, res5]}
  ANCHOR_GENERATOR: {SIZES: [[16], [32], [64], [128], [256]], ASPECT_RATIOS: [[0.5, 1.0, 2.0]]}
  RPN: {IN_FEATURES: [p2, p3, p4, p5, p6], POST_NMS_TOPK_TRAIN: 64, POST_NMS_TOPK_TEST: 32, BATCH_SIZE_PER_IMAGE: 32}
  ROI_HEADS: {NAME: CascadeROIHeads, IN_FEATURES: [p2, p3, p4, p5], NUM_CLASSES: 3, BATCH_SIZE_PER_IMAGE: 16}
  ROI_BOX_HEAD: {NAME: FastRCNNConvFCHead, NUM_FC: 1, POOLER_RESOLUTION: 7, CLS_AGNOSTIC_BBOX_REG: true}
  CNN_BACKBONE: {NORM: BN}
  DEVICE: cpu
INPUT: {FORMAT: BGR, MIN_SIZE_TEST: 128, MAX_SIZE_TEST: 160}
"""
#: the keys configure_backbone may change: what the backbone determines
BACKBONE_KEYS = {"MODEL.BACKBONE.NAME", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT", "MODEL.FPN.IN_FEATURES",
                 "MODEL.CNN_BACKBONE.OUT_FEATURES", "MODEL.CNN_BACKBONE.WEIGHTS"}  # fmt: skip


def test_configure_backbone_keeps_a_cascade_rcnn_config(tmp_path):
    """Every key but the backbone's stays as the user set it, and detectron2's Cascade R-CNN trains on our FPN."""
    path = tmp_path / "cascade.yaml"
    path.write_text(CASCADE)
    cfg = add_backbone_config(get_cfg())
    cfg.merge_from_file(str(path))
    before = _flat(cfg.clone())
    configure_backbone(cfg, LIGHT, fpn=True)
    after = _flat(cfg)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed <= BACKBONE_KEYS, changed - BACKBONE_KEYS
    assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 1
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16], [32], [64], [128], [256]]
    assert cfg.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    assert cfg.MODEL.FPN.IN_FEATURES == ["c2", "c3", "c4", "c5"] == cfg.MODEL.CNN_BACKBONE.OUT_FEATURES
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.BACKBONE.NAME == f"build_{LIGHT}_fpn_backbone"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == "CascadeROIHeads" and len(model.roi_heads.box_head) == 3
    totals = _train(model, cfg, 2)
    assert all(torch.isfinite(torch.tensor(totals))), totals


def test_configure_backbone_names_what_does_not_fit():
    cfg = add_backbone_config(get_cfg())  # detectron2's defaults: a C4 ResNet (Res5ROIHeads on res4)
    with pytest.raises(ValueError, match="Res5ROIHeads.*StandardROIHeads"):
        configure_backbone(cfg, LIGHT, fpn=False)
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    configure_backbone(cfg, LIGHT, fpn=False)  # res4 -> c4 for the RPN and the RoI heads
    assert cfg.MODEL.RPN.IN_FEATURES == ["c4"] == cfg.MODEL.CNN_BACKBONE.OUT_FEATURES
    with pytest.raises(ValueError, match=r"MODEL.FPN.IN_FEATURES=\[\] is not valid; it is empty: the maps are c2"):
        configure_backbone(cfg, LIGHT, fpn=True)  # detectron2's default FPN.IN_FEATURES
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    with pytest.raises(ValueError, match=r"MODEL.RPN.IN_FEATURES=\['c4'\] is not valid; \['c4'\]: the maps are p2"):
        configure_backbone(cfg, LIGHT, fpn=True)  # FPN outputs are p2..p6
    with pytest.raises(ValueError, match="backbone='mobilenet_v1_x0_3' is not valid.*mobilenet_v1_x0_25"):
        configure_backbone(cfg, "mobilenet_v1_x0_3")


def test_freeze_at_out_of_range_names_the_detectron2_key():
    with pytest.raises(ValueError, match=r"MODEL.BACKBONE.FREEZE_AT=6 is not valid for .*: 0\.\.5"):
        CNNBackbone(LIGHT, norm="BN", freeze_at=6)
    CNNBackbone(LIGHT, norm="BN", freeze_at=5, weights="")  # the stem and all four stages


def test_frozen_bn_without_weights_is_refused():
    cfg = _cfg(LIGHT)
    cfg.MODEL.CNN_BACKBONE.NORM = "FrozenBN"
    with pytest.raises(ValueError, match="FrozenBN.*no trained weights.*NaN.*NORM='BN'"):
        build_model(cfg)
    cfg.MODEL.CNN_BACKBONE.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.raises(ValueError, match="FREEZE_AT=2 with no trained weights"):
        build_model(cfg)
    cfg.MODEL.WEIGHTS = "a_trained_detector.pth"  # detectron2 loads it after building: allowed
    check_pretrained(cfg)


@pytest.mark.slow
def test_documented_example_trains_without_nan():
    """The sample config + configure_backbone(weights="") (the documented example): 20 iterations of detectron2's
    own optimiser and the config's schedule with a finite loss (the FrozenBN version was NaN by iteration 7)."""
    cfg = _cfg("nasnet_a_mobile")
    torch.manual_seed(0)
    totals = _train(build_model(cfg), cfg, 20)
    assert all(torch.isfinite(torch.tensor(totals))), totals


def _traced(model, image):
    from detectron2.export import TracingAdapter

    def inference(m, img):  # the raw Instances, before rescaling to the input size
        return m.inference([{"image": img}], do_postprocess=False)[0]

    adapter = TracingAdapter(model, image, inference)
    with torch.no_grad():
        return adapter, torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)


def test_tracing_adapter_on_a_trained_model():
    """detectron2's export path (TracingAdapter + torch.jit.trace) on a detector trained a few iterations: the traced
    model gives the eager model's boxes, scores and classes on another image of the same size."""
    cfg = _cfg(LIGHT)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    _train(model, cfg, 3)
    model.eval()
    adapter, traced = _traced(model, _batch(seed=5)[0]["image"])
    image = _batch(seed=6)[0]["image"]
    with torch.no_grad():
        expected = model.inference([{"image": image}], do_postprocess=False)[0]
        got = adapter.outputs_schema(traced(image))
    assert len(expected) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def test_traced_nasnet_backbone_runs_on_the_device_it_is_moved_to():
    """A traced NASNet FPN backbone holds no device constant: moved to another device (meta here, no GPU needed) it
    runs there. Fails while backbones/nas/cell.py allocates its concat buffer with a traced device="cpu"."""
    cfg = _cfg("nasnet_a_mobile")
    model = build_model(cfg).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model.backbone, torch.rand(1, 3, 64, 64), check_trace=False, strict=False)
        out = traced.to("meta")(torch.empty(1, 3, 64, 64, device="meta"))
    assert {k: v.device.type for k, v in out.items()} == dict.fromkeys(model.backbone.output_shape(), "meta")
    assert {k: v.shape[-1] for k, v in out.items()} == {
        k: 64 // s.stride for k, s in model.backbone.output_shape().items()
    }
