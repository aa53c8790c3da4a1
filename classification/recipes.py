"""Training recipes of the papers, as plain torch pieces (no Lightning here).

* :func:`classification_loss`: cross-entropy with label smoothing (Inception-v3 §7, NASNet A.7: 0.1) plus the
  auxiliary head's loss weighted by ``aux_weight`` (Inception-v3 / NASNet A.7: 0.4).
* :class:`ModelEma`: exponential moving average of the weights, used for evaluation (NASNet A.7: decay 0.9999).
* :func:`update_drop_path`: ScheduledDropPath progress (NASNet A.5: drop probability rises linearly over training).
* :class:`Cutout` (DeVries & Taylor 2017, arXiv:1708.04552; NASNet Table 1 "+ cutout").
* Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531; MobileNet §4.7 trains small models to mimic a large
  one): :func:`soft_target_loss`, the ``teacher_logits`` term of :func:`classification_loss`, and
  :func:`load_classifier`, which rebuilds a trained classifier (a teacher, or a model to compress) from a file.

The optimiser (TensorFlow's RMSProp among them) and the learning-rate schedule of a recipe are its ``conf/solver``
file, built by :mod:`training.optim` as for every task.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import backbones
from backbones import set_drop_path_progress
from backbones.checks import check, check_keys, did_you_mean

logger = logging.getLogger(__name__)

#: keys of the ``distill`` group (conf/classify.yaml); the teacher itself is the top-level ``teacher`` key
DISTILL_KEYS = ("temperature", "weight", "teacher_model")


# ---- loss ------------------------------------------------------------------------------------------------------------
def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    Hinton et al. 2015 §2: the soft targets' gradients scale as ``1 / T**2``, so the term is multiplied by ``T**2`` to
    keep its share of the loss when the temperature changes. Computed in float32 (log-softmax of both sides).
    """
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def classification_loss(
    output: Tensor | tuple[Tensor, Tensor],
    target: Tensor,
    label_smoothing: float = 0.0,
    aux_weight: float = 0.0,
    teacher_logits: Tensor | None = None,
    temperature: float = 1.0,
    distill_weight: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the logits, plus ``aux_weight`` times that of the auxiliary logits when the model returns
    ``(logits, aux_logits)`` (NASNet / Inception aux head in training mode). Both use the same label smoothing.

    With ``teacher_logits`` the main term is distilled (Hinton et al. 2015 §2):
    ``(1 - w) * CE(logits, target) + w * soft_target_loss(logits, teacher_logits, T)`` with ``w = distill_weight``;
    the auxiliary head keeps its hard-label loss.

    Returns:
        the total loss and its parts ``{"main": ..., "aux": ..., "hard": ..., "soft": ...}`` (``aux`` only when
        present, ``hard`` / ``soft`` only when distilling).
    """
    aux = None
    if isinstance(output, tuple | list):
        output, aux = output
    main = F.cross_entropy(output.float(), target, label_smoothing=label_smoothing)
    parts = {}
    if teacher_logits is not None:
        soft = soft_target_loss(output, teacher_logits, temperature)
        parts.update(hard=main.detach(), soft=soft.detach())
        main = (1.0 - distill_weight) * main + distill_weight * soft
    parts["main"] = main.detach()
    loss = main
    if aux is not None:
        if aux_weight <= 0:
            raise ValueError(
                "the model returned auxiliary logits but recipe.aux_weight is 0; set aux_weight (NASNet A.7: 0.4) "
                "or build the model without its aux head"
            )
        aux_loss = F.cross_entropy(aux.float(), target, label_smoothing=label_smoothing)
        parts["aux"] = aux_loss.detach()
        loss = main + aux_weight * aux_loss
    return loss, parts


# ---- weight EMA ------------------------------------------------------------------------------------------------------
class ModelEma(nn.Module):
    """A copy of ``model`` whose parameters follow ``ema = d * ema + (1 - d) * param`` after each optimiser step.

    With ``warmup=True`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates: TensorFlow's
    ``ExponentialMovingAverage(decay, num_updates)`` as the TF-slim trainer used it, so that a 0.9999 average is
    meaningful in short runs. Buffers (BN running statistics, themselves running averages) are copied.
    The copy never requires grad, so it is not trained and DDP ignores it; it is saved in checkpoints.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in (0, 1)")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params.get(name)
            if e is not None:
                e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            e = ema_buffers.get(name)
            if e is not None:
                e.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> ModelEma:
        super().train(mode)
        self.module.eval()  # the average is only evaluated, never trained
        return self

    def forward(self, x: Tensor) -> Any:
        return self.module(x)


# ---- ScheduledDropPath ----------------------------------------------------------------------------------------------
def drop_path_progress(step: int, total_steps: int) -> float:
    """Fraction of training done, in [0, 1]: the factor ScheduledDropPath scales its drop probability by."""
    return min(1.0, max(0.0, step / max(1, total_steps)))


def update_drop_path(model: nn.Module, step: int, total_steps: int) -> float:
    """Set the ScheduledDropPath progress of every scheduled ``DropPath`` in ``model``; returns the progress."""
    p = drop_path_progress(step, total_steps)
    set_drop_path_progress(model, p)
    return p


# ---- cutout ----------------------------------------------------------------------------------------------------------
class Cutout(nn.Module):
    """Zero one ``size`` x ``size`` square at a uniformly random centre of a (normalised) ``(C, H, W)`` image; the
    square is clipped at the borders, as in DeVries & Taylor's reference code (applied after normalisation)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"cutout size={size} must be >= 1 (0 disables cutout)")
        self.size = int(size)

    def forward(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size - self.size // 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size - self.size // 2)
        out = img.clone()
        out[..., y0:y1, x0:x1] = 0
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}"


# ---- trained classifiers (distillation teachers, models to compress) -------------------------------------------------
def is_run_checkpoint(obj: Any) -> bool:
    """Whether a loaded file is a ``tools/train_cls.py`` checkpoint (its hyper-parameters name the model)."""
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    return isinstance(hp, dict) and "model_name" in hp and "num_classes" in hp and "state_dict" in obj


def load_classifier(
    source: str | os.PathLike, model_name: str | None = None, **options: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """A trained classifier, in eval mode, and what it is.

    Args:
        source: a ``tools/train_cls.py`` checkpoint (``.ckpt``: its hyper-parameters give the model, its options and
            its class count; the EMA weights when the run kept an average, since its evaluation used them), a state
            dict file of ``model_name`` in any layout ``pretrained=`` reads (ours, a twin's; the class count is its
            classifier's rows), a Deep Compression ``.dcmp`` file (it names its model), or a registered model name
            with published weights (the card's default source).
        model_name: the registered model of a state-dict file (a checkpoint and a model name say it themselves).
        options: more ``create_model`` options (e.g. ``channels_last``).

    Returns:
        ``(model, info)``: ``info`` has ``kind`` (``checkpoint`` / ``state_dict`` / ``dcmp`` / ``published``),
        ``model``, ``num_classes``, ``source`` and, for a checkpoint, its ``hyper_parameters``.

    Raises:
        FileNotFoundError: ``source`` is neither a file nor a registered model name (close names suggested).
        ValueError: a state-dict file without ``model_name``, or a model without published weights.
    """
    from backbones.compression import is_compressed, load_compressed
    from backbones.registry import build
    from backbones.weights import load_state_dict_checked, read_state_dict

    path = os.path.expanduser(os.fspath(source))
    if not os.path.isfile(path):
        if path not in backbones.list_models():
            raise FileNotFoundError(
                f"{source!r} is neither a file nor a registered model name{did_you_mean(path, backbones.list_models())}"
            )
        card = backbones.model_card(path)
        if card.default_source is None:
            raise ValueError(f"{source!r} has no published weights; give a checkpoint or state dict of it instead")
        published = card.source(card.default_source).num_classes
        num = published - 1 if published == 1001 else published  # the loader drops TensorFlow's background class
        model = backbones.create_model(path, pretrained=True, num_classes=num, **options)
        return model.eval(), {"kind": "published", "model": path, "num_classes": num, "source": path}
    if is_compressed(path):
        model = load_compressed(path, **options).eval()
        return model, {"kind": "dcmp", "model": model.model_name, "num_classes": model.num_classes, "source": path}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if is_run_checkpoint(obj):
        hp = dict(obj["hyper_parameters"])
        opts = {k: v for k, v in dict(hp.get("model_options") or {}).items() if k != "pretrained"}
        model = backbones.create_model(hp["model_name"], num_classes=int(hp["num_classes"]), **{**opts, **options})
        state = obj["state_dict"]
        prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        load_state_dict_checked(model, weights, f"{path!r} ({prefix.rstrip('.')} weights)")
        info = {"kind": "checkpoint", "model": hp["model_name"], "num_classes": int(hp["num_classes"])}
        return model.eval(), {**info, "source": path, "hyper_parameters": hp}
    if not model_name:
        raise ValueError(
            f"{source!r} is a state dict, which does not say its model; name the registered model too (a teacher: "
            "distill.teacher_model=<name>; tools/compress.py: --model <name>)"
        )
    name = str(model_name)
    backbones.model_card(name)  # an unknown name raises, with close names
    with torch.device("meta"):  # the classifier's name without building weights
        classifier_name = build(name, {}).classifier_name
    classifier = read_state_dict(path).get(f"{classifier_name}.weight")
    num = {"num_classes": int(classifier.shape[0])} if classifier is not None else {}
    model = backbones.create_model(name, pretrained=path, **num, **options)
    return model.eval(), {"kind": "state_dict", "model": name, "num_classes": model.num_classes, "source": path}


# ---- distillation: the teacher -------------------------------------------------------------------------------------
def check_distillation(teacher: Any, distill: Any) -> None:
    """``teacher`` and the ``distill`` group, before any work: known keys, ``temperature > 0``, ``weight`` in
    [0, 1], a registered ``teacher_model``, and a teacher that is a file or a registered model with published
    weights. (Its class count is checked against the dataset's when it is loaded, before the student is built.)"""
    d = dict(distill or {})
    check_keys(d, DISTILL_KEYS, "distill")
    t, w = d.get("temperature", 1.0), d.get("weight", 0.0)

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    check("distill.temperature", t, number(t) and t > 0, "use a number > 0 (Hinton et al. 2015 use 1 to 20)")
    check(
        "distill.weight", w, number(w) and 0 <= w <= 1, "use a number in [0, 1] (0: labels only, 1: soft targets only)"
    )
    if d.get("teacher_model") is not None:
        backbones.model_card(str(d["teacher_model"]))  # raises, with close names
    if teacher in (None, "") or os.path.isfile(os.path.expanduser(str(teacher))):
        return
    if str(teacher) not in backbones.list_models():
        raise FileNotFoundError(
            f"teacher={teacher!r}: no such file, and not a registered model"
            f"{did_you_mean(teacher, backbones.list_models())}; give a tools/train_cls.py checkpoint "
            "(<run>/checkpoints/last.ckpt), a state-dict file with distill.teacher_model=<its model>, or a registered "
            "model name with published weights"
        )
    if backbones.model_card(str(teacher)).default_source is None:
        raise ValueError(f"teacher={teacher!r} has no published weights; give a checkpoint of a trained {teacher}")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Teacher(nn.Module):
    """A trained classifier whose logits are the soft targets of distillation: always in eval mode (its dropout off,
    its BatchNorm statistics fixed), never requiring grad, and run under ``no_grad``.

    The student's module keeps it outside its module tree, so it is not in the optimiser, the DDP wrapper or the
    checkpoints; the checkpoints' hyper-parameters record its source and the SHA-256 of its file, and a resumed run
    rebuilds it from there. Inputs normalised for the student are renormalised to the teacher's mean and std.
    """

    def __init__(self, model: nn.Module, scale: Tensor | None = None, shift: Tensor | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if self.scale is not None:
            x = x * self.scale + self.shift  # (x * std_s + mean_s - mean_t) / std_t
        out = self.model(x)
        return out[0] if isinstance(out, tuple | list) else out


def build_teacher(
    teacher: str, distill: dict[str, Any], num_classes: int, norm: tuple[Any, Any] | None, **options: Any
) -> tuple[Teacher, dict[str, Any]]:
    """The :class:`Teacher` of ``teacher=`` and its record for the hyper-parameters.

    Args:
        norm: ``(mean, std)`` the student's inputs are normalised with, when the teacher expects its own card's;
            None when the dataset fixes the normalisation of both.

    Raises:
        ValueError: the teacher has another number of classes than the dataset (before published weights download).
    """
    src = str(teacher)
    if not os.path.isfile(os.path.expanduser(src)):
        card = backbones.model_card(src)
        published = card.source(card.default_source).num_classes
        if published - (published == 1001) != num_classes:  # the loader drops TensorFlow's background class
            raise ValueError(
                f"teacher={src!r}: its published weights classify {published - (published == 1001)} classes, the "
                f"dataset has {num_classes}; train a teacher on this dataset and give its checkpoint"
            )
    model, info = load_classifier(src, distill.get("teacher_model"), **options)
    if info["num_classes"] != num_classes:
        raise ValueError(
            f"teacher={src!r} ({info['model']}) classifies {info['num_classes']} classes, the dataset has "
            f"{num_classes}; the teacher must be trained on the same classes"
        )
    scale = shift = None
    t_card = backbones.model_card(info["model"])
    if norm is not None and (tuple(norm[0]), tuple(norm[1])) != (tuple(t_card.mean), tuple(t_card.std)):
        mean_s, std_s = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in norm)
        mean_t, std_t = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (t_card.mean, t_card.std))
        scale, shift = std_s / std_t, (mean_s - mean_t) / std_t
    record = {**distill, "teacher": src, "teacher_model": info["model"]}
    record["teacher_sha256"] = file_sha256(info["source"]) if info["kind"] != "published" else None
    logger.info("teacher: %s (%s, %d classes), T=%s, weight=%s", src, info["model"], num_classes,
                distill.get("temperature"), distill.get("weight"))  # fmt: skip
    return Teacher(model, scale, shift), record


def summarize_runs(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The top-1 of every run under ``root`` (each ``results.json`` below it, e.g. a Hydra sweep folder), grouped by
    student model and teacher settings: ``model``, ``teacher`` (None without), ``temperature``, ``weight``, ``n``,
    ``seeds``, ``mean``, ``std`` (sample standard deviation), ``min``, ``max`` and every ``top1``."""
    import json
    import statistics
    from pathlib import Path

    groups: dict[tuple, list[tuple[int, float]]] = {}
    for path in sorted(Path(root).rglob("results.json")):
        r = json.loads(path.read_text())
        t = r.get("teacher") or {}
        key = (r["model"], t.get("teacher"), t.get("temperature"), t.get("weight"))
        groups.setdefault(key, []).append((int(r.get("seed", 0)), float(r["top1"])))
    out = []
    for (model, teacher, temperature, weight), runs in groups.items():
        top1 = [v for _, v in sorted(runs)]
        out.append({
            "model": model, "teacher": teacher, "temperature": temperature, "weight": weight, "n": len(top1),
            "seeds": sorted(s for s, _ in runs), "mean": statistics.fmean(top1),
            "std": statistics.stdev(top1) if len(top1) > 1 else 0.0, "min": min(top1), "max": max(top1), "top1": top1,
        })  # fmt: skip
    return out
