"""torchvision interop: the adapter's maps named as torchvision's own FPN backbones name them, torchvision's
detectors written by hand around ``detection.fpn_backbone``, the P3-P7 layout, RetinaNet / FCOS labels, and
``detector=retinanet`` / ``fcos`` end to end (train, evaluate, COCO results)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_runs import TINY_BACKBONE, compose_cfg, tiny
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

import backbones
from detection import FeatureAdapter, build_detector, fpn_backbone
from detection.module import run

SIDE = 64
# torchvision's RPN / RoI counts, cut for 64 px images
SMALL_RCNN = dict(min_size=SIDE, max_size=SIDE, rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32,
                  rpn_pre_nms_top_n_test=32, rpn_post_nms_top_n_test=16, box_batch_size_per_image=16,
                  box_score_thresh=0.0)  # fmt: skip


def _data(labels=(1, 2)):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIDE, SIDE, generator=g), torch.rand(3, 48, SIDE, generator=g)]
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 30.0, 60.0, 62.0]])
    targets = [
        {"boxes": boxes, "labels": torch.tensor(labels)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


def _train_step_and_eval(model, labels=(1, 2)):
    images, targets = _data(labels)
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    model.eval()
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("top_block, extra", [("pool", ["pool"]), ("p6p7", ["p6", "p7"])], ids=["pool", "p6p7"])
def test_map_names_are_torchvisions(top_block, extra):
    """Our FPN maps carry the keys torchvision's resnet_fpn_backbone gives for the same layout (the oracle)."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    blocks = {"pool": LastLevelMaxPool(), "p6p7": LastLevelP6P7(256, 256)}  # its FPN width: 256
    tv = resnet_fpn_backbone(backbone_name="resnet18", weights=None, returned_layers=[2, 3, 4],
                             extra_blocks=blocks[top_block])  # fmt: skip
    ours = fpn_backbone(TINY_BACKBONE, levels=("c3", "c4", "c5"), fpn_channels=32, top_block=top_block)
    x = torch.rand(1, 3, SIDE, SIDE)
    with torch.no_grad():
        tv_maps, our_maps = tv.eval()(x), ours.eval()(x)
    assert list(our_maps) == list(tv_maps) == ["0", "1", "2", *extra] == ours.map_names
    assert [m.shape[-2:] for m in our_maps.values()] == [m.shape[-2:] for m in tv_maps.values()]
    assert ours.map_levels == ["c3", "c4", "c5", "c6", "c7"][: 3 + len(extra)]
    assert isinstance(ours.out_channels, int) and isinstance(tv.out_channels, int)
    bare = fpn_backbone(TINY_BACKBONE, levels=("c3", "c4", "c5"), fpn_channels=32, top_block=None)
    assert bare.map_names == bare.fpn_names == ["0", "1", "2"]


def test_torchvision_faster_rcnn_with_its_default_pooler():
    """FasterRCNN(fpn_backbone(...), num_classes) without box_roi_pool: torchvision's MultiScaleRoIAlign over
    '0'..'3' pools from our four FPN levels (with c-names it raised an IndexError inside torchvision)."""
    torch.manual_seed(0)
    body = fpn_backbone(TINY_BACKBONE, fpn_channels=32)
    model = FasterRCNN(body, num_classes=3, **SMALL_RCNN)
    assert model.roi_heads.box_roi_pool.featmap_names == body.fpn_names == ["0", "1", "2", "3"]
    out = _train_step_and_eval(model)
    assert len(out) == 2 and all(o["boxes"].shape[-1] == 4 for o in out)
    # c3..c5 + pool: '3' is absent, torchvision's default pooler takes the levels there are
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)
    body = fpn_backbone(TINY_BACKBONE, levels=("c3", "c4", "c5"), fpn_channels=32)
    _train_step_and_eval(FasterRCNN(body, 3, rpn_anchor_generator=anchors, **SMALL_RCNN))


def test_torchvision_retinanet_by_hand():
    torch.manual_seed(0)
    body = fpn_backbone(TINY_BACKBONE, levels=("c3", "c4", "c5"), fpn_channels=32, top_block="p6p7")
    anchors = AnchorGenerator(tuple((s, int(s * 1.26)) for s in (16, 32, 64, 128, 256)), ((0.5, 1.0, 2.0),) * 5)
    model = RetinaNet(body, num_classes=3, anchor_generator=anchors, min_size=SIDE, max_size=SIDE, score_thresh=0.0)
    out = _train_step_and_eval(model)
    assert len(out) == 2 and len(out[0]["boxes"]) > 0


