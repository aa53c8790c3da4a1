"""Training-recipe options of torchvision's Faster R-CNN that torchvision's constructor does not expose.

Both are torchvision extension points, not a fork: the modules stay torchvision's ``RegionProposalNetwork`` and
``RoIHeads`` (subclasses that override the loss, nothing else), and initialisation acts on the built modules.

* :func:`set_box_loss_beta`: the smooth-L1 ``beta`` of the RPN and box-head regression losses. torchvision uses 1/9
  (Detectron's legacy value); detectron2 defaults to 0, a plain L1 loss (``MODEL.RPN.SMOOTH_L1_BETA`` and
  ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA``). The normalisations stay torchvision's, which are detectron2's too:
  the RPN sum over sampled anchors / their number, the box-head sum over positive RoIs / the sampled RoIs.
* :func:`init_box_head`: detectron2's initialisation of the two-FC box head (``c2_xavier_fill``: uniform Kaiming
  with a=1 and zero bias) and of the predictor (class scores N(0, 0.01), box deltas N(0, 0.001), zero bias), in place
  of ``nn.Linear``'s default (weights and bias uniform in +-1/sqrt(fan_in)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

#: torchvision's smooth-L1 beta of both regression losses
TORCHVISION_BETA = 1 / 9


def _regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 (``beta`` > 0) or L1 (``beta`` == 0) over the rows given."""
    if beta == 0:
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


class BetaRPN(RegionProposalNetwork):
    """torchvision's RPN with the smooth-L1 ``beta`` of its box loss as an attribute (torchvision: 1/9)."""

    beta: float = TORCHVISION_BETA

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, dim=0))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg, dim=0))[0]], dim=0)
        labels_ = torch.cat(labels, dim=0)
        targets = torch.cat(regression_targets, dim=0)
        box_loss = _regression_loss(pred_bbox_deltas[pos], targets[pos], self.beta) / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_[sampled])
        return objectness_loss, box_loss


class BetaRoIHeads(RoIHeads):
    """torchvision's box RoI heads with the smooth-L1 ``beta`` of the box loss as an attribute (torchvision: 1/9).

    Only the training pass of a box-only head is its own (torchvision's ``forward`` calls the module function
    ``fastrcnn_loss`` with beta 1/9); inference, and heads with masks or keypoints, are torchvision's ``forward``.
    """

    beta: float = TORCHVISION_BETA

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: ANN001 - torchvision's signature
        if not self.training or self.has_mask() or self.has_keypoint():
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None in training mode")
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(x)
        labels_, targets_ = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        pos = torch.where(labels_ > 0)[0]
        box_regression = box_regression.reshape(labels_.numel(), -1, 4)  # (R, classes, 4): the deltas of each class
        box_loss = _regression_loss(box_regression[pos, labels_[pos]], targets_[pos], self.beta) / labels_.numel()
        return [], {"loss_classifier": F.cross_entropy(class_logits, labels_), "loss_box_reg": box_loss}


def set_box_loss_beta(model: nn.Module, beta: float) -> None:
    """Give a torchvision ``FasterRCNN``'s RPN and box head the smooth-L1 ``beta`` (0: L1, detectron2's default).

    The two modules become :class:`BetaRPN` / :class:`BetaRoIHeads`: subclasses that add no state but the
    ``beta`` attribute, so their parameters, buffers and state-dict keys are torchvision's.
    """
    if beta < 0:
        raise ValueError(f"box_loss_beta={beta!r} is not valid; give 0 (L1) or a positive smooth-L1 beta")
    for attr, cls in (("rpn", BetaRPN), ("roi_heads", BetaRoIHeads)):
        module = getattr(model, attr)
        if type(module) not in (cls, cls.__mro__[1]):
            raise TypeError(f"model.{attr} is a {type(module).__name__}, not torchvision's {cls.__mro__[1].__name__}")
        module.__class__ = cls  # the same object and state; only the loss method differs
        module.beta = float(beta)


@torch.no_grad()
def init_box_head(roi_heads: RoIHeads) -> None:
    """detectron2's initialisation of a two-FC box head and its ``FastRCNNPredictor`` (see the module docstring)."""
    for m in roi_heads.box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
    predictor = roi_heads.box_predictor
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
