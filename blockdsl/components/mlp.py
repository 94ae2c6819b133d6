"""Feed-forward layers: the MLP (plain or gated) and the mixture of experts (MoE)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blockdsl.components._util import (
    Activation,
    Problem,
    activation,
    init_linear_,
    raise_problem,
    same_size,
)
from blockdsl.components.grouped import grouped_linear
from blockdsl.registry import register

# --------------------------------------------------------------------------- MLP

#: The MLP's activations: the shared ones and xIELU, whose two learned scalars make it a module
#: of each MLP's own (not an MoE expert activation).
MLPActivation = Literal["relu", "gelu", "gelu_tanh", "silu", "relu2", "xielu"]


@dataclass(frozen=True)
class MLPSizes:
    """The MLP's derived sizes, computed once from its arguments by ``mlp_sizes``: read by
    the constructor and by every hook (params, FLOPs, shape steps, check). MoE's experts are
    MLPs of these sizes too."""

    d_in: int
    hidden: int
    gated: bool
    bias: bool
    act_params: int = 0  # the activation's own parameters (xIELU: 2)

    @property
    def weights(self) -> int:
        """Weight entries: ``up`` and ``down`` (and ``gate``), ``d_in x hidden`` each."""
        return self.d_in * self.hidden * (3 if self.gated else 2)

    @property
    def biases(self) -> int:
        return self.bias * (self.hidden * (2 if self.gated else 1) + self.d_in)


def mlp_sizes(
    d_in: int,
    hidden: int | None = None,
    mult: float = 4.0,
    gated: bool = False,
    bias: bool = False,
    act: str = "gelu",
    **_,
) -> MLPSizes:
    """``MLPSizes`` at input size ``d_in``: ``hidden = int(mult * d_in)`` unless set."""
    hidden = int(mult * d_in) if hidden is None else hidden
    return MLPSizes(d_in, hidden, gated, bias, XIELU.PARAMS if act == "xielu" else 0)


def _mlp_params(d_in: int, **args) -> int:
    s = mlp_sizes(d_in, **args)
    return s.weights + s.biases + s.act_params


class XIELU(nn.Module):
    """xIELU (Huang et al. 2024, https://arxiv.org/abs/2411.13010), transformers'
    ``XIELUActivation``: ``alpha_p x^2 + beta x`` for ``x > 0``, else
    ``alpha_n (expm1(min(x, eps)) - x) + beta x``, with ``alpha_p = softplus(a_p)`` and
    ``alpha_n = beta + softplus(a_n)`` learned (parameters ``alpha_p``, ``alpha_n``; buffers
    ``beta``, ``eps``, the checkpoint's constants)."""

    PARAMS = 2

    def __init__(
        self, alpha_p: float = 0.8, alpha_n: float = 0.8, beta: float = 0.5, eps: float = -1e-6
    ) -> None:
        super().__init__()
        inverse_softplus = lambda v: math.log(math.expm1(v))  # noqa: E731
        self.alpha_p = nn.Parameter(torch.tensor([inverse_softplus(alpha_p)]))
        self.alpha_n = nn.Parameter(torch.tensor([inverse_softplus(alpha_n - beta)]))
        self.register_buffer("beta", torch.tensor(beta))
        self.register_buffer("eps", torch.tensor(eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha_p = F.softplus(self.alpha_p)
        alpha_n = self.beta + F.softplus(self.alpha_n)
        negative = (torch.expm1(torch.minimum(x, self.eps)) - x) * alpha_n
        return torch.where(x > 0, alpha_p * x * x, negative) + self.beta * x


def _mlp_flops(d_in: int, seq: int, **args) -> int:
    s = mlp_sizes(d_in, **args)
    return seq * (2 * s.weights + int(s.gated) * s.hidden)  # + the gate product


def _check_mlp(d_in: int, init_std: float | None = None, **args) -> Problem:
    h = mlp_sizes(d_in, **args).hidden
    if h <= 0:
        return f"MLP hidden size must be positive, got {h}"
    if init_std is not None and not (init_std >= 0 and math.isfinite(init_std)):
        return f"MLP init_std must be a finite number >= 0, got {init_std}"
    return None


def _mlp_steps(
    d_in: int, seq: int, batch: int, **args
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], int]]:
    """The steps inside, for ``blockdsl compile --show-shapes --depth 2``: ``(name,
    symbolic shape, concrete shape, forward FLOPs of the batch)``."""
    sizes = mlp_sizes(d_in, **args)
    h, n, gated = sizes.hidden, batch * seq, sizes.gated
    hid, out = ("B", "T", "F"), ("B", "T", "D")
    steps = [("gate", hid, (batch, seq, h), 2 * n * d_in * h)] if gated else []
    steps.append(("up", hid, (batch, seq, h), 2 * n * d_in * h))
    steps.append(("act*up" if gated else "act", hid, (batch, seq, h), n * h * int(gated)))
    steps.append(("down", out, (batch, seq, d_in), 2 * n * h * d_in))
    return steps


_MLP_HELP: dict[str, str] = {
    "hidden": "hidden width; none: int(mult * d_model)",
    "mult": "hidden width as a multiple of d_model when hidden is none",
    "act": "activation: relu, gelu, gelu_tanh, silu, relu2 (squared ReLU) or xielu (learned)",
    "gated": "gated linear unit: `down(act(gate(x)) * up(x))`",
    "bias": "biases on the linears",
    "init_std": "initialise the weights N(0, init_std) (0: zeros) and the biases to zero, "
    "whatever the model's [init] scheme; none: the scheme's (nn.Linear's under torch)",
}


@register(
    "MLP",
    out_features=same_size,
    params=_mlp_params,
    flops=_mlp_flops,
    check=_check_mlp,
    arg_help=_MLP_HELP,
    shape_steps=_mlp_steps,
    init_roles={"gate.*": "hidden", "up.*": "hidden", "down.*": "output"},
)
class MLP(nn.Module):
    """Position-wise feed-forward: ``down(act(up(x)))``, or gated ``down(act(gate(x)) * up(x))``.

    ``hidden`` defaults to ``int(mult * d_model)``. Activations: relu, gelu (exact), gelu_tanh
    (GPT-2), silu (SwiGLU when gated), relu2 (squared ReLU), xielu (with two learned scalars,
    ``act.alpha_p`` and ``act.alpha_n``: Apertus). Parameters: ``up``, ``down`` and, when
    ``gated``, ``gate`` (``nn.Linear``; biases with ``bias``), initialised as
    ``nn.Linear``, or N(0, ``init_std``) with zero biases when it is set (``init_std=0``: the
    zero-initialised projections of modded-nanogpt).
    """

    def __init__(
        self,
        d_model: int,
        hidden: int | None = None,
        mult: float = 4.0,
        act: MLPActivation = "gelu",
        gated: bool = False,
        bias: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        raise_problem(_check_mlp(d_model, hidden=hidden, mult=mult, init_std=init_std))
        h = mlp_sizes(d_model, hidden, mult).hidden
        self.act_name = act
        self.act = XIELU() if act == "xielu" else activation(act)
        self.init_std = init_std
        self.gate = nn.Linear(d_model, h, bias=bias) if gated else None
        self.up = nn.Linear(d_model, h, bias=bias)
        self.down = nn.Linear(h, d_model, bias=bias)
        if init_std is not None:  # else nn.Linear's own init, already drawn
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s init, or N(0, ``init_std``) weights and zero biases."""
        for linear in (self.gate, self.up, self.down):
            if linear is None:
                continue
            if self.init_std is None:
                linear.reset_parameters()
            else:
                nn.init.normal_(linear.weight, std=self.init_std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))  # (B, T, hidden) inside
        return self.down(self.act(self.up(x)))


# --------------------------------------------------------------------------- MoE


@dataclass(frozen=True)
class MoESizes:
    """The MoE's derived sizes, computed once from its arguments by ``moe_sizes``: read by
    the constructor and by every hook (params, FLOPs, shape steps, check)."""

    d_in: int
    experts: int  # E: the children when given, else ``experts`` (default 8)
    expert: MLPSizes  # each expert, without biases
    shared: int
    shared_gate: bool  # a d_in -> 1 gate on the shared experts (with shared experts only)
    children: bool  # the experts are child blocks (their sizes are theirs)
    #: the shared experts as one MLP (hidden ``shared * hidden`` or ``shared_hidden``); None
    #: without shared experts
    shared_mlp: MLPSizes | None = None

    @property
    def hidden(self) -> int:
        return self.expert.hidden

    @property
    def shared_weights(self) -> int:
        return 0 if self.shared_mlp is None else self.shared_mlp.weights


def moe_sizes(
    d_in: int,
    experts: int | None = None,
    hidden: int | None = None,
    mult: float = 4.0,
    gated: bool = True,
    shared: int = 0,
    shared_gate: bool = False,
    n_children: int | None = None,
    shared_hidden: int | None = None,
    **_,
) -> MoESizes:
    """``MoESizes`` at input size ``d_in``; ``n_children`` child blocks are the experts."""
    E = n_children or (8 if experts is None else experts)
    expert = mlp_sizes(d_in, hidden, mult, gated)
    width = shared * expert.hidden if shared_hidden is None else shared_hidden
    shared_mlp = mlp_sizes(d_in, width, gated=gated) if shared else None
    return MoESizes(
        d_in, E, expert, shared, bool(shared and shared_gate), bool(n_children), shared_mlp
    )


def _expert_biases(s: MoESizes, expert_bias: bool = False, **_) -> int:
    """Biases of one expert (gpt-oss): on its gate and up projections and on its down."""
    return (s.hidden * (1 + s.expert.gated) + s.d_in) if expert_bias and not s.children else 0


def _moe_params(d_in: int, router_bias: bool = False, **args) -> int:
    s = moe_sizes(d_in, **args)
    own_experts = 0 if s.children else s.experts * (s.expert.weights + _expert_biases(s, **args))
    gate = d_in if s.shared_gate else 0
    router = s.experts * (d_in + router_bias)
    return router + own_experts + s.shared_weights + gate


def _moe_flops(d_in: int, seq: int, k: int, **args) -> int:
    s = moe_sizes(d_in, **args)
    per_token_expert = 2 * s.expert.weights + _expert_biases(s, **args)
    router = 2 * d_in * s.experts + (2 * d_in + d_in if s.shared_gate else 0)
    shared = 2 * s.shared_weights
    if s.children:  # children's FLOPs are theirs; here the router and the weighted sum
        return seq * (router + 2 * s.experts * d_in) + seq * shared
    return seq * (router + k * per_token_expert + shared + 2 * k * d_in)


def _check_moe(
    d_in: int,
    experts: int | None = None,
    k: int = 2,
    hidden: int | None = None,
    mult: float = 4.0,
    n_children: int = 0,
    groups: int = 1,
    topk_groups: int | None = None,
    group_top: int = 1,
    jitter: float = 0.0,
    shared: int = 0,
    shared_hidden: int | None = None,
    glu_limit: float | None = None,
    act: str = "silu",
    gated: bool = True,
    **_,
) -> Problem:
    if glu_limit is not None and not (glu_limit > 0 and gated and act == "silu"):
        return (
            f"MoE glu_limit={glu_limit} needs gated SwiGLU experts (gated=true, act=silu) and "
            "a positive limit",
            "glu_limit is gpt-oss's clamped SwiGLU (swiglu_limit)",
        )
    if shared_hidden is not None and (shared <= 0 or shared_hidden <= 0):
        return (
            f"MoE shared_hidden={shared_hidden} needs shared experts (shared >= 1) and a "
            "positive width",
            "shared_hidden is the shared experts' total width when it is not shared * hidden",
        )
    if n_children and experts is not None and experts != n_children:
        return (
            f"MoE has {n_children} children but experts={experts}",
            "leave experts unset when giving the experts as children",
        )
    sizes = moe_sizes(d_in, experts, hidden, mult, n_children=n_children)
    E, h = sizes.experts, sizes.hidden
    if E <= 0:
        return f"MoE needs at least one expert, got {E}"
    if not 0 < k <= E:
        return f"MoE top-k must be in 1..{E} (the number of experts), got k={k}"
    if h <= 0:
        return f"MoE hidden size must be positive, got {h}"
    if not 0.0 <= jitter < 1.0:
        return f"MoE jitter must be in [0, 1), got {jitter}"
    return _check_groups(E, k, groups, topk_groups, group_top)


def _check_groups(
    experts: int, k: int, groups: int, topk_groups: int | None, group_top: int
) -> Problem:
    """Group-limited routing: the experts split into ``groups`` equal groups, each token picks
    its ``topk_groups`` best groups, then its top-k experts among those groups' experts."""
    if groups <= 0 or experts % groups:
        return (
            f"MoE groups={groups} must divide the {experts} experts",
            "DeepSeek's n_group: experts split into equal groups",
        )
    per_group = experts // groups
    chosen = groups if topk_groups is None else topk_groups
    if not 1 <= chosen <= groups:
        return f"MoE topk_groups must be in 1..{groups} (the number of groups), got {chosen}"
    if k > chosen * per_group:
        return (
            f"MoE top-k={k} exceeds the {chosen * per_group} experts of the {chosen} groups "
            "a token may use",
            "raise topk_groups or lower k",
        )
    if not 1 <= group_top <= per_group:
        return f"MoE group_top must be in 1..{per_group} (the experts per group), got {group_top}"
    return None


def _moe_steps(
    d_in: int, seq: int, batch: int, k: int, **args
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], int]]:
    """The steps inside, for ``blockdsl compile --show-shapes --depth 2``: ``(name,
    symbolic shape, concrete shape, forward FLOPs of the batch)``. With children the
    experts are the child blocks (listed after these steps) and run on every token."""
    sizes = moe_sizes(d_in, **args)
    E, h, gated, shared = sizes.experts, sizes.hidden, sizes.expert.gated, sizes.shared
    n = batch * seq
    steps = [
        ("router", ("B", "T", "E"), (batch, seq, E), 2 * n * d_in * E),
        ("top-k", ("B", "T", "k"), (batch, seq, k), 0),
    ]
    if sizes.children:
        steps.append(("combine", ("B", "T", "D"), (batch, seq, d_in), 2 * n * E * d_in))
    else:
        routed = ("B·T·k", "D"), (n * k, d_in)
        up = 2 * n * k * d_in * h * (2 if gated else 1)
        steps += [
            ("dispatch", *routed, 0),
            ("expert hidden", ("B·T·k", "F"), (n * k, h), up),
            ("expert out", *routed, 2 * n * k * h * d_in),
            ("combine", ("B", "T", "D"), (batch, seq, d_in), 2 * n * k * d_in),
        ]
    if shared:
        steps.append(("shared", ("B", "T", "D"), (batch, seq, d_in), n * 2 * sizes.shared_weights))
    return steps


def combine_moe_aux(auxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The model's load-balancing loss from every MoE layer's ``(2, E)`` aux:
    ``sum_e mean_l(aux_l[0, e]) * mean_l(aux_l[1, e])``, i.e. HF Mixtral's
    ``load_balancing_loss_func`` over all layers times the coefficient. Layers with
    different expert counts are combined per count and summed."""
    groups: dict[tuple[int, ...], list[torch.Tensor]] = defaultdict(list)
    for aux in auxes:
        groups[tuple(aux.shape)].append(aux)
    total = None
    for group in groups.values():
        f, p = torch.stack(group).mean(dim=0)  # (E,), (E,)
        loss = (f * p).sum()
        total = loss if total is None else total + loss
    return total if total is not None else torch.zeros(())


_MOE_HELP: dict[str, str] = {
    "experts": "number of experts; none: 8, or the number of children",
    "k": "experts per token (top-k)",
    "hidden": "each expert's hidden width; none: int(mult * d_model)",
    "mult": "hidden width as a multiple of d_model when hidden is none",
    "act": "experts' activation: relu, gelu, gelu_tanh, silu or relu2",
    "gated": "gated experts (SwiGLU with act=silu)",
    "shared": "always-on shared experts (one MLP of width shared * hidden)",
    "shared_hidden": "the shared experts' width when not shared * hidden (Qwen2-MoE's "
    "shared_expert_intermediate_size); none: shared * hidden",
    "norm_topk": "renormalise the top-k weights to sum to 1 (Mixtral; Qwen2-MoE: false)",
    "aux_loss": "load-balancing loss coefficient",
    "jitter": "multiplicative U(1-jitter, 1+jitter) noise in training (see jitter_scope)",
    "shared_gate": "scale the shared experts per token by sigmoid(shared_gate(x)) (Qwen-MoE)",
    "jitter_scope": "what the jitter multiplies: router (its input only) or input (the "
    "whole MoE input, as HF Mixtral/DBRX)",
    "score": "expert scores: softmax over the experts, or sigmoid of each (DeepSeek-V3)",
    "score_bias": "a bias buffer added to the scores for choosing experts only (DeepSeek-V3)",
    "groups": "expert groups for group-limited routing (DeepSeek n_group)",
    "topk_groups": "groups each token may use (DeepSeek topk_group); none: all",
    "group_top": "a group's score: the sum of its group_top best expert scores",
    "routed_scale": "multiplier of the routed experts' weights (routed_scaling_factor)",
    "router_bias": "a learned bias on the router's logits (gpt-oss)",
    "expert_bias": "learned biases on each expert's gate, up and down projections (gpt-oss)",
    "glu_limit": "gpt-oss's clamped SwiGLU: gate clamped to at most glu_limit, up to "
    "[-glu_limit, glu_limit], out (up + 1) * gate * sigmoid(glu_alpha * gate); none: "
    "act(gate) * up",
    "glu_alpha": "the sigmoid's slope in the clamped SwiGLU (glu_limit; gpt-oss's swiglu_alpha)",
}


@register(
    "MoE",
    out_features=same_size,
    aux_loss=True,
    params=_moe_params,
    flops=_moe_flops,
    check=_check_moe,
    arg_help=_MOE_HELP,
    shape_steps=_moe_steps,
    combine_aux=combine_moe_aux,
    decodes=True,
    init_roles={
        "router.*": "router", "shared_gate.*": "router", "w_gate": "hidden", "w_up": "hidden",
        "w_down": "output", "shared.down.*": "output", "shared.*": "hidden",
    },
)  # fmt: skip
class MoE(nn.Module):
    """Mixture of experts: a softmax router sends each token to its top-k experts.

    Routing (as HF Mixtral): ``probs = softmax(router(x))`` in float32, the top ``k`` experts of
    each token, their probabilities renormalised to sum to 1 when ``norm_topk`` (Mixtral) or
    used as they are (Qwen2-MoE, OLMoE, DeepSeek-V2). Variants:

    * ``score=sigmoid``: each expert's score is ``sigmoid(router(x))`` (DeepSeek-V3); with
      ``norm_topk`` the chosen scores are divided by their sum (plus 1e-20).
    * ``score_bias``: a persistent buffer ``score_bias`` (E,) added to the scores for choosing
      the experts only; the weights are the unbiased scores (DeepSeek-V3's
      ``e_score_correction_bias``, balanced without an auxiliary loss). It is state, not a
      parameter: imported and checkpointed, never changed by the optimizer.
    * ``groups``/``topk_groups``: group-limited routing (DeepSeek): the experts form ``groups``
      equal groups, a group's score is the sum of its ``group_top`` best (biased) scores
      (DeepSeek-V2: 1, the max; V3: 2), each token keeps its ``topk_groups`` best groups and
      picks its top-k experts among theirs.
    * ``routed_scale``: the routed experts' weights are multiplied by it (DeepSeek's
      ``routed_scaling_factor``), after ``norm_topk``.
    * ``router_bias``: the router has a bias (gpt-oss, whose softmax over the top-k logits is
      the softmax over all experts renormalised over the top k: ``norm_topk``).

    gpt-oss's experts: ``expert_bias`` adds learned biases ``b_gate``, ``b_up`` ``[E, hidden]``
    and ``b_down [E, D]`` to each expert's projections; ``glu_limit`` replaces
    ``act(gate) * up`` by the clamped SwiGLU ``(up' + 1) * gate' * sigmoid(glu_alpha * gate')``
    with ``gate' = min(gate, glu_limit)`` and ``up' = clamp(up, -glu_limit, glu_limit)``.

    ``jitter > 0`` multiplies by ``U(1 - jitter, 1 + jitter)`` noise in training: the router's
    input only (``jitter_scope=router``, Switch Transformer) or the whole MoE input, which the
    experts then see too (``jitter_scope=input``, HF Mixtral's ``router_jitter_noise`` and DBRX's
    ``moe_jitter_eps``). ``shared`` always-on experts are one gated/plain MLP ``shared`` of width
    ``shared * hidden`` (or ``shared_hidden``, a width that is no multiple of it) added to every
    token; with ``shared_gate`` its output is scaled per token by ``sigmoid(shared_gate(x))``
    (``nn.Linear(D, 1, bias=False)``; Qwen2-MoE, Qwen3-Next).

    Experts: ``experts`` (default 8) MLPs of width ``hidden`` (default ``int(mult * d_model)``)
    stored stacked as ``w_gate [E, hidden, D]`` (gated only), ``w_up [E, hidden, D]``,
    ``w_down [E, D, hidden]`` (``F.linear`` layout; HF Mixtral's ``gate_up_proj`` is
    ``cat(w_gate, w_up, dim=1)`` and its ``down_proj`` is ``w_down``); the router is
    ``router`` (``nn.Linear(D, E, bias=False)``). Dispatch is sparse in eager mode and under
    ``torch.compile`` alike: the token-expert assignments are sorted by expert and each expert
    multiplies only its own tokens (a grouped matrix multiply, ``components/grouped.py``; the
    fused ``F.grouped_mm`` where torch has it for the device and dtype), with static shapes, no
    capacity limit (no token is dropped) and no graph break.

    Children (``MoE(k=2)[MLP, MLP(act=gelu), Attn]``): the experts are the child modules
    (``E = len(children)``; ``experts`` may be left unset). Because a child may mix positions,
    *every child runs on the whole (B, T, D) input* and the router combines their outputs per
    token with the sparse top-k weights, so the cost is that of running all children. Declared
    ``params``/``flops`` cover the router (and shared experts) only; the children count their own.

    Returns ``(y, aux)`` with ``aux = stack([aux_loss * E * f, p])`` of shape (2, E): ``f_e``
    is the number of top-k assignments to expert e over the number of tokens, ``p_e`` the mean
    router probability of e. ``MoE.combine_aux`` turns every layer's aux into the
    Switch/Mixtral load-balancing loss (times the coefficient).
    """

    def __init__(
        self,
        d_model: int,
        experts: int | None = None,
        k: int = 2,
        hidden: int | None = None,
        mult: float = 4.0,
        act: Activation = "silu",
        gated: bool = True,
        shared: int = 0,
        norm_topk: bool = True,
        aux_loss: float = 0.01,
        jitter: float = 0.0,
        children: Sequence[nn.Module] | None = None,
        shared_gate: bool = False,
        jitter_scope: Literal["router", "input"] = "router",
        score: Literal["softmax", "sigmoid"] = "softmax",
        score_bias: bool = False,
        groups: int = 1,
        topk_groups: int | None = None,
        group_top: int = 1,
        routed_scale: float = 1.0,
        shared_hidden: int | None = None,
        router_bias: bool = False,
        expert_bias: bool = False,
        glu_limit: float | None = None,
        glu_alpha: float = 1.702,
    ) -> None:
        super().__init__()
        children = list(children or [])
        raise_problem(
            _check_moe(
                d_model,
                experts,
                k,
                hidden,
                mult,
                n_children=len(children),
                groups=groups,
                topk_groups=topk_groups,
                group_top=group_top,
                jitter=jitter,
                shared=shared,
                shared_hidden=shared_hidden,
                glu_limit=glu_limit,
                act=act,
                gated=gated,
            )
        )
        sizes = moe_sizes(d_model, experts, hidden, mult, n_children=len(children))
        E, h = sizes.experts, sizes.hidden
        self.d_model, self.num_experts, self.k, self.hidden = d_model, E, k, h
        self.norm_topk, self.aux_coef, self.jitter = norm_topk, aux_loss, jitter
        self.jitter_scope, self.score = jitter_scope, score
        self.groups, self.group_top, self.routed_scale = groups, group_top, routed_scale
        self.topk_groups = groups if topk_groups is None else topk_groups
        if score_bias:
            self.register_buffer("score_bias", torch.zeros(E, dtype=torch.float32))
        else:
            self.score_bias = None
        self.act_name, self.act, self.gated = act, activation(act), gated
        self.glu_limit, self.glu_alpha = glu_limit, glu_alpha
        self.router = nn.Linear(d_model, E, bias=router_bias)
        self.b_gate = self.b_up = self.b_down = None
        if children:
            self.experts = nn.ModuleList(children)
            self.w_gate = self.w_up = self.w_down = None
        else:
            self.experts = None
            self.w_gate = nn.Parameter(torch.empty(E, h, d_model)) if gated else None
            self.w_up = nn.Parameter(torch.empty(E, h, d_model))
            self.w_down = nn.Parameter(torch.empty(E, d_model, h))
            if expert_bias:
                self.b_gate = nn.Parameter(torch.zeros(E, h)) if gated else None
                self.b_up = nn.Parameter(torch.zeros(E, h))
                self.b_down = nn.Parameter(torch.zeros(E, d_model))
        shared_width = shared * h if shared_hidden is None else shared_hidden
        self.shared = (
            MLP(d_model, hidden=shared_width, act=act, gated=gated, bias=False) if shared else None
        )
        self.shared_gate = nn.Linear(d_model, 1, bias=False) if shared and shared_gate else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init for each expert's matrices."""
        for w in (self.w_gate, self.w_up):
            if w is not None:
                init_linear_(w, self.d_model)
        if self.w_down is not None:
            init_linear_(self.w_down, self.hidden)
        for b in (self.b_gate, self.b_up, self.b_down):
            if b is not None:
                nn.init.zeros_(b)

    # ------------------------------------------------------------------ routing
    def _jittered(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        return x * noise

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, D) tokens -> router scores (N, E) float32, top-k weights (N, k), indices (N, k)."""
        if self.training and self.jitter > 0 and self.jitter_scope == "router":
            x = self._jittered(x)
        logits = self.router(x).float()
        sigmoid = self.score == "sigmoid"
        probs = torch.sigmoid(logits) if sigmoid else F.softmax(logits, dim=-1)  # (N, E)
        choice = probs if self.score_bias is None else probs + self.score_bias
        if self.topk_groups < self.groups:
            choice = self._limit_groups(choice)
        if choice is probs:
            top_w, top_i = probs.topk(self.k, dim=-1)  # (N, k)
        else:  # chosen by the biased or group-masked scores, weighted by the scores
            top_i = choice.topk(self.k, dim=-1).indices
            top_w = probs.gather(1, top_i)
        if self.norm_topk:
            total = top_w.sum(dim=-1, keepdim=True)
            top_w = top_w / (total + 1e-20 if self.score == "sigmoid" else total)
        if self.routed_scale != 1.0:
            top_w = top_w * self.routed_scale
        return probs, top_w, top_i

    def _limit_groups(self, choice: torch.Tensor) -> torch.Tensor:
        """(N, E) scores with every expert outside each token's ``topk_groups`` best groups set
        to -inf; a group's score is the sum of its ``group_top`` best."""
        per_group = self.num_experts // self.groups
        grouped = choice.view(-1, self.groups, per_group)  # (N, G, E/G)
        group_scores = grouped.topk(self.group_top, dim=-1).values.sum(dim=-1)  # (N, G)
        kept = group_scores.topk(self.topk_groups, dim=-1).indices  # (N, topk_groups)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, kept, True)
        return grouped.masked_fill(~keep[..., None], float("-inf")).view_as(choice)

    def _experts_grouped(
        self, x: torch.Tensor, top_w: torch.Tensor, top_i: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        """Each expert on its own tokens only: the N*k (token, expert) assignments sorted by
        expert, the routed copies of the tokens gathered in that order, one grouped matrix
        multiply per projection (``grouped_linear``: row group e meets expert e's matrix),
        weighted, and added back to their tokens. Shapes are static (N*k rows whatever the
        routing; an expert with no tokens is an empty group), nothing reads values on the host,
        so eager and ``torch.compile(fullgraph=True)`` run the same computation."""
        expert = top_i.flatten()  # (N*k,) expert of each assignment, token-major
        order = expert.argsort(stable=True)  # assignments grouped by expert
        token = order // self.k  # (N*k,) token of each sorted assignment
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end of each expert's group
        routed = x[token]  # (N*k, D)
        which = expert[order]  # (N*k,) the expert of each sorted assignment: its biases' row
        up = self._biased(grouped_linear(routed, self.w_up, offs), self.b_up, which)
        gate = None
        if self.gated:
            gate = self._biased(grouped_linear(routed, self.w_gate, offs), self.b_gate, which)
        h = self._hidden(gate, up)  # (N*k, hidden)
        out = self._biased(grouped_linear(h, self.w_down, offs), self.b_down, which)  # (N*k, D)
        out = out * top_w.flatten()[order, None].to(out.dtype)
        return torch.zeros_like(x).index_add(0, token, out)  # (N, D)

    @staticmethod
    def _biased(y: torch.Tensor, bias: torch.Tensor | None, which: torch.Tensor) -> torch.Tensor:
        """``y`` (N*k, F) plus each row's expert's bias (``expert_bias``), else ``y``."""
        return y if bias is None else y + bias[which].to(y.dtype)

    def _hidden(self, gate: torch.Tensor | None, up: torch.Tensor) -> torch.Tensor:
        """The experts' hidden activations: ``act(gate) * up``, ``act(up)`` when not gated, or
        gpt-oss's clamped SwiGLU (``glu_limit``)."""
        if gate is None:
            return self.act(up)
        if self.glu_limit is None:
            return self.act(gate) * up
        gate = gate.clamp(max=self.glu_limit)
        up = up.clamp(-self.glu_limit, self.glu_limit)
        return (up + 1) * gate * torch.sigmoid(self.glu_alpha * gate)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: Sequence[Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # ``positions`` reach the children; ``state`` (decoding, docs/generation.md) has one
        # entry per child, that child block's state
        B = x.shape[0]
        if self.training and self.jitter > 0 and self.jitter_scope == "input":
            x = self._jittered(x)  # the experts (and children) see the noisy input too
        flat = rearrange(x, "b t d -> (b t) d")  # (N, D), N = B*T tokens
        probs, top_w, top_i = self.route(flat)  # (N, E), (N, k), (N, k)
        E = self.num_experts
        counts = F.one_hot(top_i.flatten(), E).sum(dim=0)  # (E,) assignments per expert
        if self.experts is not None:  # children: all run on the whole input
            weights = torch.zeros_like(probs).scatter(1, top_i, top_w)  # (N, E)
            weights = rearrange(weights, "(b t) e -> b t e", b=B).to(x.dtype)
            states = state if state is not None else [None] * E
            y = sum(
                weights[..., e, None] * _call_child(child, x, positions, states[e])
                for e, child in enumerate(self.experts)
            )
            y = rearrange(y, "b t d -> (b t) d")
        else:
            y = self._experts_grouped(flat, top_w, top_i, counts)
        if self.shared is not None:
            shared_out = self.shared(flat)
            if self.shared_gate is not None:
                shared_out = torch.sigmoid(self.shared_gate(flat)) * shared_out
            y = y + shared_out
        # load balancing statistics: fraction of tokens sent to e (top-k counted), mean prob
        f = counts.float() / flat.shape[0]  # (E,)
        p = probs.mean(dim=0)  # (E,)
        aux = torch.stack([self.aux_coef * E * f, p])  # (2, E)
        return rearrange(y, "(b t) d -> b t d", b=B), aux

    @classmethod
    def combine_aux(cls, auxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """The model's load-balancing loss from every MoE layer's aux (``combine_moe_aux``)."""
        return combine_moe_aux(auxes)

    def extra_repr(self) -> str:
        routing = "" if self.score == "softmax" else f", score={self.score}"
        if self.groups > 1:
            routing += f", groups={self.groups}, topk_groups={self.topk_groups}"
        return (
            f"experts={self.num_experts}, k={self.k}, hidden={self.hidden}, act={self.act_name}, "
            f"gated={self.gated}, norm_topk={self.norm_topk}{routing}"
        )


def _call_child(
    child: nn.Module, x: torch.Tensor, positions: torch.Tensor | None, state: Any
) -> torch.Tensor:
    """A child block on the stream, with the positions when it reads them and its decoding
    state when it keeps one."""
    kwargs: dict[str, Any] = {}
    if positions is not None and "positions" in getattr(child, "context", ()):
        kwargs["positions"] = positions
    if state is not None:
        kwargs["state"] = state
    return child(x, **kwargs)
