"""``conf/detector/<name>.yaml``, generated from :data:`detection.models.DETECTORS` (the one source of the detector
options and their defaults): ``python tools/model_zoo.py --write-conf`` writes them, a test checks they match.

A new detector is a ``DETECTORS`` entry (plus its line in :data:`DESCRIPTIONS`, and a note in :data:`KEY_NOTES` for a
new key); then regenerate. Keys in :data:`FROM_DATASET` are written as interpolations of the dataset group.
"""

from __future__ import annotations

import os
from typing import Any

#: the header of each file: what the detector is, where it comes from
DESCRIPTIONS = {
    "faster_rcnn": "Faster R-CNN with FPN (Lin et al. 2017): backbone levels -> torchvision FeaturePyramidNetwork (+ a "
    'stride-2 "pool" level) -> RPN (one anchor size per map) -> MultiScaleRoIAlign -> two-FC box head. Defaults: '
    "torchvision's fasterrcnn_resnet50_fpn.",
    "faster_rcnn_c4": "Faster R-CNN C4 as in the NASNet paper (arXiv:1707.07012, section 4.3, Table 4): one "
    "stride-16 map (c4), RoIAlign, the backbone's last stage as the box head (Backbone.make_box_head), 300 RPN "
    "proposals per image at test time.",
    "retinanet": "RetinaNet (Lin et al. 2017, arXiv:1708.02002, section 4): backbone levels c3..c5 -> torchvision "
    "FeaturePyramidNetwork + P6, P7 (LastLevelP6P7, from C5 as in the paper) -> torchvision RetinaNetHead (focal "
    "loss, 4 convs per branch), 3 scales x 3 aspect ratios of anchors per map. Defaults: torchvision's "
    "retinanet_resnet50_fpn.",
    "fcos": "FCOS (Tian et al. 2019, arXiv:1904.01355, section 3.2): backbone levels c3..c5 -> torchvision "
    "FeaturePyramidNetwork + P6, P7 (LastLevelP6P7, from P5 as in the paper) -> torchvision FCOSHead (GroupNorm "
    "towers, centerness), one anchor point per location whose size is the map's stride. Defaults: torchvision's "
    "fcos_resnet50_fpn.",
    "ssd": "SSD (Liu et al. 2016), SSD300/512 style: backbone levels c3..c5 + 1x1 -> 3x3/2 extra layers, torchvision "
    "SSDHead and DefaultBoxGenerator. Side 320 (not 300) keeps every backbone level exactly side / stride; size=512 "
    "for SSD512.",
    "ssdlite": "SSDLite (Sandler et al. 2018, MobileNetV2 paper): levels c4, c5 + depthwise-separable extra layers, "
    "torchvision SSDLiteHead (depthwise heads) and DefaultBoxGenerator; for MobileNet, ShuffleNet and NASNet-Mobile "
    "backbones.",
}
#: what each key means, in the order the files list them (a detector-specific note wins: ``"<detector>.<key>"``)
KEY_NOTES = {
    "levels": "backbone levels into the neck (c<i> has stride 2**i)",
    "level": "the one backbone level of the RPN and the RoI head",
    "fpn_channels": "FPN width",
    "pool_level": "FPN P6: stride-2 subsampling of the last level, RPN only",
    "p6p7_from": "P6, P7 (stride-2 3x3 convs) from c5 (RetinaNet paper) or p5 (FCOS paper)",
    "fcos.fpn_channels": "FPN width, a multiple of 32 (the head's GroupNorm)",
    "num_convs": "3x3 convs of each head tower",
    "size": "square input side",
    "extra_channels": "channels of the stride-2 extra layers after the last level",
    "ssdlite.extra_channels": "torchvision ssdlite320_mobilenet_v3_large",
    "anchor_sizes": "anchor sides in pixels, one per map",
    "faster_rcnn.anchor_sizes": "anchor sides in pixels, one per map: levels + pool",
    "faster_rcnn_c4.anchor_sizes": "anchor sides in pixels, all on the one map",
    "retinanet.anchor_sizes": "base anchor side per map P3..P7, each x 2^(i / scales_per_octave)",
    "scales_per_octave": "anchor scales per map (paper: 3)",
    "aspect_ratios": "anchor height / width",
    "ssd.aspect_ratios": "one list per map (torchvision ssd300_vgg16)",
    "ssdlite.aspect_ratios": "one list per map",
    "min_ratio": "smallest default-box scale (fraction of the image side)",
    "max_ratio": "largest default-box scale",
    "min_size": "shorter image side after resizing (the dataset's)",
    "max_size": "longer image side at most (the dataset's)",
    "rpn_pre_nms_top_n_train": "proposals per map before NMS, training",
    "rpn_pre_nms_top_n_test": "proposals per map before NMS, evaluation",
    "rpn_post_nms_top_n_train": "proposals per image after NMS, training",
    "rpn_post_nms_top_n_test": "proposals per image after NMS, evaluation",
    "faster_rcnn_c4.rpn_post_nms_top_n_test": 'paper: "300-500 RPN proposals per image"',
    "rpn_batch_size_per_image": "anchors sampled per image for the RPN loss",
    "box_batch_size_per_image": "RoIs sampled per image for the box-head loss",
    "rpn_positive_fraction": "at most this fraction of the RPN's sampled anchors are positives",
    "box_positive_fraction": "at most this fraction of the sampled RoIs are foreground",
    "box_loss_beta": "smooth-L1 beta of the RPN and box losses: torchvision 1/9, detectron2 0 (= L1)",
    "fg_iou_thresh": "anchors with IoU >= this are foreground",
    "bg_iou_thresh": "anchors with IoU < this are background",
    "center_sampling_radius": "positives within this many strides of an object's centre",
    "iou_thresh": "IoU that matches a default box to an object",
    "box_score_thresh": "detections below this score are dropped",
    "score_thresh": "detections below this score are dropped",
    "box_nms_thresh": "per-class NMS IoU of the detections",
    "nms_thresh": "per-class NMS IoU of the detections",
    "topk_candidates": "best boxes per class kept before NMS",
    "box_detections_per_img": "COCOeval counts the top 100 per image",
    "detections_per_img": "COCOeval counts the top 100 per image",
    "roi_output_size": "RoIAlign output side",
    "faster_rcnn_c4.roi_output_size": "the last stage (stride 2) makes it 7 x 7, then global average pooling",
    "sampling_ratio": "RoIAlign sampling points per bin side",
    "representation_size": "width of the two FC layers of the box head",
    "head_init": "box head + predictor init: torchvision (nn.Linear default) | detectron2",
}
#: detector keys whose value is the dataset group's (resize settings live with the data)
FROM_DATASET = ("min_size", "max_size")
_NOTE_COLUMN = 40


