"""The registered NAS models: NASNet-A (ImageNet and CIFAR, the paper's N @ F rows), PNASNet-5, ENAS micro and
macro. Each row is data fed to a builder (:func:`~backbones.nas.network.nasnet_a`, :class:`NASNet`, :class:`ENASMacro`)
with a model card of the paper's numbers; ``backbones/__init__.py`` imports this module to register them.
"""

from __future__ import annotations

from ..registry import make_card, register_model
from .macro import ENASMacro
from .network import NASNet, nasnet_a

_NASNET = "Zoph et al. 2018, Learning Transferable Architectures for Scalable Image Recognition, arXiv 1707.07012"
_TF_COUNTS = (
    "params/MACs: arch_reference.md 8.5, computed on TF-slim semantics (conv + linear + BN affine; BN moving "
    "statistics excluded). "
)

register_model(
    "nasnet_a_large",
    nasnet_a,
    make_card(
        "inception",
        family="nas",
        paper=_NASNET,
        table="Table 2 (NASNet-A 6 @ 4032, 331 px); counts: arch_reference.md 8.5 = timm nasnetalarge",
        params=88_753_150,
        macs=23_783_414_658,
        input_size=331,
        top1=82.7,
        crop_pct=0.911,
        twins={"timm": "nasnetalarge"},
        paper_params=88.9e6,
        paper_macs=23.8e9,
        macs_reference_padding=True,
        notes=_TF_COUNTS + "The paper's 88.9 M includes the 2 x 98,334 BN moving statistics (88,949,818). "
        "Aux head (aux_head=True) adds 4,567,784. Paper training: drop_path_rate 0.3 (keep 0.7), aux weight 0.4.",
    ),
    num_cells=6,
    penultimate_filters=4032,
    stem="imagenet",
    stem_multiplier=3.0,
    skip_reduction_layer_input=True,
    input_size=331,
)

register_model(
    "nasnet_a_mobile",
    nasnet_a,
    make_card(
        "inception",
        family="nas",
        paper=_NASNET,
        table="Table 3 (NASNet-A 4 @ 1056, 224 px); counts: arch_reference.md 8.5 (= Cadene nasnetamobile params)",
        params=5_289_978,
        macs=563_638_816,
        input_size=224,
        top1=74.0,
        paper_params=5.3e6,
        paper_macs=564e6,
        macs_reference_padding=True,
        notes=_TF_COUNTS + "The paper's 5.3 M matches 5,326,716 with BN moving statistics (Keras NASNetMobile total). "
        "Cadene's port computes 568.2 M MACs (its padding). No timm twin. Aux head adds 2,411,240.",
    ),
    num_cells=4,
    penultimate_filters=1056,
    stem="imagenet",
    stem_multiplier=1.0,
    skip_reduction_layer_input=False,
    input_size=224,
)

register_model(
    "nasnet_a_cifar",
    nasnet_a,
    make_card(
        "cifar",
        family="nas",
        paper=_NASNET,
        table="Table 1 (NASNet-A 6 @ 768, CIFAR-10: 3.3 M, 3.41% error); counts: arch_reference.md 8.5",
        params=3_346_538,
        macs=544_333_312,
        top1=96.59,
        paper_params=3.3e6,
        notes=_TF_COUNTS + "Aux head adds 1,631,498. Paper training: drop_path_rate 0.4 (keep 0.6), aux weight 0.4.",
    ),
    num_cells=6,
    penultimate_filters=768,
    stem="cifar",
)

register_model(
    "nasnet_a_cifar_7_2304",
    nasnet_a,
    make_card(
        "cifar",
        family="nas",
        paper=_NASNET,
        table="Table 1 (NASNet-A 7 @ 2304, CIFAR-10: 27.6 M, 2.97% error); counts measured here (= arch_reference 8.5)",
        params=32_590_954,
        macs=5_151_250_944,
        top1=97.03,
        paper_params=27.6e6,
        notes="Discrepancy, unresolved: TF-slim semantics (7 cells per stage, F0 = 96, 6F/4F concat) give 32.59 M, "
        "18% above the paper's 27.6 M; 6 cells per stage would give 28.21 M and the figure's 5F/3F concat 29.79 M. "
        "No public config; likely an earlier internal implementation. The structure is not adjusted to fit.",
    ),
    num_cells=7,
    penultimate_filters=2304,
    stem="cifar",
)

register_model(
    "nasnet_a_5_1538",
    nasnet_a,
    make_card(
        "inception",
        family="nas",
        paper=_NASNET,
        table="Table 2 (NASNet-A 5 @ 1538, 299 px: 10.9 M, 2.35 B); counts measured here at 5 @ 1536",
        params=12_263_416,
        macs=2_686_417_584,
        input_size=299,
        top1=78.6,
        paper_params=10.9e6,
        paper_macs=2.35e9,
        macs_reference_padding=True,
        notes="Discrepancy, unresolved: 1538 is not a multiple of 24, so this is 5 @ 1536 (F0 = 64), stem x3: 12.26 M "
        "/ 2.686 B, ~13% above the paper (stem x1: 12,247,544 / 2.552 B; the figure's 5F/3F concat: 11.11 M / "
        "2.469 B). No public config exists (arch_reference.md 8.5, 13.3); paper numbers are approximate here.",
    ),
    num_cells=5,
    penultimate_filters=1536,
    stem="imagenet",
    stem_multiplier=3.0,
    input_size=299,
)

