"""Weights: our own state dicts, the twins' (timm / torchvision), and every published ImageNet source of these
networks (Keras applications HDF5, Cadene pretrainedmodels, megvii ShuffleNet-Series, TF-slim), each loaded in its
own numerics so the outputs equal the publisher's network.

* ``core``: reading state dicts (``weights_only=True``) and loading them with mismatches named;
* ``sources``: the published sources as data (URL, hash, license, top-1, reference), read into the model cards;
* ``download``: fetching a source into torch.hub's cache, hash-checked, never a partial file under the final name;
* ``loading``: what ``pretrained=`` is (format and layout detection) and in which ``reference`` to build;
* ``keras`` / ``keras_nasnet`` / ``cadene`` / ``megvii`` / ``tfslim``: each publisher's names and layouts.

Third-party readers (h5py, tensorflow, timm) are imported only when such weights are asked for.
"""

from .core import CheckpointMismatchError, load_state_dict_checked, read_state_dict, rename_keys, unwrap_state_dict
from .loading import Plan, load_planned, load_pretrained, plan_pretrained
from .sources import Source

__all__ = [
    "CheckpointMismatchError",
    "Plan",
    "Source",
    "load_planned",
    "load_pretrained",
    "load_state_dict_checked",
    "plan_pretrained",
    "read_state_dict",
    "rename_keys",
    "unwrap_state_dict",
]