def _yaml(value: Any) -> str:
    """One value in YAML flow style (``[c2, c3]``, ``true``, ``0.05``)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # [[2, 3]] * 6 is six lists, not anchors to one
            return True

    text = yaml.dump(value, Dumper=Dumper, default_flow_style=True, width=10**6)
    return text.removesuffix("\n...\n").strip()


def detector_conf(name: str) -> str:
    """The ``conf/detector/<name>.yaml`` text of a detector of ``DETECTORS``: a header, then every option at its
    default with what it means."""
    import textwrap

    from .models import DETECTORS

    if name not in DETECTORS:
        from backbones.checks import check_choice

        check_choice("detector", name, sorted(DETECTORS))
    header = textwrap.wrap(DESCRIPTIONS.get(name, f"The {name} detector."), 118)
    lines = [f"# {line}" for line in header]
    lines += [
        "# Generated by `python tools/model_zoo.py --write-conf` from detection.models.DETECTORS (edit it there, and",
        "# the notes in detection/config.py); an unknown key is an error.",
        f"name: {name}",
    ]
    order = [k for k in KEY_NOTES if "." not in k]
    options = DETECTORS[name]
    for key in sorted(options, key=lambda k: order.index(k) if k in order else len(order)):
        value = options[key]
        text = f"${{dataset.{key}}}" if key in FROM_DATASET else _yaml(value)
        note = KEY_NOTES.get(f"{name}.{key}", KEY_NOTES.get(key))
        line = f"{key}: {text}"
        lines.append(f"{line.ljust(_NOTE_COLUMN - 1)} # {note}" if note else line)
    return "\n".join(lines) + "\n"


def write_detector_confs(conf_dir: str | os.PathLike) -> list[str]:
    """Write ``<conf_dir>/<name>.yaml`` for every detector of ``DETECTORS`` and delete stale ones; returns the names."""
    from training.config import write_conf_files

    from .models import DETECTORS

    return write_conf_files(conf_dir, {name: detector_conf(name) for name in sorted(DETECTORS)})
