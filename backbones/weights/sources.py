"""The published ImageNet weights of every registered network, as data: one table, read into the model cards.

Every :class:`Source` records what its publisher states: the URL, the hash the publisher gives (torch.hub's and
Cadene's sha256 prefix in the file name, the md5 ``file_hash`` of Keras' ``get_file``; None where none is published),
the license of the publishing project, the top-1 the publisher reports, and the ``reference`` whose numerics
reproduce the publisher's network exactly (see ``docs/weights.md``). Where each figure was read:

* torchvision: ``torchvision.models.get_model_weights(name).DEFAULT`` (``url``, ``meta["_metrics"]``), BSD-3-Clause.
* timm: the default pretrained tag of ``timm.models`` and ``results/results-imagenet.csv`` of
  huggingface/pytorch-image-models (top-1 at the tag's input size); weights on the Hugging Face hub, no hash given.
* Keras: ``keras/src/applications/{mobilenet,xception,densenet,nasnet}.py`` (``BASE_WEIGHT_PATH``, file names,
  ``file_hash``; mobilenet.py passes none) and the keras-team/keras-applications README table (top-1 = 100 - the
  top-1 error it reports; it gives MobileNet at 224 px only). keras-applications is MIT-licensed.
* Cadene: ``pretrainedmodels/models/*.py`` ``pretrained_settings`` (URL; the sha256 prefix in the file name, checked
  by torch's loader) and the Cadene/pretrained-models.pytorch README "Our porting" rows; BSD-3-Clause. The TF ports
  (NASNet-A, PNASNet-5) keep TensorFlow's 1001 classes (index 0 = background).
* megvii-model/ShuffleNet-Series: ``ShuffleNetV1/README.md`` (top-1 = 100 - the top-1 error it lists); the weights
  are published only in a OneDrive folder (no file URL, no hash); MIT.
* TF-slim: ``research/slim/nets/mobilenet_v1.md``, ``nets/nasnet/README.md`` and the slim README (tarball URLs,
  top-1); no hash published; 1001 classes; Apache-2.0.

This module imports nothing: the registry reads it while the families register.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

#: file formats :func:`backbones.weights.load_pretrained` reads
FORMATS = ("torch", "keras_h5", "tf_slim", "timm", "torchvision")


@dataclass(frozen=True)
class Source:
    """One published set of ImageNet weights of a network.

    Attributes:
        name: what ``pretrained="<name>"`` selects (``"keras"``, ``"keras-160"``, ``"cadene"``, ...).
        format: one of :data:`FORMATS`; ``"timm"`` / ``"torchvision"`` are fetched by that library.
        url: where the file is published (a folder page when the publisher gives no file link).
        hash: the hash the publisher gives, or None when it publishes none.
        hash_kind: ``"sha256-prefix"`` (torch.hub's ``name-<prefix>.pth``), ``"md5"`` or ``"sha256"``.
        license: license of the publishing project.
        top1: ImageNet top-1 (%) the publisher reports for this file, or None.
        reference: the ``reference`` whose numerics reproduce the publisher's network exactly.
        input_size: the resolution the file was trained for / evaluated at.
        num_classes: classifier rows in the file (1001: TensorFlow's background class first).
        library_name: the name the twin library loads (``"densenet121.tv_in1k"``, ``"densenet121:IMAGENET1K_V1"``).
        member: checkpoint prefix inside an archive (TF-slim tarballs).
        downloadable: False when ``url`` is no file link (the user downloads by hand and passes the path).
        notes: what else a user should know.
    """

    name: str
    format: str
    url: str
    hash: str | None
    hash_kind: str | None
    license: str
    top1: float | None
    reference: str | None
    input_size: int = 224
    num_classes: int = 1000
    library_name: str | None = None
    member: str | None = None
    downloadable: bool = True
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelWeights:
    """The weights data of one model: sources, the references it accepts and the one ``reference_padding`` means."""

    sources: tuple[Source, ...] = ()
    references: tuple[str, ...] = ()
    padding_reference: str | None = None
    default: str | None = None


def _prefix(url: str) -> str:
    m = re.search(r"-([a-f0-9]{6,})\.", url.rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"{url} has no hash prefix in its file name")
    return m.group(1)


def _tv(library_name: str, url: str, top1: float) -> Source:
    return Source("torchvision", "torchvision", url, _prefix(url), "sha256-prefix", "BSD-3-Clause", top1,
                  "torchvision", library_name=library_name)  # fmt: skip


def _timm(library_name: str, top1: float, input_size: int = 224, license: str = "Apache-2.0") -> Source:
    url = f"https://huggingface.co/timm/{library_name}"
    return Source("timm", "timm", url, None, None, license, top1, "timm", input_size, library_name=library_name)


_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"


def _cadene(file: str, top1: float, reference: str | None, input_size: int = 224, num_classes: int = 1000) -> Source:
    url = _CADENE + file
    return Source("cadene", "torch", url, _prefix(url), "sha256-prefix", "BSD-3-Clause", top1, reference,
                  input_size, num_classes)  # fmt: skip


_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _keras(path: str, md5: str | None, top1: float | None, input_size: int = 224, name: str = "keras", **kw) -> Source:
    return Source(name, "keras_h5", _KERAS + path, md5, "md5" if md5 else None, "MIT", top1, kw.pop("reference", "tf"),
                  input_size, **kw)  # fmt: skip


def _tfslim(url: str, member: str, top1: float, input_size: int, name: str = "tf-slim") -> Source:
    return Source(name, "tf_slim", url, None, None, "Apache-2.0", top1, "tf", input_size, 1001, member=member)


# ---- MobileNet v1: Keras (16 files: 4 widths x 4 resolutions) and TF-slim (the same 16 checkpoints) --------------
# keras-applications README top-1 errors at 224 px: 48.418 / 35.708 / 31.588 / 29.576 (alpha 0.25 / 0.5 / 0.75 / 1)
_KERAS_MOBILENET_TOP1 = {"2_5": 51.582, "5_0": 64.292, "7_5": 68.412, "1_0": 70.424}
# TF-slim mobilenet_v1.md (checkpoints of 2018_02_22): top-1 per width and resolution
_SLIM_MOBILENET_TOP1 = {
    "1.0": {224: 70.9, 192: 70.0, 160: 68.0, 128: 65.2},
    "0.75": {224: 68.4, 192: 67.2, 160: 65.3, 128: 62.1},
    "0.5": {224: 63.3, 192: 61.7, 160: 59.1, 128: 56.3},
    "0.25": {224: 49.8, 192: 47.7, 160: 45.5, 128: 41.5},
}
_SLIM_MOBILENET = "http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/"


def _mobilenet(alpha: str, keras_alpha: str) -> tuple[Source, ...]:
    out = []
    for side in (224, 192, 160, 128):
        suffix = "" if side == 224 else f"-{side}"
        top1 = _KERAS_MOBILENET_TOP1[keras_alpha] if side == 224 else None
        note = "" if side == 224 else "Keras reports no accuracy at this resolution (TF-slim's checkpoint: see tf-slim)"
        out.append(_keras(f"mobilenet/mobilenet_{keras_alpha}_{side}_tf.h5", None, top1, side, f"keras{suffix}",
                          notes=note))  # fmt: skip
    for side in (224, 192, 160, 128):
        suffix = "" if side == 224 else f"-{side}"
        stem = f"mobilenet_v1_{alpha}_{side}"
        out.append(_tfslim(f"{_SLIM_MOBILENET}{stem}.tgz", f"{stem}.ckpt", _SLIM_MOBILENET_TOP1[alpha][side], side,
                           f"tf-slim{suffix}"))  # fmt: skip
    return tuple(out)


def _densenet(depth: int, tag: str, timm_top1: float, tv_hash: str, tv_top1: float, md5=None, keras_top1=None):
    """timm, torchvision and (121/169/201) Keras weights of DenseNet-<depth>."""
    name = f"densenet{depth}"
    sources = [
        _timm(f"{name}.{tag}", timm_top1),
        _tv(f"{name}:IMAGENET1K_V1", f"https://download.pytorch.org/models/{name}-{tv_hash}.pth", tv_top1),
    ]
    if md5 is not None:
        sources.append(_keras(f"densenet/{name}_weights_tf_dim_ordering_tf_kernels.h5", md5, keras_top1))
    return ModelWeights(tuple(sources), ("timm", "torchvision", "tf") if md5 else ())


_MOBILENET_REFS = ("timm", "tf")
_NAS_REFS = ("timm", "tf")
_NASNET_A_REFS = ("timm", "tf", "keras")
_MEGVII_FOLDER = "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo"
# ShuffleNetV1/README.md top-1 errors: (group, scale) -> 100 - error
_MEGVII_TOP1 = {
    (3, "2.0x"): 74.1, (8, "2.0x"): 72.9, (3, "1.5x"): 71.6, (8, "1.5x"): 71.0,
    (3, "1.0x"): 67.8, (8, "1.0x"): 68.0, (3, "0.5x"): 57.3, (8, "0.5x"): 58.8,
}  # fmt: skip


def _megvii(group: int, scale: str) -> ModelWeights:
    source = Source(
        "megvii", "torch", _MEGVII_FOLDER, None, None, "MIT", _MEGVII_TOP1[(group, scale)], "megvii",
        downloadable=False,
        notes=f"published only in a OneDrive folder (ShuffleNet-Series README 'Trained Models'): download the "
        f"ShuffleNetV1 {scale} group={group} file by hand and pass its path; their checkpoints wrap the state dict "
        f"as {{'state_dict': ...}} with DataParallel 'module.' prefixes, which the loader strips",
    )  # fmt: skip
    return ModelWeights((source,), ("megvii",), None, "megvii")


WEIGHTS: dict[str, ModelWeights] = {
    # ---- DenseNet -------------------------------------------------------------------------------------------------
    "densenet121": _densenet(121, "ra_in1k", 75.574, "a639ec97", 74.434, "9d60b8095a5708f2dcce2bca79d332c7", 74.520),
    "densenet161": _densenet(161, "tv_in1k", 77.384, "8d451a50", 77.138),
    "densenet169": _densenet(169, "tv_in1k", 75.922, "b2777c0a", 75.6, "d699b8f76981ab1b30698df4c175e90b", 76.074),
    "densenet201": _densenet(201, "tv_in1k", 77.284, "c1103571", 76.896, "1ceb130c1ea1b78c3bf6114dbdfd8807", 77.064),
    # ---- MobileNet v1 ---------------------------------------------------------------------------------------------
    "mobilenet_v1_x1_0": ModelWeights(
        (_timm("mobilenetv1_100.ra4_e3600_r224_in1k", 75.388), *_mobilenet("1.0", "1_0")), _MOBILENET_REFS
    ),
    "mobilenet_v1_x0_75": ModelWeights(_mobilenet("0.75", "7_5"), _MOBILENET_REFS, None, "keras"),
    "mobilenet_v1_x0_5": ModelWeights(_mobilenet("0.5", "5_0"), _MOBILENET_REFS, None, "keras"),
    "mobilenet_v1_x0_25": ModelWeights(_mobilenet("0.25", "2_5"), _MOBILENET_REFS, None, "keras"),
    # ---- Xception -------------------------------------------------------------------------------------------------
    "xception": ModelWeights(
        (
            _timm("legacy_xception.tf_in1k", 79.058, 299),
            _cadene("xception-43020ad28.pth", 78.888, "timm", 299),
            _keras(
                "xception/xception_weights_tf_dim_ordering_tf_kernels.h5",
                "0a58e3b7378bc2990ea3b43d5981f1f6",
                79.006,
                299,
            ),
        ),
        ("timm", "tf"),
    ),  # fmt: skip
    # ---- SqueezeNet -----------------------------------------------------------------------------------------------
    "squeezenet1_0": ModelWeights(
        (_tv("squeezenet1_0:IMAGENET1K_V1", "https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth", 58.092),),
        ("torchvision", "caffe"),
    ),
    "squeezenet1_1": ModelWeights(
        (_tv("squeezenet1_1:IMAGENET1K_V1", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth", 58.178),),
        ("torchvision", "caffe"),
    ),
    "squeezenet1_0_bypass": ModelWeights((), ("torchvision", "caffe"), "torchvision"),
    "squeezenet1_0_complex_bypass": ModelWeights((), ("torchvision",), "torchvision"),
    # ---- ShuffleNet v1 (megvii publishes g3 and g8 at 0.5x-2.0x) ---------------------------------------------------
    **{
        f"shufflenet_v1_g{g}_x{s.replace('.', '_')[:-1]}": _megvii(g, s)
        for g in (3, 8)
        for s in ("0.5x", "1.0x", "1.5x", "2.0x")
    },
    "shufflenet_v1_g1_x1_0": ModelWeights((), ("megvii",)),
    "shufflenet_v1_g2_x1_0": ModelWeights((), ("megvii",)),
    "shufflenet_v1_g4_x1_0": ModelWeights((), ("megvii",)),
    # ---- ResNet / ResNeXt / SENet ---------------------------------------------------------------------------------
    "resnet50": ModelWeights(
        (
            _tv("resnet50:IMAGENET1K_V2", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", 80.858),
            _timm("resnet50.a1_in1k", 80.382),
        )
    ),
    "resnet101": ModelWeights(
        (
            _tv("resnet101:IMAGENET1K_V2", "https://download.pytorch.org/models/resnet101-cd907fc2.pth", 81.886),
            _timm("resnet101.a1h_in1k", 81.950),
        )
    ),
    "resnet152": ModelWeights(
        (
            _tv("resnet152:IMAGENET1K_V2", "https://download.pytorch.org/models/resnet152-f82ba261.pth", 82.284),
            _timm("resnet152.a1h_in1k", 82.818),
        )
    ),
    "resnext50_32x4d": ModelWeights(
        (
            _tv(
                "resnext50_32x4d:IMAGENET1K_V2",
                "https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth",
                81.198,
            ),
            _timm("resnext50_32x4d.a1h_in1k", 81.140),
        )
    ),  # fmt: skip
    "resnext101_32x4d": ModelWeights(
        (
            _timm("resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k", 80.936, license="CC-BY-NC-4.0"),
            _cadene("resnext101_32x4d-29e315fa.pth", 78.188, None),
        )
    ),
    "resnext101_32x8d": ModelWeights(
        (
            _tv(
                "resnext101_32x8d:IMAGENET1K_V2",
                "https://download.pytorch.org/models/resnext101_32x8d-110c445d.pth",
                82.834,
            ),
        )
    ),  # fmt: skip
    "resnext101_64x4d": ModelWeights(
        (
            _tv(
                "resnext101_64x4d:IMAGENET1K_V1",
                "https://download.pytorch.org/models/resnext101_64x4d-173b62eb.pth",
                83.246,
            ),
            _cadene("resnext101_64x4d-e77a0586.pth", 78.956, None),
        )
    ),  # fmt: skip
    "se_resnet50": ModelWeights(
        (_timm("legacy_seresnet50.in1k", 77.650), _cadene("se_resnet50-ce0d4300.pth", 77.636, "timm"))
    ),
    "se_resnet101": ModelWeights(
        (_timm("legacy_seresnet101.in1k", 78.370), _cadene("se_resnet101-7e38fcc6.pth", 78.396, "timm"))
    ),
    "se_resnet152": ModelWeights(
        (_timm("legacy_seresnet152.in1k", 78.662), _cadene("se_resnet152-d17c99b7.pth", 78.658, "timm"))
    ),
    "se_resnext50_32x4d": ModelWeights(
        (_timm("legacy_seresnext50_32x4d.in1k", 79.080), _cadene("se_resnext50_32x4d-a260b3a4.pth", 79.076, "timm"))
    ),
    "se_resnext101_32x4d": ModelWeights(
        (
            _timm("legacy_seresnext101_32x4d.in1k", 80.274),
            _cadene("se_resnext101_32x4d-3b2fe3d8.pth", 80.236, "timm"),
        )
    ),
    "senet154": ModelWeights((_timm("legacy_senet154.in1k", 81.320), _cadene("senet154-c7b49a05.pth", 81.304, "timm"))),
    # ---- NASNet-A, PNASNet-5, ENAS ---------------------------------------------------------------------------------
    "nasnet_a_large": ModelWeights(
        (
            _timm("nasnetalarge.tf_in1k", 82.638, 331),
            _cadene("nasnetalarge-a1897284.pth", 82.566, "tf", 331, 1001),
            _keras("nasnet/NASNet-large.h5", "11577c9a518f0070763c2b964a382f17", 82.498, 331),
            _tfslim(
                "https://storage.googleapis.com/download.tensorflow.org/models/nasnet-a_large_04_10_2017.tar.gz",
                "model.ckpt",
                82.7,
                331,
            ),
        ),
        _NASNET_A_REFS,
    ),  # fmt: skip
    "nasnet_a_mobile": ModelWeights(
        (
            _cadene("nasnetamobile-7e03cead.pth", 74.080, "tf", 224, 1001),
            _keras("nasnet/NASNet-mobile.h5", "020fb642bf7360b370c678b08e0adf61", 74.366),
            _tfslim(
                "https://storage.googleapis.com/download.tensorflow.org/models/nasnet-a_mobile_04_10_2017.tar.gz",
                "model.ckpt",
                74.0,
                224,
            ),
        ),
        _NASNET_A_REFS,
        "timm",
        "cadene",
    ),  # fmt: skip
    "pnasnet5_large": ModelWeights(
        (
            _timm("pnasnet5large.tf_in1k", 82.814, 331),
            _cadene("pnasnet5large-bf079911.pth", 82.736, "tf", 331, 1001),
            _tfslim(
                "https://storage.googleapis.com/download.tensorflow.org/models/pnasnet-5_large_2017_12_13.tar.gz",
                "model.ckpt",
                82.9,
                331,
            ),
        ),
        _NAS_REFS,
    ),  # fmt: skip
    "nasnet_a_cifar": ModelWeights((), _NAS_REFS, "timm"),
    "nasnet_a_cifar_7_2304": ModelWeights((), _NAS_REFS, "timm"),
    "nasnet_a_5_1538": ModelWeights((), _NAS_REFS, "timm"),
    "nasnet_a_7_1920": ModelWeights((), _NAS_REFS, "timm"),
    "enas_micro_cifar": ModelWeights((), ("tf",), "tf"),
    "enas_macro_cifar": ModelWeights((), ("tf",)),
}


def with_weights(name: str, card: Any) -> Any:
    """``card`` with this table's sources, accepted references, padding reference and default source filled in.

    Accepted references are the twins' libraries, the table's entry and every source's ``reference``; the padding
    reference is the first twin's library unless the table names one; the default source is the first twin's, else
    the table's, else the first downloadable source.
    """
    entry = WEIGHTS.get(name, ModelWeights())
    refs: list[str] = []
    for r in (*card.twins, *entry.references, *(s.reference for s in entry.sources)):
        if r is not None and r not in refs:
            refs.append(r)
    twin = next(iter(card.twins), None)
    padding = twin if twin is not None else entry.padding_reference
    names = [s.name for s in entry.sources]
    default = twin if twin in names else entry.default
    if default is None:
        default = next((s.name for s in entry.sources if s.downloadable), None)
    if default is not None and default not in names:
        raise ValueError(f"{name}: default source {default!r} is not one of its sources {names}")
    return replace(card, references=tuple(refs), padding_reference=padding, sources=entry.sources,
                   default_source=default)  # fmt: skip
