"""Downloading a published source into torch.hub's cache, with the publisher's hash checked.

Files land in ``<torch.hub.get_dir()>/checkpoints/<file name>`` (where torchvision and timm's URL downloads cache them
too). Nothing is downloaded unless a source is asked for. A download is written under a temporary name and renamed
only once complete and verified, so an interrupted or corrupted download never sits under the final name; a file
already in the cache that fails the check is reported, never deleted (it may be the user's).
"""

from __future__ import annotations

import hashlib
import logging
import os

import torch

from ..atomic import move_into_place
from .sources import Source

logger = logging.getLogger(__name__)


class HashMismatchError(RuntimeError):
    """A file's hash differs from the one its publisher gives."""


def file_hash(path: str | os.PathLike, kind: str) -> str:
    """Hex digest of ``path``: ``"md5"``, or sha256 for ``"sha256"`` / ``"sha256-prefix"``."""
    h = hashlib.md5() if kind == "md5" else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, source: Source) -> None:
    """Check ``path`` against the hash ``source`` publishes (a no-op, logged, where it publishes none).

    Raises:
        HashMismatchError: naming the file, the published and the actual hash.
    """
    if source.hash is None or source.hash_kind is None:
        logger.info("%s: the publisher gives no hash for %s; not verified", source.name, source.filename)
        return
    digest = file_hash(path, source.hash_kind)
    ok = digest.startswith(source.hash) if source.hash_kind == "sha256-prefix" else digest == source.hash
    if not ok:
        what = "sha256 starting with" if source.hash_kind == "sha256-prefix" else source.hash_kind
        raise HashMismatchError(
            f"{os.fspath(path)!r} has {source.hash_kind.removesuffix('-prefix')} {digest}, but {source.name} "
            f"publishes {what} {source.hash} for {source.url}: the file is corrupted or not the published one"
        )


def cache_path(source: Source) -> str:
    """Where ``source``'s file is (or would be) cached: ``<torch.hub.get_dir()>/checkpoints/<file name>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", source.filename)


def fetch(source: Source, progress: bool = True) -> str:
    """The local path of ``source``'s file, downloaded into torch.hub's cache first if it is not there yet.

    Raises:
        ValueError: if the publisher gives no file link (the user downloads by hand and passes the path).
        HashMismatchError: if the cached or downloaded file fails the published hash.
    """
    if not source.downloadable:
        raise ValueError(
            f"pretrained={source.name!r} cannot be downloaded automatically: {source.notes} ({source.url})"
        )
    dst = cache_path(source)
    if os.path.exists(dst):
        verify(dst, source)  # a corrupted cached file is reported and left in place
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.{os.getpid()}.partial"
    logger.info("downloading %s to %s", source.url, dst)
    try:
        # writes to its own temporary file and moves it to ``tmp`` once complete
        torch.hub.download_url_to_file(source.url, tmp, progress=progress)
        verify(tmp, source)
        move_into_place(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst
