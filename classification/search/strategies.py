"""The search strategies, as plain torch (the Lightning loop is ``module.py``): ``random``, ``rl``, ``enas``.

* ``random`` (Zoph et al. 2018 section 3 and 4.4, the baseline of Fig. 6): decisions drawn uniformly; each child is
  trained from scratch for a fixed number of steps and scored on the held-out split.
* ``rl``: the same children, sampled by the NASNet controller (``backbones.nas.controller.NASNetController``) and
  fed back with REINFORCE or PPO over batches of children (appendix A.2-A.3).
* ``enas`` (Pham et al. 2018): one :class:`~backbones.nas.supernet.Supernet`; each training batch trains the child
  the ENAS controller samples for it (shared weights, train split); at the end of each epoch the controller trains
  on the rewards of sampled children on validation batches; at the end, sampled children are scored on the whole
  held-out split and the best is the result (ENAS "Deriving Architectures").

Every strategy does one unit of work per training batch (:meth:`SearchStrategy.training_step`) and keeps its state
in tensors and plain values (:meth:`SearchStrategy.extra_state`), so a checkpoint resumes the very same sequence of
samples: architectures come from a dedicated generator saved with it, and the caller reseeds torch per step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import set_drop_path_progress
from backbones.checks import check_choice, check_keys
from backbones.nas.controller import Sample, build_controller, policy_loss
from backbones.nas.network import NASNet
from backbones.nas.space import SearchSpace
from backbones.nas.supernet import Supernet, child_options
from training.optim import LRSchedule, Solver, build_optimizer
from training.schema import ConfigError

from .data import SearchData, accuracy, translate

logger = logging.getLogger(__name__)

STRATEGIES = ("random", "rl", "enas")
STRATEGY_KEYS = {
    "random": ("children",),
    "rl": ("children", "batch_size", "controller", "policy"),
    "enas": ("epochs", "shared_solver", "controller", "policy", "controller_steps",
             "num_aggregate", "reward_batch", "derive_samples"),
}  # fmt: skip
CHILD_KEYS = ("num_cells", "channels", "stem_multiplier", "drop_path_rate", "steps", "solver")
POLICY_KEYS = ("algorithm", "solver", "entropy_weight", "entropy_mode", "baseline_decay", "baseline_init",
               "baseline_first", "ppo_epochs", "ppo_clip")  # fmt: skip


@dataclass
class StepContext:
    """What a strategy's step gets from the loop running it.

    Attributes:
        global_step, epoch, batch_idx: the loop's position (``global_step`` counts training batches).
        last_batch: the last batch of an epoch; ``last_step``: of the whole search.
        backward: backpropagate a loss of the module's own parameters (the loop's, synchronised across processes).
        check: raise if a loss is not finite (before its backward).
        rank, world_size: this process among the search's.
    """

    global_step: int
    epoch: int
    batch_idx: int
    last_batch: bool
    last_step: bool
    backward: Callable[[Tensor], None]
    check: Callable[[Tensor, str], None]
    rank: int = 0
    world_size: int = 1


def mix_seed(*ints: int) -> int:
    """A 63-bit seed from several ints (per-child, per-step seeds that do not collide for small inputs)."""
    h = 0x9E3779B97F4A7C15
    for i in ints:
        h = (h ^ (int(i) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


def check_solver(cfg: Mapping[str, Any], where: str) -> Solver:
    """The checked :class:`Solver` of a search's ``solver`` mapping, its keys named ``<where>.<key>`` in errors."""
    try:
        return Solver.from_config(cfg)
    except ConfigError as e:  # the schema names its keys solver.<key>
        raise ConfigError(str(e).replace("solver.", f"{where}.", 1)) from e


