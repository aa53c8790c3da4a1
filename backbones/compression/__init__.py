"""Deep Compression (Han et al. 2015, arXiv:1510.00149) for any registered model, as SqueezeNet applies it
(Iandola et al. 2016, Table 1 and Table 2): magnitude pruning to per-layer densities, retraining with the masks
fixed, per-layer k-means weight sharing, Huffman coding of the indices and sparse positions, one file format, and a
loader that rebuilds a normal model.

>>> from backbones import compression as dc
>>> plan = dc.CompressionPlan.from_mapping({"bits": 6, "layers": [{"pattern": "classifier.weight", "density": 0.2}]})
>>> masks = dc.prune(model, plan)                  # then retrain under dc.MaskKeeper(model, masks)
>>> shared = dc.share_weights(model, plan, masks)  # model now holds the shared values
>>> blob = dc.encode(model, shared, masks, plan.index_bits)
>>> dc.load_compressed(blob)                       # a normal model with exactly those weights
"""

from .container import decode_state, encode, load_compressed
from .plan import CompressionPlan, LayerRule
from .prune import MaskKeeper, apply_masks, density, magnitude_masks, prune
from .share import SharedWeight, kmeans_1d, share_weights

__all__ = [
    "CompressionPlan",
    "LayerRule",
    "MaskKeeper",
    "SharedWeight",
    "apply_masks",
    "decode_state",
    "density",
    "encode",
    "kmeans_1d",
    "load_compressed",
    "magnitude_masks",
    "prune",
    "share_weights",
]
