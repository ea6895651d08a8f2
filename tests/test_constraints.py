"""Gradient constraints: which rules a trainer declares, the order the loop applies them in around the step,
the one clip and what it exempts, and an ensemble's stacked form of member 0's rules."""

import pytest
import torch

from conftest import tiny_values
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.methods import METHODS, Activation, register_method
from sdlkit.methods.relu import ReLUConfig
from sdlkit.train import Trainer
from sdlkit.train.constraints import (
    ActivationPostStep,
    Constraint,
    ExemptAnchorPull,
    HardAnchors,
    UnitNormDecoder,
)
from sdlkit.train.ensemble import EnsembleTrainer
from sdlkit.train.loop import clip_grads_except, constrain_grads, train_step


def trainer(unit_norm_decoder: bool = True, **train) -> Trainer:
    values = tiny_values("topk", steps=3, **train)
    values["model"]["unit_norm_decoder"] = unit_norm_decoder
    config = run_config(values)
    return Trainer(config, build_source(config.data))


@pytest.mark.parametrize(
    ("unit_norm_decoder", "anchors", "declared"),
    [
        (True, None, [UnitNormDecoder]),
        (False, None, []),
        (True, {"count": 5, "mode": "hard"}, [UnitNormDecoder, HardAnchors]),
        (True, {"count": 5}, [UnitNormDecoder, ExemptAnchorPull]),
        (False, {"count": 5}, [ExemptAnchorPull]),
        (True, {"count": 5, "clip_pull": True}, [UnitNormDecoder]),  # the pull is clipped with the rest
    ],
)
def test_a_trainer_declares_the_rules_of_its_config(unit_norm_decoder, anchors, declared):
    built = trainer(unit_norm_decoder, anchors=anchors)
    assert [type(c) for c in built.constraints] == declared


class Recorder(Constraint):
    """Logs each hook with what it saw: the gradient's norm before the clip, whether the weights had moved."""

    def __init__(self, name: str, log: list, model: torch.nn.Module):
        self.name, self.log, self.model = name, log, model

    def constrain_grads(self) -> None:
        self.before = self.model.b_D.detach().clone()
        self.log.append((self.name, "grads", float(self.model.W_E.grad.norm())))

    def clip_exempt(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.log.append((self.name, "exempt"))
        return []

    def restore(self) -> None:
        self.log.append((self.name, "restore", not torch.equal(self.model.b_D, self.before)))


def test_the_loop_applies_the_rules_in_order_around_the_step():
    """Every rule's gradient hook after the backward and before the clip, in list order; the exemptions asked
    for the clip; every rule's restore after the optimiser moved the weights, in list order."""
    built, log = trainer(grad_clip=1e-4), []
    built.constraints += [Recorder("a", log, built.model), Recorder("b", log, built.model)]
    train_step(built, built.source.batch(0, 64))
    assert [entry[:2] for entry in log] == [
        ("a", "grads"),
        ("b", "grads"),
        ("a", "exempt"),
        ("b", "exempt"),
        ("a", "restore"),
        ("b", "restore"),
    ]
    assert log[0][2] > 1e-4 and log[0][2] == log[1][2]  # not clipped yet
    assert log[4][2] and log[5][2]  # the step came first


class ExemptBias(Constraint):
    """Asks the clip to keep b_D's whole gradient."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def clip_exempt(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.model.b_D.grad, self.model.b_D.grad.clone())]


def test_the_clip_keeps_what_a_rule_exempts_and_clips_the_rest_to_the_limit():
    built = trainer(grad_clip=1e-3)
    built.constraints.append(ExemptBias(built.model))
    built.losses(built.source.batch(0, 64)).loss.backward()
    for constraint in built.constraints[:-1]:
        constraint.constrain_grads()
    before = {name: p.grad.clone() for name, p in built.model.named_parameters()}
    assert float(torch.cat([g.flatten() for n, g in before.items() if n != "b_D"]).norm()) > 1e-3
    constrain_grads(built, stacked=False)
    after = {name: p.grad for name, p in built.model.named_parameters()}
    torch.testing.assert_close(after["b_D"], before["b_D"], rtol=1e-6, atol=0)
    rest = torch.cat([g.flatten() for n, g in after.items() if n != "b_D"])
    assert float(rest.norm()) == pytest.approx(1e-3, rel=1e-4)


def test_the_clip_without_exempt_parts_is_torchs_for_one_run_and_per_member_for_a_stack():
    """One run: torch.nn.utils.clip_grad_norm_, bit for bit. A stack: member by member, a member under the
    limit left bit for bit."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(6))]
    for p in params:
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in params]
    torch.nn.utils.clip_grad_norm_(params, 1.5)
    clip_grads_except(grads, [], 1.5)
    for p, g in zip(params, grads, strict=True):
        assert torch.equal(p.grad, g)
    a, b = torch.randn(3, 5, 4), torch.randn(3, 6)
    a[1], b[1] = a[1] * 1e-3, b[1] * 1e-3
    stacked = [a.clone(), b.clone()]
    clip_grads_except(stacked, [], 1.5, stacked=True)
    for e in range(3):
        norm = float(torch.cat([a[e].flatten(), b[e]]).norm())
        torch.testing.assert_close(stacked[0][e], min(1.0, 1.5 / norm) * a[e])
        torch.testing.assert_close(stacked[1][e], min(1.0, 1.5 / norm) * b[e])
    assert torch.equal(stacked[0][1], a[1]) and torch.equal(stacked[1][1], b[1])


def test_an_ensemble_takes_member_0s_rules_onto_its_stacks():
    """The stacked rules act on the stacked weights, and the exempted pull on each member's own anchors."""
    configs = []
    for seed in (0, 1, 2):
        values = tiny_values("topk", steps=2, anchors={"count": 5, "weight": 0.5, "seed": seed})
        values["seed"], values["model"]["kernel"] = seed, "dense"
        configs.append(run_config(values))
    source = build_source(configs[0].data)
    ensemble = EnsembleTrainer(configs, [source] * 3)
    assert [type(c) for c in ensemble.constraints] == [UnitNormDecoder, ExemptAnchorPull]
    unit, pull = ensemble.constraints
    assert unit.W_D is ensemble.params["W_D"]
    assert pull.W_E is ensemble.params["W_E"] and pull.W_D is ensemble.params["W_D"]
    for e, member in enumerate(ensemble.members):
        assert torch.equal(pull.A[e], member.anchors.A) and torch.equal(pull.B[e], member.anchors.B)
        assert float(pull.weight[e]) == 0.5
    assert not torch.equal(pull.A[0], pull.A[1])  # the members' own anchors, not member 0's three times


def test_a_rule_without_a_stacked_form_says_so():
    built = trainer(anchors={"count": 5, "mode": "hard"})
    with pytest.raises(NotImplementedError, match="HardAnchors has no stacked form"):
        built.constraints[-1].stacked(lambda tensor: tensor)


def test_a_sigma_with_a_post_step_gets_it_after_every_step():
    calls = []

    class Counted(Activation):
        has_post_step = True

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z.relu()

        def post_step(self) -> None:
            calls.append(1)

    @register_method
    class CountedConfig(ReLUConfig):
        name: str = "counted-test"

        def build_activation(self, n_latents: int) -> Activation:
            return Counted()

    try:
        config = run_config(tiny_values({"name": "counted-test"}, steps=3))
        built = Trainer(config, build_source(config.data))
        assert [type(c) for c in built.constraints] == [UnitNormDecoder, ActivationPostStep]
        built.fit()
        assert len(calls) == 3
    finally:
        del METHODS["counted-test"]