register_model(
    "nasnet_a_7_1920",
    nasnet_a,
    make_card(
        "inception",
        family="nas",
        paper=_NASNET,
        table="Table 2 (NASNet-A 7 @ 1920, 299 px: 22.6 M, 4.93 B); counts measured here",
        params=24_613_292,
        macs=5_373_739_132,
        input_size=299,
        top1=80.8,
        paper_params=22.6e6,
        paper_macs=4.93e9,
        macs_reference_padding=True,
        notes="Discrepancy, unresolved: F0 = 80, stem x3 gives 24.61 M / 5.374 B, ~9% above the paper (stem x1: "
        "24,595,884 / 5.227 B). The figure's 5F/3F concat with stem x3 gives 22,358,092 / 4.919 B, the closest "
        "match, but contradicts the released 6F/4F cells; no public config (arch_reference.md 8.5, 13.3).",
    ),
    num_cells=7,
    penultimate_filters=1920,
    stem="imagenet",
    stem_multiplier=3.0,
    input_size=299,
)

register_model(
    "pnasnet5_large",
    NASNet,
    make_card(
        "inception",
        family="nas",
        paper="Liu et al. 2018, Progressive Neural Architecture Search, arXiv 1712.00559",
        table="TF-slim pnasnet.py large config; counts: arch_reference.md 10 (= timm pnasnet5large)",
        params=86_057_668,
        macs=24_937_395_792,
        input_size=331,
        top1=82.9,
        crop_pct=0.911,
        twins={"timm": "pnasnet5large"},
        macs_reference_padding=True,
        notes="The PNASNet paper is not available as text: its 86.1 M / 25.0 B are recalled, unverified; top-1 82.9 "
        "is TF-slim's. TF-slim's skip_reduction_layer_input=1 with PNASNet's loop wires the cell after a reduction "
        "to the reduction's input, which is skip_reduction_layer_input=False in this builder's terms.",
    ),
    genotype="pnasnet5",
    num_cells=(4, 3, 3),
    penultimate_filters=4320,
    stem="imagenet",
    stem_multiplier=3.0,
    skip_reduction_layer_input=False,
    drop_rate=0.5,
    input_size=331,
)

_ENAS = "Pham et al. 2018, Efficient Neural Architecture Search via Parameter Sharing, arXiv 1802.03268"
register_model(
    "enas_micro_cifar",
    NASNet,
    make_card(
        "cifar",
        family="nas",
        paper=_ENAS,
        table="ENAS CIFAR-10 table (shared/papers/002: micro search space 4.6 M, 3.54% error); counts measured here",
        params=3_894_372,
        macs=620_907_552,
        top1=96.46,
        paper_params=4.6e6,
        notes="Authors' released arc and settings (cifar10_micro_final.sh: num_layers=15 -> 5 cells per stage, "
        "36 filters) give 3,894,372, not the paper's 4.6 M; 6 cells per stage (num_layers=18, num_cells=6 here) give "
        "4,587,372, which reproduces it. Aux head adds 494,848. A third-party transcription of the paper's figure "
        "has different cells (3.44 M / 4.05 M at 5 / 6 cells); which cells gave 3.54% is not established.",
    ),
    genotype="enas_micro",
    num_cells=5,
    penultimate_filters=720,
    stem="cifar",
    stem_multiplier=3.0,
    skip_reduction_layer_input=False,
    num_classes=10,
    drop_rate=0.2,
    input_size=32,
    bn_eps=1e-5,  # melodyguan/enas src/cifar10/image_ops.py batch_norm (the fixed-arc child's BN; decay 0.9)
    bn_momentum=0.1,
)

register_model(
    "enas_macro_cifar",
    ENASMacro,
    make_card(
        "cifar",
        family="nas",
        paper=_ENAS,
        table="ENAS CIFAR-10 table (shared/papers/002: macro search space 21.3 M, 4.23% error); counts measured here",
        params=30_947_424,
        macs=4_370_280_192,
        top1=95.77,
        paper_params=21.3e6,
        notes="Discrepancy, unresolved: the released arc (cifar10_macro_final.sh, 24 layers, 96 filters) with true "
        "separable convs gives 30.95 M; as the fixed-arc code builds it (ops 1/3 as ordinary convs, "
        "separable=False) 42,559,392 / 5.646 G. Neither is the paper's 21.3 M (38.0 M 'more channels').",
    ),
)
