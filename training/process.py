"""Process start-up shared by every entry script (``tools/train_net.py``, ``tools/train_cls.py``, the benchmarks).

It imports neither torch nor Lightning, so it runs before they load: OpenMP settings only take effect then, and
Hydra reads ``sys.argv`` when its ``main`` starts.
"""

from __future__ import annotations

import os
import sys

#: environment variables that carry the global rank, by launcher: torchrun / Lightning, SLURM (srun), local
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK")
#: Hydra overrides of the ranks other than 0: no ``.hydra/`` files and no log file of their own in the run dir
NON_ZERO_RANK_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=stdout")


def global_rank() -> int:
    """This process's global rank from the launcher's environment (0 when launched by hand)."""
    for var in RANK_VARIABLES:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def prepare_process(argv: list[str] | None = None) -> None:
    """Call at the top of an entry script, before torch is imported and before Hydra's ``main`` runs.

    * ``OMP_WAIT_POLICY=PASSIVE`` unless set: OpenMP threads that busy-wait between the many small ops of a detector
      collapse throughput (measured 4-5x on the shared 2-core CPU) as soon as another process shares the cores;
      sleeping threads lose little on an idle machine.
    * Ranks other than 0 get :data:`NON_ZERO_RANK_OVERRIDES` appended to ``argv`` (``sys.argv`` by default; once,
      however often this is called), so every rank shares rank 0's run dir and only rank 0 writes Hydra's files there.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv if argv is None else argv
    if global_rank() > 0:
        argv += [o for o in NON_ZERO_RANK_OVERRIDES if o not in argv]