def build_solver(
    model: nn.Module, cfg: Mapping[str, Any], where: str, total_steps: int = 1, steps_per_epoch: int = 1
) -> tuple[torch.optim.Optimizer, LRSchedule]:
    """The optimiser and lr schedule of a ``solver`` mapping (the keys of ``conf/solver``: :class:`Solver`, the one
    builder every task uses) over ``model``; ``where`` names the section in messages (``child.solver``). The lr is
    as given unless the mapping sets ``reference_batch_size``."""
    solver = check_solver(cfg, where)
    return build_optimizer(model, solver, solver.reference_batch_size or 1), LRSchedule(
        solver, total_steps, steps_per_epoch
    )


def child_shape_of(child_cfg: Mapping[str, Any], data: SearchData) -> dict[str, Any]:
    """The child network's shape (:data:`backbones.nas.supernet.CHILD_DEFAULTS` keys) from the ``child`` section of
    ``conf/search.yaml`` and the proxy data (class count, image channels): the one reading of it for the children
    of random / rl and the ENAS supernet; a key the section leaves out takes ``CHILD_DEFAULTS``' value."""
    kinds = {"channels": int, "num_cells": int, "stem_multiplier": float, "drop_path_rate": float}
    shape = {k: kind(child_cfg[k]) for k, kind in kinds.items() if child_cfg.get(k) is not None}
    return {**shape, "num_classes": data.num_classes, "in_chans": data.in_chans}