@pytest.mark.parametrize("source", ["c5", "p5"])
def test_p6_from_c5_or_p5(source):
    """P6 is torchvision's LastLevelP6P7 conv applied to C5 or to P5, as asked, also when C5 has the FPN width
    (where torchvision alone would pick P5)."""
    body = backbones.create_model(TINY_BACKBONE, features_only=True, out_features=("c3", "c4", "c5"))
    width = body.out_channels["c5"]
    adapter = FeatureAdapter(body, "fpn", fpn_channels=width, top_block="p6p7", p6p7_from=source).eval()
    x = torch.rand(1, 3, SIDE, SIDE)
    with torch.no_grad():
        maps = adapter(x)
        source_map = body(x)["c5"] if source == "c5" else maps["2"]
        p6 = adapter.fpn.extra_blocks.p6(source_map)
    torch.testing.assert_close(maps["p6"], p6)
    torch.testing.assert_close(maps["p7"], adapter.fpn.extra_blocks.p7(torch.relu(p6)))


def test_detector_defaults_follow_the_papers():
    """RetinaNet: P6 from C5, 3 scales x 3 ratios per location (paper section 4); FCOS: P6 from P5, one point per
    location sized as its stride (torchvision's FCOS size ranges)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.retinanet import _default_anchorgen

    small = dict(min_size=SIDE, max_size=SIDE, fpn_channels=32)
    retina = build_detector(TINY_BACKBONE, {"name": "retinanet", **small}, num_classes=2)
    assert retina.backbone.fpn.extra_blocks.use_P5 is False
    tv_anchors = _default_anchorgen()  # retinanet_resnet50_fpn's
    assert retina.anchor_generator.sizes == tv_anchors.sizes
    assert retina.anchor_generator.aspect_ratios == tv_anchors.aspect_ratios
    fcos = build_detector(TINY_BACKBONE, {"name": "fcos", **small}, num_classes=2)
    assert fcos.backbone.fpn.extra_blocks.use_P5 is True
    assert fcos.anchor_generator.sizes == FCOS(fcos.backbone, 2).anchor_generator.sizes  # torchvision's default
    with pytest.raises(ValueError, match="fpn_channels=48 is not valid; FCOS's head normalises with GroupNorm"):
        build_detector(TINY_BACKBONE, {"name": "fcos", **small, "fpn_channels": 48}, num_classes=2)
    with pytest.raises(ValueError, match="p6p7_from='c4' is not valid.*'c5', 'p5'"):
        build_detector(TINY_BACKBONE, {"name": "retinanet", **small, "p6p7_from": "c4"}, num_classes=2)


@pytest.mark.parametrize("name", ["retinanet", "fcos"])
def test_one_stage_labels_run_from_one(name):
    """K sigmoid columns for labels 1..K: the top label trains (torchvision's head would index past K - 1 without
    the shift) and every detection is labelled 1..K, never the background 0."""
    torch.manual_seed(0)
    small = dict(min_size=SIDE, max_size=SIDE, fpn_channels=32, score_thresh=0.0, topk_candidates=50)
    model = build_detector(TINY_BACKBONE, {"name": name, **small}, num_classes=2)
    assert model.head.classification_head.num_classes == 2
    out = _train_step_and_eval(model, labels=(2, 1))
    labels = torch.cat([o["labels"] for o in out])
    assert len(labels) > 0 and labels.min() >= 1 and labels.max() <= 2


def test_adapter_refuses_a_classifier():
    with pytest.raises(ValueError, match="features_only backbone.*detection.fpn_backbone"):
        FeatureAdapter(backbones.create_model(TINY_BACKBONE), "fpn")
    with pytest.raises(ValueError, match="neck='fnp' is not valid.*'fpn'"):
        FeatureAdapter(backbones.create_model(TINY_BACKBONE, features_only=True), "fnp")


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_train_net_one_stage_detectors_end_to_end(detector, tmp_path):
    """``detector=retinanet`` / ``fcos`` through the runner: training steps, COCOeval, COCO results with the
    dataset's category ids."""
    overrides = [*tiny(tmp_path, steps=2), f"detector={detector}", "detector.fpn_channels=32",
                 "detector.score_thresh=0", "trainer.progress_bar=false", "trainer.loggers=[]"]  # fmt: skip
    stats = run(compose_cfg(overrides), tmp_path / "run")
    assert 0.0 <= stats["AP50"] <= 1.0
    results = json.loads(next((tmp_path / "run" / "eval").glob("coco_results_step*.json")).read_text())
    ann = json.loads(next((tmp_path / "cache").glob("shapes-*/annotations/instances_val.json")).read_text())
    assert results and {r["category_id"] for r in results} <= {c["id"] for c in ann["categories"]}
