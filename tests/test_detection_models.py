"""Detectors on every backbone family (one small model each, picked from the registry), the torchvision oracle,
the C4 box head, and bad detector/backbone input."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn_stats

import backbones
from detection.models import DETECTORS, FeatureAdapter, build_detector, load_detector_weights, resolve_config


def family_representatives() -> list[str]:
    """The cheapest detection-ready model of each family (MACs per input pixel from its card)."""
    best: dict[str, tuple[float, str]] = {}
    for name in backbones.list_models(detection_ready=True):
        card = backbones.model_card(name)
        cost = (card.macs or float("inf")) / card.input_size**2
        if card.family not in best or cost < best[card.family][0]:
            best[card.family] = (cost, name)
    return sorted(name for _, name in best.values())


FAMILIES = family_representatives()
LIGHT_MACS_PER_PIXEL = 5000  # MobileNet / ShuffleNet scale: every detector runs unmarked on these


def detector_cases():
    """Every detector on every family; on heavier families one detector (rotating) stays unmarked, the rest slow."""
    cases, heavy = [], 0
    for name in FAMILIES:
        card = backbones.model_card(name)
        light = (card.macs or float("inf")) / card.input_size**2 < LIGHT_MACS_PER_PIXEL
        keep = None if light else sorted(DETECTORS)[heavy % len(DETECTORS)]
        heavy += not light
        for det in sorted(DETECTORS):
            marks = [] if keep in (None, det) else [pytest.mark.slow]
            cases.append(pytest.param(name, det, id=f"{name}-{det}", marks=marks))
    return cases


SIDE = 64
# small settings so that one training step and one inference take about a second per case
SMALL = {
    "faster_rcnn": dict(min_size=SIDE, max_size=SIDE, fpn_channels=32, representation_size=64,
                        rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=32,
                        rpn_post_nms_top_n_test=16, box_batch_size_per_image=16, box_score_thresh=0.0),
    "faster_rcnn_c4": dict(min_size=SIDE, max_size=SIDE, rpn_pre_nms_top_n_train=32, rpn_post_nms_top_n_train=8,
                           rpn_pre_nms_top_n_test=16, rpn_post_nms_top_n_test=4, box_batch_size_per_image=4,
                           box_score_thresh=0.0),
    "retinanet": dict(min_size=SIDE, max_size=SIDE, fpn_channels=32, anchor_sizes=[16, 32, 64, 128, 256],
                      scales_per_octave=2, score_thresh=0.0, topk_candidates=50),
    "fcos": dict(min_size=SIDE, max_size=SIDE, fpn_channels=32, num_convs=2, score_thresh=0.0, topk_candidates=50),
    "ssd": dict(size=SIDE, extra_channels=[64, 32, 32], score_thresh=0.0),
    "ssdlite": dict(size=SIDE, extra_channels=[64, 32, 32, 32], score_thresh=0.0),
}  # fmt: skip


def _inputs():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIDE, SIDE, generator=g), torch.rand(3, 48, SIDE, generator=g)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an empty image
    ]
    return images, targets


@pytest.mark.parametrize("name, detector", detector_cases())
def test_train_step_and_inference(name, detector):
    torch.manual_seed(0)
    model = build_detector(name, {"name": detector, **SMALL[detector]}, num_classes=3)
    images, targets = _inputs()
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss), losses
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images):
        assert o["boxes"].shape[1] == 4 and len(o["boxes"]) == len(o["scores"]) == len(o["labels"])
        assert ((o["labels"] >= 1) & (o["labels"] <= 3)).all()
        assert (o["boxes"][:, 2] <= img.shape[-1] + 1e-3).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_adapter_channels_from_feature_info(name):
    """The adapter's channels come from feature_info, and they are what the maps have."""
    body = backbones.create_model(name, features_only=True, out_features=("c3", "c4", "c5"))
    adapter = FeatureAdapter(body, "extra", extra_channels=[32, 16])
    assert adapter.out_channels == [body.feature(n).channels for n in ("c3", "c4", "c5")] + [32, 16]
    assert adapter.map_names == ["0", "1", "2", "3", "4"]  # torchvision's naming (its SSD feature extractors)
    assert adapter.map_levels == ["c3", "c4", "c5", "c6", "c7"]
    with torch.no_grad():
        maps = adapter.eval()(torch.rand(1, 3, 128, 128))
    assert list(maps) == adapter.map_names
    assert [m.shape[1] for m in maps.values()] == adapter.out_channels
    assert [128 // m.shape[-1] for m in maps.values()] == adapter.strides == [8, 16, 32, 64, 128]


@pytest.mark.parametrize("name", FAMILIES)
def test_c4_box_head_is_the_last_stage(name):
    """faster_rcnn_c4: the trunk stops at stride 16 and the box head holds the rest of the network's parameters."""
    full = backbones.create_model(name, features_only=True)
    model = build_detector(name, {"name": "faster_rcnn_c4", **SMALL["faster_rcnn_c4"]}, num_classes=2)
    body = model.backbone.body
    assert body.out_features == ("c4",) and model.backbone.out_channels == full.feature("c4").channels
    head = model.roi_heads.box_head
    assert head.out_channels == full.feature("c5").channels
    n = backbones.count_params
    assert n(body) + n(head.stage) == n(full)
    assert model.rpn._post_nms_top_n["testing"] == 4
    x = torch.rand(2, full.feature("c4").channels, 14, 14)
    with torch.no_grad():
        assert head.eval()(x).shape == (2, full.feature("c5").channels)


def test_c4_defaults_follow_the_paper():
    cfg = resolve_config("faster_rcnn_c4")
    assert cfg["level"] == "c4" and cfg["rpn_post_nms_top_n_test"] == 300  # NASNet paper 4.3
    assert cfg["roi_output_size"] == 14


def test_torchvision_oracle_fasterrcnn_resnet50_fpn(tmp_path):
    """Our faster_rcnn + resnet50 (FrozenBN) with weights converted from torchvision's fasterrcnn_resnet50_fpn
    (random init, saved to a file) gives torchvision's boxes, scores and labels."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    kw = dict(min_size=128, max_size=160, box_score_thresh=0.0, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100)
    # what torchvision.models.detection.fasterrcnn_resnet50_fpn builds when given weights (FrozenBN, 3 trainable)
    tv = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91, **kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = m.weight.numel()
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
    path = tmp_path / "fasterrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)

    ours = build_detector("resnet50", {"name": "faster_rcnn", **kw}, num_classes=90, norm="frozen_bn").eval()
    load_detector_weights(ours, path)
    images = [torch.rand(3, 120, 150, generator=g), torch.rand(3, 160, 128, generator=g)]
    with torch.no_grad():
        expected, got = tv(images), ours(images)
    for e, o in zip(expected, got):
        assert len(e["boxes"]) == len(o["boxes"]) > 0
        torch.testing.assert_close(o["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], e["scores"], atol=1e-5, rtol=0)
        assert torch.equal(o["labels"], e["labels"])


def test_torchvision_coco_head_rows_picked_by_category_id(tmp_path):
    """torchvision's COCO detector predicts category ids (91 outputs); loaded with the dataset's label_to_cat, our
    K-class predictor computes exactly torchvision's background and category-id outputs."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    tv = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91).eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    label_to_cat = {1: 3, 2: 7, 3: 90}  # COCO-style gaps
    ours = build_detector("resnet50", "faster_rcnn", num_classes=3, norm="frozen_bn").eval()
    with pytest.raises(backbones.CheckpointMismatchError, match=r"cls_score.weight: checkpoint \(91, 1024\)"):
        load_detector_weights(ours, path)  # without the mapping the head does not fit, and says so
    load_detector_weights(ours, path, label_to_cat=label_to_cat)
    x = torch.randn(5, 1024)
    with torch.no_grad():
        logits, deltas = ours.roi_heads.box_predictor(x)
        tv_logits, tv_deltas = tv.roi_heads.box_predictor(x)
    torch.testing.assert_close(logits, tv_logits[:, [0, 3, 7, 90]])
    torch.testing.assert_close(deltas.reshape(5, 4, 4), tv_deltas.reshape(5, 91, 4)[:, [0, 3, 7, 90]])
    torch.testing.assert_close(
        ours.roi_heads.box_head(torch.ones(2, 256, 7, 7)), tv.roi_heads.box_head(torch.ones(2, 256, 7, 7))
    )
    with pytest.raises(ValueError, match=r"category ids \[95\] are beyond the checkpoint's 91 classes"):
        load_detector_weights(ours, path, label_to_cat={1: 3, 2: 7, 3: 95})


def test_image_mean_std_from_the_card():
    name = next(n for n in FAMILIES if backbones.model_card(n).mean != backbones.model_card("resnet50").mean)
    model = build_detector(name, {"name": "ssdlite", **SMALL["ssdlite"]}, num_classes=1)
    assert tuple(model.transform.image_mean) == backbones.model_card(name).mean
    assert tuple(model.transform.image_std) == backbones.model_card(name).std


def test_backbone_instance_and_options():
    body = backbones.create_model(FAMILIES[0], features_only=True, out_features=("c3", "c4", "c5"))
    randomize_bn_stats(body)
    model = build_detector(
        body, {"name": "faster_rcnn", "levels": ["c3", "c4", "c5"], "anchor_sizes": [16, 32, 64, 128]}, 2
    )
    assert model.backbone.body is body
    with pytest.raises(ValueError, match="c2"):
        build_detector(body, "faster_rcnn", 2)  # needs c2, the instance returns c3..c5
    frozen = build_detector(FAMILIES[0], "ssdlite", 2, norm="frozen_bn", frozen_stages=1)
    assert frozen.backbone.body.norm == "frozen_bn"


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_unknown_detector_lists_valid():
    with pytest.raises(ValueError, match="unknown detector 'fater_rcnn'.*faster_rcnn.*faster_rcnn_c4.*ssd.*ssdlite"):
        build_detector(FAMILIES[0], {"name": "fater_rcnn"}, 2)


def test_unknown_detector_option():
    with pytest.raises(ValueError, match="unknown option 'anchor_size'.*did you mean anchor_sizes"):
        build_detector(FAMILIES[0], {"name": "faster_rcnn", "anchor_size": [32]}, 2)


def test_unknown_backbone_lists_valid():
    with pytest.raises(ValueError, match="unknown backbone 'resnet5'.*detection-ready backbones:.*resnet50"):
        build_detector("resnet5", "faster_rcnn", 2)


def test_cifar_backbone_is_refused():
    cifar = backbones.list_models(detection_ready=False)
    if not cifar:
        pytest.skip("no CIFAR model registered")
    with pytest.raises(ValueError, match=f"{cifar[0]}.*not detection-ready.*c2..c5"):
        build_detector(cifar[0], "faster_rcnn", 2)


def test_anchor_sizes_must_match_the_maps():
    with pytest.raises(ValueError, match="anchor_sizes has 2 entries but the detector has 5 feature maps"):
        build_detector(FAMILIES[0], {"name": "faster_rcnn", "anchor_sizes": [32, 64]}, 2)
    with pytest.raises(ValueError, match="aspect_ratios has 1 entries"):
        build_detector(FAMILIES[0], {"name": "ssd", "aspect_ratios": [[2]]}, 2)


def test_levels_must_be_consecutive_and_exist():
    with pytest.raises(ValueError, match="consecutive"):
        build_detector(FAMILIES[0], {"name": "faster_rcnn", "levels": ["c2", "c4"], "anchor_sizes": [1, 2, 3]}, 2)
    with pytest.raises(ValueError, match="unknown feature level 'c7'"):
        build_detector(FAMILIES[0], {"name": "ssd", "levels": ["c5", "c7"]}, 2)


def test_num_classes_must_be_positive():
    with pytest.raises(ValueError, match="num_classes=0"):
        build_detector(FAMILIES[0], "ssd", 0)


def test_mismatched_detector_weights_are_named(tmp_path):
    model = build_detector(FAMILIES[0], {"name": "ssdlite", **SMALL["ssdlite"]}, num_classes=2)
    state = model.state_dict()
    state.pop(next(iter(state)))
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(backbones.CheckpointMismatchError, match="missing"):
        load_detector_weights(model, path)