# ---- a child trained from scratch -------------------------------------------------------------------------------
class ChildTrainer:
    """One child network trained from scratch for a fixed number of steps, then scored (random, rl, benchmark).

    Args:
        genotype: the cells.
        data: the proxy data (its image channels and class count size the network).
        child_cfg: the ``child`` section of ``conf/search.yaml`` (:data:`CHILD_KEYS`): N, F0, steps, optimiser
            and lr schedule (``solver``: :func:`build_solver`).
        seed: initialises the weights (the global RNG is left as it was).
        device: where the network lives.
    """

    def __init__(
        self, genotype, data: SearchData, child_cfg: Mapping[str, Any], seed: int, device: torch.device | str = "cpu"
    ) -> None:
        cfg = dict(child_cfg)
        check_keys(cfg, CHILD_KEYS, "child")
        self.genotype = genotype
        self.steps = int(cfg.get("steps", 150))
        opts = child_options(genotype, **child_shape_of(cfg, data))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = NASNet(**opts).to(device)
        per_epoch = max(1, len(data.train_y) // data.batch_size)
        self.optimizer, self.schedule = build_solver(self.model, cfg["solver"], "child.solver", self.steps, per_epoch)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.done_steps = 0

    @property
    def done(self) -> bool:
        return self.done_steps >= self.steps

    def train_step(self, x: Tensor, y: Tensor, check: Callable[[Tensor, str], None] | None = None) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * self.schedule(self.done_steps)
        set_drop_path_progress(self.model, min(1.0, self.done_steps / self.steps))
        loss = F.cross_entropy(self.model(x), y)
        if check is not None:
            check(loss, f"loss of child {self.genotype.name}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.done_steps += 1
        return float(loss.detach())

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        self.model.eval()
        return accuracy(self.model, x, y)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "steps": self.done_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.done_steps = int(state["steps"])


def train_from_scratch(genotype, data: SearchData, child_cfg: Mapping[str, Any], seed: int, device="cpu") -> float:
    """Train a child for the budget of ``child_cfg`` on ``data.train`` and return its ``data.test`` accuracy."""
    child = ChildTrainer(genotype, data, child_cfg, seed, device)
    data = data.to(device)
    g = torch.Generator().manual_seed(mix_seed(seed, 1))
    n = len(data.train_y)
    order = torch.empty(0, dtype=torch.long)
    while not child.done:
        if len(order) < data.batch_size:
            order = torch.randperm(n, generator=g)
        idx, order = order[: data.batch_size].to(data.train_x.device), order[data.batch_size :]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(seed, 2, child.done_steps))
            child.train_step(translate(data.train_x[idx], data.shift, g), data.train_y[idx])
    return child.evaluate(data.test_x, data.test_y)


# ---- policy gradient -----------------------------------------------------------------------------------------------
class PolicyTrainer:
    """Trains a controller on rewards: REINFORCE or PPO with a moving-average baseline and an entropy term.

    Args:
        controller: a :class:`~backbones.nas.controller.Controller`.
        cfg: :data:`POLICY_KEYS`: ``algorithm`` (``reinforce`` | ``ppo``), ``solver`` (:func:`build_solver`),
            ``entropy_weight`` and ``entropy_mode`` (``loss``: a bonus in the loss, NASNet; ``reward``: added to the
            reward, ENAS), ``baseline_decay`` (NASNet 0.95, ENAS 0.99), ``baseline_init`` (``zero`` as both papers,
            or ``first`` reward), ``baseline_first`` (advantage against the baseline already updated with this reward,
            as ENAS's ``control_dependencies``), ``ppo_epochs``, ``ppo_clip``.
    """

    def __init__(self, controller, cfg: Mapping[str, Any]) -> None:
        cfg = dict(cfg)
        check_keys(cfg, POLICY_KEYS, "policy")
        self.controller = controller
        self.algorithm = cfg.get("algorithm", "reinforce")
        check_choice("policy.algorithm", self.algorithm, ("reinforce", "ppo"))
        self.optimizer, _ = build_solver(controller, cfg["solver"], "policy.solver")
        self.entropy_weight = float(cfg.get("entropy_weight", 0.0))
        self.entropy_mode = cfg.get("entropy_mode", "loss")
        self.decay = float(cfg.get("baseline_decay", 0.95))
        self.init = cfg.get("baseline_init", "zero")
        check_choice("policy.baseline_init", self.init, ("zero", "first"))
        self.first = bool(cfg.get("baseline_first", False))
        self.ppo_epochs, self.clip = int(cfg.get("ppo_epochs", 4)), float(cfg.get("ppo_clip", 0.2))

    def update(self, decisions: Sequence[Sequence[int]], rewards: Sequence[float], samples: Sequence[Sample] = ()):
        """One update from a batch of scored architectures. ``samples`` (with their graphs, as sampled) spare a
        re-evaluation for REINFORCE; PPO takes their log-probabilities as the old policy's. Returns stats."""
        ctrl = self.controller
        samples = list(samples) or [ctrl.evaluate(d) for d in decisions]
        adv = []
        for r, s in zip(rewards, samples):
            r = float(r) + (self.entropy_weight * float(s.entropy) if self.entropy_mode == "reward" else 0.0)
            before = float(ctrl.baseline) if int(ctrl.baseline_steps) else (r if self.init == "first" else 0.0)
            after = ctrl.update_baseline(r, self.decay, self.init)
            adv.append(r - (after if self.first else before))
        advantage = torch.tensor(adv, dtype=torch.float32, device=ctrl.baseline.device)
        mode = "reward" if self.entropy_mode == "reward" else "loss"
        old = torch.stack([s.log_prob.detach() for s in samples])
        for epoch in range(self.ppo_epochs if self.algorithm == "ppo" else 1):
            if epoch > 0 or self.algorithm == "ppo":
                samples = [ctrl.evaluate(s.decisions) for s in samples]
            log_prob = torch.stack([s.log_prob for s in samples])
            entropy = torch.stack([s.entropy for s in samples])
            loss = policy_loss(log_prob, advantage, entropy, self.entropy_weight, mode,
                               old if self.algorithm == "ppo" else None, self.clip)  # fmt: skip
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {"loss": float(loss.detach()), "baseline": float(ctrl.baseline), "reward": sum(rewards) / len(rewards),
                "entropy": float(entropy.detach().mean())}  # fmt: skip


# ---- the strategies ------------------------------------------------------------------------------------------------
class SearchStrategy(nn.Module):
    """Common state: the space, the data, the generator architectures are drawn from, every record so far.

    A record is ``{"index", "phase", "step", "decisions", "reward"}``; ``phase`` is ``child`` (trained from scratch
    and scored), ``train`` (ENAS: trained one batch, no reward), ``controller`` (ENAS: scored on a validation
    batch), ``derive`` (ENAS: scored on the whole held-out split). The result ranks :attr:`ranked_phase` records.
    """

    name = ""
    ranked_phase = "child"

    def __init__(self, space: SearchSpace, data: SearchData, cfg: Mapping[str, Any], child_cfg: Mapping[str, Any],
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.space, self.data, self.cfg, self.child_cfg, self.seed = space, data, dict(cfg), dict(child_cfg), seed
        self.records: list[dict[str, Any]] = []
        self.gen = torch.Generator().manual_seed(mix_seed(seed, 11))
        self._device_data: SearchData | None = None

    def device_data(self, device: torch.device) -> SearchData:
        if self._device_data is None or self._device_data.train_x.device != device:
            self._device_data = self.data.to(device)
        return self._device_data

    def record(self, phase: str, step: int, decisions: Sequence[int], reward: float | None) -> dict[str, Any]:
        rec = {"index": len(self.records), "phase": phase, "step": step, "decisions": [int(d) for d in decisions],
               "reward": None if reward is None else float(reward)}  # fmt: skip
        self.records.append(rec)
        return rec

    def total_steps(self, steps_per_epoch: int) -> int:
        raise NotImplementedError

    def optimizers(self, total_steps: int, steps_per_epoch: int) -> tuple[list, list]:
        """The optimisers (and LR schedulers) whose state the checkpoint keeps; stepped by the strategy itself."""
        return [], []

    def training_step(self, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, float]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "records": self.records}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.records = list(state["records"])

    def ranking(self) -> list[dict[str, Any]]:
        """Scored records of :attr:`ranked_phase`, best first, one per distinct architecture (its first score)."""
        seen, out = set(), []
        for r in sorted(self.records, key=lambda r: -(r["reward"] if r["reward"] is not None else -math.inf)):
            if r["phase"] == self.ranked_phase and r["reward"] is not None and tuple(r["decisions"]) not in seen:
                seen.add(tuple(r["decisions"]))
                out.append(r)
        return out

    def scored(self) -> int:
        return sum(r["reward"] is not None for r in self.records)


class RandomSearch(SearchStrategy):
    """Children drawn uniformly, each trained ``child.steps`` batches from scratch and scored on ``val``."""

    name = "random"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.children_total = int(self.cfg.get("children", 8))
        self.child: ChildTrainer | None = None
        self.child_decisions: list[int] | None = None
        self._restored_child: Mapping[str, Any] | None = None  # rebuilt on the device of the next batch

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.children_total * int(self.child_cfg.get("steps", 150))

    def next_decisions(self, step: int) -> list[int]:
        return self.space.sample_uniform(self.gen)

    def scored_child(self, decisions: list[int], reward: float, step: int) -> dict[str, float]:
        return {}

    def _start_child(self, decisions: list[int], device: torch.device) -> None:
        n = sum(r["phase"] == "child" for r in self.records)
        geno = self.space.decode(decisions, f"child{n}")
        self.child_decisions = decisions
        self.child = ChildTrainer(geno, self.data, self.child_cfg, mix_seed(self.seed, 3, n), device)

    def training_step(self, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, float]:
        data = self.device_data(x.device)
        if self._restored_child is not None:
            self._start_child(list(self._restored_child["decisions"]), x.device)
            self.child.load_state_dict(self._restored_child)
            self._restored_child = None
        if self.child is None:
            self._start_child(self.next_decisions(ctx.global_step), x.device)
        g = torch.Generator().manual_seed(mix_seed(self.seed, 4, ctx.global_step))
        out = {"child_loss": self.child.train_step(translate(x, data.shift, g), y, ctx.check)}
        if self.child.done:
            reward = self.child.evaluate(data.val_x, data.val_y)
            self.record("child", ctx.global_step, self.child_decisions, reward)
            out.update(reward=reward, **self.scored_child(self.child_decisions, reward, ctx.global_step))
            self.child = self.child_decisions = None
        return out

    def extra_state(self) -> dict[str, Any]:
        state = super().extra_state()
        if self.child is not None:
            state["child"] = {"decisions": self.child_decisions, **self.child.state_dict()}
        elif self._restored_child is not None:
            state["child"] = self._restored_child
        return state

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        super().load_extra_state(state)
        self.child = self.child_decisions = None
        self._restored_child = state.get("child")


class RLSearch(RandomSearch):
    """Children sampled by the NASNet controller in batches of ``batch_size``; one policy update per scored batch."""

    name = "rl"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ctrl_cfg = dict(self.cfg.get("controller") or {})
        ctrl_cfg.pop("kind", None)
        self.controller = build_controller("nasnet", self.space, **ctrl_cfg)
        self.batch = int(self.cfg.get("batch_size", 4))
        self.pending: list[dict[str, Any]] = []  # {"decisions", "reward"} of the current batch
        self.policy: PolicyTrainer | None = None

    def optimizers(self, total_steps: int, steps_per_epoch: int) -> tuple[list, list]:
        self.policy = PolicyTrainer(self.controller, self.cfg["policy"])
        return [self.policy.optimizer], []

    def next_decisions(self, step: int) -> list[int]:
        todo = [p for p in self.pending if p["reward"] is None]
        if not todo:
            with torch.no_grad():
                self.pending = [{"decisions": self.controller.sample(self.gen).decisions, "reward": None}
                                for _ in range(self.batch)]  # fmt: skip
            todo = self.pending
        return list(todo[0]["decisions"])

    def scored_child(self, decisions: list[int], reward: float, step: int) -> dict[str, float]:
        next(p for p in self.pending if p["reward"] is None)["reward"] = reward
        last = sum(r["phase"] == "child" for r in self.records) == self.children_total
        if all(p["reward"] is not None for p in self.pending) or last:
            done = [p for p in self.pending if p["reward"] is not None]
            stats = self.policy.update([p["decisions"] for p in done], [p["reward"] for p in done])
            self.pending = []
            return {f"controller/{k}": v for k, v in stats.items()}
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "pending": self.pending}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        super().load_extra_state(state)
        self.pending = [dict(p) for p in state["pending"]]


