"""Architecture controllers: RNN policies over a search space's decision sequence, and their policy-gradient losses.

Two controllers emit the ``2 x B x 5`` decisions of :class:`~backbones.nas.space.SearchSpace` (normal cell first):

* :class:`NASNetController` (Zoph et al. 2018, arXiv 1707.07012, section 3 and appendix A.2): a one-layer LSTM
  with 100 units and one softmax classifier per decision ("2 x 5B softmax predictions"), each decision fed back as
  the next step's input embedding (Zoph & Le 2017); weights uniform in [-0.1, 0.1]. Trained with REINFORCE or PPO
  (A.2: PPO, learning rate 0.00035, entropy weight 0.00001, baseline an exponential moving average of the rewards
  with weight 0.95, updates over minibatches of 20 architectures).
* :class:`ENASController` (Pham et al. 2018, arXiv 1802.03268; melodyguan/enas ``src/cifar10/micro_controller.py``
  with the flags of ``scripts/cifar10_micro_search.sh`` and ``src/cifar10/main.py``): an LSTM of 64 units, 1 layer;
  per cell two warm-up steps on a learned ``g_emb`` whose outputs are the inputs' attention anchors; per block two
  input indices chosen by additive attention over the anchors (``v . tanh(W1 anchor + W2 h)``), two ops from a shared
  softmax ``w_soft`` (bias initialised to 10 for the separable convolutions, ``b_soft``), one more step whose output
  becomes the new state's anchor; logits through ``tanh_constant * tanh(.)`` (1.10; ops divided by
  ``op_tanh_reduce`` 2.5), a fixed +0.25 / -0.25 bias on the normal cell's separable-conv / other op logits
  (``b_soft_no_learn``); the reduction cell continues from the normal cell's LSTM state. Training (``main.py``,
  ``controller.build_trainer``): reward = validation accuracy + 1e-4 x the sample's entropy (the entropy enters the
  reward, not the gradient: ``tf.stop_gradient``), baseline ``b -= (1 - 0.99)(b - R)``, loss ``-log p (R - b)``,
  Adam (lr 0.0035, beta1 0, eps 1e-3), gradients of 10 samples aggregated per step, 30 steps per epoch.

  Beyond ENAS: a space with several combines gets one more softmax (and embedding) per block after the two ops;
  spaces with k inputs get k warm-up steps. ENAS numbers its two inputs the other way round (0 = h_{i-1}); the
  anchors are kept in ENAS order and indices converted, so an ENAS checkpoint's decisions mean the same cells.

A controller maps decisions to a log-probability and an entropy: :meth:`Controller.sample` draws them (from a
``torch.Generator``, so a search's sequence of samples is reproducible and resumable), :meth:`Controller.evaluate`
scores given decisions (teacher forcing; PPO's new/old ratio). :func:`policy_loss` is REINFORCE or PPO's clipped
surrogate; optimisers and the loop live with the search (``classification/search``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .genotypes import Genotype
from .space import SearchSpace

CONTROLLERS = ("nasnet", "enas")
ENTROPY_MODES = ("loss", "reward")


@dataclass
class Sample:
    """One sampled architecture: its decisions, their summed log-probability (with grad) and entropy."""

    decisions: list[int]
    log_prob: Tensor
    entropy: Tensor


def _pick(logits: Tensor, choice: int | None, generator: torch.Generator | None) -> tuple[int, Tensor, Tensor]:
    """Sample (or take ``choice``) from ``logits`` (1-D); returns the choice, its log-prob and the entropy."""
    logp = F.log_softmax(logits, -1)
    if choice is None:
        probs = logp.detach().exp()
        if generator is not None and probs.device != generator.device:  # a CPU generator for a GPU controller
            probs = probs.to(generator.device)
        choice = int(torch.multinomial(probs, 1, generator=generator))
    return choice, logp[choice], -(logp.exp() * logp).sum()


class Controller(nn.Module):
    """Base: a policy over ``space``'s decisions with a moving-average reward baseline (a buffer, checkpointed)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_steps", torch.zeros((), dtype=torch.long))

    def _run(self, decisions: Sequence[int] | None, generator: torch.Generator | None) -> Sample:
        raise NotImplementedError

    def sample(self, generator: torch.Generator | None = None) -> Sample:
        """Draw an architecture (with the graph for its log-probability)."""
        return self._run(None, generator)

    def evaluate(self, decisions: Sequence[int]) -> Sample:
        """Log-probability and entropy of given decisions under the current policy."""
        return self._run(self.space.check_decisions(decisions), None)

    def genotype(self, decisions: Sequence[int], name: str | None = None) -> Genotype:
        return self.space.decode(decisions, name)

    @torch.no_grad()
    def update_baseline(self, reward: float, decay: float, init: str = "zero") -> float:
        """``b <- decay * b + (1 - decay) * reward`` (ENAS ``bl_dec``, NASNet A.2's 0.95); ``init="first"`` starts
        it at the first reward instead of 0. Returns the new baseline."""
        if init == "first" and int(self.baseline_steps) == 0:
            self.baseline.fill_(reward)
        else:
            self.baseline.mul_(decay).add_((1.0 - decay) * reward)
        self.baseline_steps += 1
        return float(self.baseline)


