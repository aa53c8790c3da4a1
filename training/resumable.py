"""Training loaders that a mid-epoch checkpoint resumes at the next batch of the same epoch's order.

Lightning restores its batch counters from a checkpoint but re-reads the epoch from its first batch, and creates the
first iterator before it sets the sampler epoch. Here the position (sampler epoch, batches the training loop has
taken in it) is saved once, as the datamodule's state (:class:`ResumableTrainData`), which Lightning restores before
it requests any loader, whichever order it creates the loader and restores the loops in. The loader itself is not a
Lightning "stateful" loader (no ``state_dict`` / ``load_state_dict``), so Lightning keeps no second copy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader, Sampler

logger = logging.getLogger(__name__)

#: the keys of a saved loader position (:meth:`ResumableDataLoader.position`)
POSITION_KEYS = ("epoch", "batches_done", "epoch_complete", "num_batches")


class ResumableBatchSampler(Sampler[list[int]]):
    """Wraps a batch sampler; after :meth:`resume_at` its next iteration runs in the given epoch's order and leaves
    out the first ``skip`` batches (indices only, so the skipped images are never loaded). ``sampler`` is the wrapped
    one's, where Lightning calls ``set_epoch``."""

    def __init__(self, batch_sampler: Any) -> None:
        sampler = getattr(batch_sampler, "sampler", None)
        if not callable(getattr(sampler, "set_epoch", None)):
            raise TypeError(
                f"{type(batch_sampler).__name__}.sampler ({type(sampler).__name__}) has no set_epoch(); a resumable "
                f"loader needs a sampler whose order is a function of the epoch (e.g. DistributedSampler)"
            )
        self.batch_sampler = batch_sampler
        self.sampler = sampler
        self.pending: tuple[int, int] | None = None  # (epoch, batches to skip) for the next iteration

    def resume_at(self, epoch: int, skip: int) -> None:
        self.sampler.set_epoch(epoch)
        self.pending = (epoch, skip)

    def __iter__(self) -> Any:
        # A generator: the resume point is taken when the first batch is drawn, not when iter() is called. A
        # DataLoader with workers calls iter() twice on its batch sampler and draws from the second iterator only,
        # and Lightning may call set_epoch between creating the loader's iterator and drawing from it.
        skip = 0
        if self.pending is not None:
            (epoch, skip), self.pending = self.pending, None
            self.sampler.set_epoch(epoch)
        it = iter(self.batch_sampler)
        for _ in range(skip):
            if next(it, None) is None:
                return
        yield from it

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class ResumableDataLoader(DataLoader):
    """A training loader whose :meth:`position` a checkpoint stores and :meth:`resume_from` continues.

    The position is the sampler epoch and the batches the training loop has taken in it
    (``batch_progress.current.ready``: it counts the batch being trained when a checkpoint is saved
    on_train_batch_end, and every batch of the epoch at its end; batches the prefetching fetcher holds are not
    counted). :meth:`resume_from` sets the sampler epoch and makes the next iteration skip those batches; a finished
    epoch resumes at the start of the next one. ``len()`` stays the full epoch: Lightning counts the skipped batches
    as fetched. Every rank loads the same position (the sampler shards). Use it through :class:`ResumableTrainData`.

    Args:
        dataset: map-style dataset.
        batch_sampler: yields lists of indices; its ``sampler`` must have ``set_epoch`` (``DistributedSampler``).
        trainer: the Trainer whose training progress :meth:`position` reads (None: position 0 of the epoch).
        **kwargs: other ``DataLoader`` arguments (workers, collate_fn, ...).
    """

    def __init__(self, dataset: Any, batch_sampler: Any, trainer: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=ResumableBatchSampler(batch_sampler), **kwargs)
        self.trainer = trainer

    def position(self) -> dict[str, Any]:
        """``{epoch, batches_done, epoch_complete, num_batches}`` of the training loop now."""
        state = {"epoch": int(getattr(self.batch_sampler.sampler, "epoch", 0)), "batches_done": 0}
        state.update(epoch_complete=False, num_batches=len(self))
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            done = int(progress.current.ready)
            complete = progress.is_last_batch or done >= self.trainer.num_training_batches
            state.update(batches_done=done, epoch_complete=bool(complete))
        return state

    def resume_from(self, state: Mapping[str, Any]) -> None:
        """Continue at ``state`` (a :meth:`position`): the next iteration is that epoch's order after its batches."""
        epoch, skip = int(state["epoch"]), int(state["batches_done"])
        if state["epoch_complete"]:
            epoch, skip = epoch + 1, 0
        elif state.get("num_batches", len(self)) != len(self):
            logger.warning(
                "the checkpoint's epoch had %s batches per rank, this run's has %d (batch size, devices or dataset "
                "changed): the rest of epoch %d does not continue the checkpoint's order",
                state.get("num_batches"),
                len(self),
                epoch,
            )
        self.batch_sampler.resume_at(epoch, skip)
        logger.info("train loader resumes at epoch %d, batch %d of %d", epoch, skip, len(self))


class ResumableTrainData:
    """Mixin for a ``LightningDataModule`` whose ``train_dataloader`` returns :meth:`resumable_loader`.

    The train loader's position goes into the checkpoint as the datamodule's state (``checkpoint[<class
    name>]["train_loader"]``). Lightning restores a datamodule's state before it requests any loader (also when a
    module's ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``, which makes it create the train
    loader before it restores the loops), so the loader starts at the checkpoint's position whenever it is created.
    """

    _train_loader: ResumableDataLoader | None = None
    _train_resume: Mapping[str, Any] | None = None

    def resumable_loader(self, dataset: Any, batch_sampler: Any, **kwargs: Any) -> ResumableDataLoader:
        loader = ResumableDataLoader(dataset, batch_sampler, trainer=self.trainer, **kwargs)  # type: ignore[attr-defined]
        if self._train_resume is not None:
            loader.resume_from(self._train_resume)
            self._train_resume = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.position()} if self._train_loader is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._train_resume = state.get("train_loader")