class EnasSearch(SearchStrategy):
    """ENAS: shared weights trained with the sampled child of each batch; the controller at each epoch's end."""

    name = "enas"
    ranked_phase = "derive"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.supernet = Supernet(self.space, **child_shape_of(self.child_cfg, self.data))
        ctrl_cfg = dict(self.cfg.get("controller") or {})
        ctrl_cfg.pop("kind", None)
        self.controller = build_controller("enas", self.space, **ctrl_cfg)
        self.epochs = int(self.cfg.get("epochs", 10))
        self.policy: PolicyTrainer | None = None
        self.shared_opt = self.shared_sched = None
        self._total = 1  # the run's length, for the drop-path schedule (set with the optimisers)

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.epochs * steps_per_epoch

    def optimizers(self, total_steps: int, steps_per_epoch: int) -> tuple[list, list]:
        solver = self.cfg["shared_solver"]
        self.shared_opt, schedule = build_solver(
            self.supernet, solver, "search.strategy.shared_solver", total_steps, steps_per_epoch
        )
        self.shared_sched = torch.optim.lr_scheduler.LambdaLR(
            self.shared_opt, lambda step: schedule(step)
        )  # no object state
        self._total = total_steps
        self.policy = PolicyTrainer(self.controller, self.cfg["policy"])
        return [self.shared_opt, self.policy.optimizer], [self.shared_sched]

    def _reward(self, geno, x: Tensor, y: Tensor) -> float:
        # ENAS build_valid_rl scores with training-mode batch norm (the shared BN has no use for running averages)
        self.supernet.train()
        return accuracy(lambda t: self.supernet(t, geno), x, y, int(self.cfg.get("reward_batch", 256)))

    def training_step(self, x: Tensor, y: Tensor, ctx: StepContext) -> dict[str, float]:
        data = self.device_data(x.device)
        with torch.no_grad():
            decisions = self.controller.sample(self.gen).decisions
        geno = self.space.decode(decisions, f"step{ctx.global_step}")
        self.record("train", ctx.global_step, decisions, None)
        self.supernet.train()
        self.supernet.drop_path_progress = min(1.0, ctx.global_step / max(1, self._total))
        g = torch.Generator().manual_seed(mix_seed(self.seed, 5, ctx.global_step))
        loss = F.cross_entropy(self.supernet(translate(x, data.shift, g), geno), y)
        ctx.check(loss, "shared-weight loss")
        for p in self.supernet.parameters():  # ENAS: every shared weight is in the l2 term (and momentum) each step
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.shared_opt.zero_grad(set_to_none=False)
        ctx.backward(loss)
        self.shared_opt.step()
        self.shared_sched.step()
        out = {"shared_loss": float(loss.detach())}
        if ctx.last_batch:
            out.update(self._train_controller(ctx, data))
        if ctx.last_step:
            out.update(self._derive(ctx, data))
        return out

    def _train_controller(self, ctx: StepContext, data: SearchData) -> dict[str, float]:
        stats: dict[str, float] = {}
        batch = int(self.cfg.get("reward_batch", 256))
        for t in range(int(self.cfg.get("controller_steps", 10))):
            samples, rewards = [], []
            for k in range(int(self.cfg.get("num_aggregate", 5))):
                s = self.controller.sample(self.gen)
                g = torch.Generator().manual_seed(mix_seed(self.seed, 6, ctx.epoch, t, k))
                idx = torch.randperm(len(data.val_y), generator=g)[:batch].to(data.val_x.device)
                with torch.no_grad():
                    reward = self._reward(self.space.decode(s.decisions), data.val_x[idx], data.val_y[idx])
                self.record("controller", ctx.global_step, s.decisions, reward)
                samples.append(s)
                rewards.append(reward)
            stats = self.policy.update([s.decisions for s in samples], rewards, samples)
        return {f"controller/{k}": v for k, v in stats.items()}

    def _derive(self, ctx: StepContext, data: SearchData) -> dict[str, float]:
        best = -1.0
        for i in range(int(self.cfg.get("derive_samples", 16))):
            with torch.no_grad():
                decisions = self.controller.sample(self.gen).decisions
                reward = self._reward(self.space.decode(decisions, f"derived{i}"), data.val_x, data.val_y)
            self.record("derive", ctx.global_step, decisions, reward)
            best = max(best, reward)
        return {"derived_best": best}


def build_strategy(
    name: str, space: SearchSpace, data: SearchData, cfg: Mapping[str, Any], child_cfg: Mapping[str, Any], seed: int
) -> SearchStrategy:
    """The strategy ``name`` (:data:`STRATEGIES`) over ``space``."""
    check_choice("search.strategy.name", name, STRATEGIES)
    check_keys(cfg, STRATEGY_KEYS[name], "search.strategy")
    # every solver checked now, before the first child or epoch is trained
    solvers = {"child.solver": child_cfg.get("solver"), "search.strategy.shared_solver": cfg.get("shared_solver"),
               "search.strategy.policy.solver": (cfg.get("policy") or {}).get("solver")}  # fmt: skip
    for where, solver in solvers.items():
        if solver is not None:
            check_solver(solver, where)
    cls = {"random": RandomSearch, "rl": RLSearch, "enas": EnasSearch}[name]
    return cls(space, data, cfg, child_cfg, seed)