class NASNetController(Controller):
    """The NASNet controller RNN (appendix A.2); see the module docstring.

    Args:
        space: the search space.
        hidden: LSTM units (A.2: 100).
        init_range: weights uniform in [-init_range, init_range] (A.2: 0.1).
    """

    def __init__(self, space: SearchSpace, hidden: int = 100, init_range: float = 0.1) -> None:
        super().__init__(space)
        sizes = space.choices()
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)  # one softmax classifier per decision
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)  # the decision fed back
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)

    def _run(self, decisions: Sequence[int] | None, generator: torch.Generator | None) -> Sample:
        x, state = self.start, None
        chosen, log_prob, entropy = [], self.start.new_zeros(()), self.start.new_zeros(())
        for t, (head, emb) in enumerate(zip(self.heads, self.embeddings)):
            state = self.lstm(x, state)
            c, lp, ent = _pick(head(state[0])[0], None if decisions is None else decisions[t], generator)
            chosen.append(c)
            log_prob, entropy = log_prob + lp, entropy + ent
            x = emb.weight[c : c + 1]
        return Sample(chosen, log_prob, entropy)


class ENASController(Controller):
    """The ENAS micro controller (``micro_controller.py``); see the module docstring for every setting's source.

    Args:
        space: the search space.
        hidden: LSTM units (``main.py``: ``lstm_size=64``).
        num_layers: stacked LSTM layers (``lstm_num_layers=1``).
        tanh_constant: logits -> ``c * tanh(logits)`` (search script 1.10; None: off).
        op_tanh_reduce: the op logits use ``tanh_constant / op_tanh_reduce`` (2.5).
        temperature: logits divided by it first (None in the search script).
        init_range: weights uniform in [-init_range, init_range] (0.1).
        op_bias: initial ``b_soft`` of the separable convolutions (10; 0 for the other ops).
        normal_op_bias: the fixed ``b_soft_no_learn`` (+x for separable convs, -x for the rest; normal cell only).
    """

    def __init__(
        self,
        space: SearchSpace,
        hidden: int = 64,
        num_layers: int = 1,
        tanh_constant: float | None = 1.10,
        op_tanh_reduce: float = 2.5,
        temperature: float | None = None,
        init_range: float = 0.1,
        op_bias: float = 10.0,
        normal_op_bias: float = 0.25,
    ) -> None:
        super().__init__(space)
        self.tanh_constant, self.op_tanh_reduce, self.temperature = tanh_constant, op_tanh_reduce, temperature
        n_ops = len(space.ops)
        self.lstm = nn.ModuleList(nn.LSTMCell(hidden, hidden) for _ in range(num_layers))
        self.g_emb = nn.Parameter(torch.empty(1, hidden))
        self.w_emb = nn.Embedding(n_ops, hidden)
        self.w_soft = nn.Linear(hidden, n_ops)
        self.w_attn_1 = nn.Linear(hidden, hidden, bias=False)
        self.w_attn_2 = nn.Linear(hidden, hidden, bias=False)
        self.v_attn = nn.Linear(hidden, 1, bias=False)
        self.combine = nn.Linear(hidden, len(space.combines)) if len(space.combines) > 1 else None
        self.combine_emb = nn.Embedding(len(space.combines), hidden) if self.combine is not None else None
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)
        sep = torch.tensor([op.startswith("sep_conv") for op in space.ops])
        with torch.no_grad():
            self.w_soft.bias.copy_(sep.float() * op_bias)  # b_soft = [10, 10, 0, 0, 0] in ENAS's op order
        self.register_buffer("normal_bias", torch.where(sep, normal_op_bias, -normal_op_bias), persistent=False)

    def _step(self, x: Tensor, state: list | None) -> tuple[Tensor, list]:
        new = []
        for i, cell in enumerate(self.lstm):
            h, c = cell(x if i == 0 else new[-1][0], None if state is None else state[i])
            new.append((h, c))
        return new[-1][0], new

    def _logits(self, logits: Tensor, tanh: float | None) -> Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        return tanh * torch.tanh(logits) if tanh is not None else logits

    def _run(self, decisions: Sequence[int] | None, generator: torch.Generator | None) -> Sample:
        space, k = self.space, self.space.num_inputs
        op_tanh = None if self.tanh_constant is None else self.tanh_constant / self.op_tanh_reduce
        chosen, log_prob, entropy = [], self.g_emb.new_zeros(()), self.g_emb.new_zeros(())
        state, t = None, 0

        def pick(logits: Tensor) -> int:
            nonlocal log_prob, entropy, t
            c, lp, ent = _pick(logits, None if decisions is None else decisions[t], generator)
            chosen.append(c)
            log_prob, entropy, t = log_prob + lp, entropy + ent.detach(), t + 1  # ENAS: stop_gradient(entropy)
            return c

        for cell in range(2):
            anchors, anchors_w1 = [], []  # ENAS order: layer 0 = the oldest input
            for _ in range(k):
                h, state = self._step(self.g_emb, state)
                anchors.append(torch.zeros_like(h))
                anchors_w1.append(self.w_attn_1(h))
            x = self.g_emb
            for _b in range(space.num_blocks):
                for _side in range(2):  # two input indices: attention over the anchors
                    h, state = self._step(x, state)
                    query = torch.tanh(torch.cat(anchors_w1) + self.w_attn_2(h))
                    logits = self._logits(self.v_attn(query)[:, 0], self.tanh_constant)
                    # ours: 0 = the most recent input; ENAS: 0 = the oldest; block states agree
                    ours = torch.cat([logits[:k].flip(0), logits[k:]])
                    s = pick(ours)
                    x = anchors[k - 1 - s if s < k else s]
                for _side in range(2):  # two ops from the shared softmax
                    h, state = self._step(x, state)
                    logits = self._logits(self.w_soft(h)[0], op_tanh)
                    if cell == 0:
                        logits = logits + self.normal_bias
                    x = self.w_emb.weight[pick(logits)][None]
                if self.combine is not None:
                    h, state = self._step(x, state)
                    x = self.combine_emb.weight[pick(self._logits(self.combine(h)[0], op_tanh))][None]
                else:  # one combine: a decision with one choice (log-prob 0, entropy 0), no step
                    chosen.append(0)
                    t += 1
                h, state = self._step(x, state)
                anchors.append(h)
                anchors_w1.append(self.w_attn_1(h))
                x = self.g_emb
        return Sample(chosen, log_prob, entropy)


