"""The runtime every task shares (detection, classification, and anything later built on a registered backbone).

* :mod:`training.process`: process start-up of every entry script (imports neither torch nor Lightning).
* :mod:`training.config`: config helpers: :func:`~training.config.plain`, the unknown-key check, the checks a run's
  config gets before any work is spent, and the ``conf/backbone`` file format (reading and writing).
* :mod:`training.optim`: the one solver schema (:class:`~training.optim.Solver`), optimiser and LR-schedule builder.
* the one atomic file writer (temporary name, fsync, rename) of every file a run writes is :mod:`backbones.atomic`
  (standard library only, the lowest layer, so the weight downloads in ``backbones`` use it too).
* :mod:`training.checkpoint`: checkpoint IO through that writer (loading with ``weights_only=True``), resume paths.
* :mod:`training.resumable`: training loaders that a mid-epoch checkpoint resumes at the next batch.
* :mod:`training.trainer`: the Lightning Trainer from a ``conf/trainer`` group, its callbacks, the finite-loss guard
  and :func:`~training.trainer.fit` (fit, final checkpoint, final evaluation).

Only this package and the tasks' ``module.py`` files import Lightning. Importing ``training`` itself imports nothing.
"""