def build_controller(kind: str, space: SearchSpace, **options) -> Controller:
    """``"nasnet"`` -> :class:`NASNetController`, ``"enas"`` -> :class:`ENASController` (options: their args)."""
    from ..checks import check_choice

    check_choice("controller", kind, CONTROLLERS)
    return (NASNetController if kind == "nasnet" else ENASController)(space, **options)


def policy_loss(
    log_prob: Tensor,
    advantage: Tensor,
    entropy: Tensor,
    entropy_weight: float = 0.0,
    entropy_mode: str = "loss",
    old_log_prob: Tensor | None = None,
    clip: float = 0.2,
) -> Tensor:
    """Mean policy-gradient loss over a batch of samples (1-D tensors).

    REINFORCE (Williams 1992): ``-(log p) * advantage``; with ``old_log_prob``, PPO's clipped surrogate (Schulman et
    al. 2017, eq. 7): ``-min(r A, clip(r, 1 - clip, 1 + clip) A)``, ``r = p / p_old``. ``entropy_mode="loss"`` adds
    ``-entropy_weight * entropy`` (an entropy bonus; NASNet A.2); ``"reward"`` leaves it to the caller, who added it to
    the reward (ENAS).
    """
    if entropy_mode not in ENTROPY_MODES:
        raise ValueError(f"entropy_mode={entropy_mode!r} is not valid; choose one of {', '.join(ENTROPY_MODES)}")
    if old_log_prob is None:
        loss = -(log_prob * advantage)
    else:
        ratio = torch.exp(log_prob - old_log_prob)
        loss = -torch.minimum(ratio * advantage, ratio.clamp(1.0 - clip, 1.0 + clip) * advantage)
    if entropy_mode == "loss" and entropy_weight:
        loss = loss - entropy_weight * entropy
    return loss.mean()
