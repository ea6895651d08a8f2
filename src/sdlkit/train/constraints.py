"""Gradient constraints: the rules a trainer declares once and the loop applies around every optimiser step.

    after the backward   each constraint's `constrain_grads`, in list order (average over the ranks, project
                         ∇W_D onto the unit sphere's tangent, freeze hard anchors)
    gradient clipping    one clip of all gradients (sdlkit.train.loop.clip_grads_except), keeping whole the
                         parts each constraint's `clip_exempt` names (the soft anchors' pull)
    after the step       each constraint's `restore`, in list order (renormalise W_D, σ's post-step, copy the
                         hard anchors back)

`Trainer` builds the list from its config; `EnsembleTrainer` takes member 0's list onto its stacked tensors
(`Constraint.stacked`). Within a step (sdlkit.train.loop.train_step) nothing else changes the gradients, nor
the weights besides the optimiser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sdlkit.core.method import Activation
from sdlkit.core.model import SparseDictionary, normalize_columns_, project_columns_
from sdlkit.train.anchoring import AnchorPenalty, Anchors, anchor_pull, apply_hard_anchors, zero_anchor_grads
from sdlkit.train.distributed import average_gradients

StackOf = Callable[[torch.Tensor], torch.Tensor]
"""An ensemble's map from a member's parameter or term buffer to the stack [E, ...] that replaces it."""


class Constraint:
    """One rule on a run's gradients and weights; each hook does nothing unless a rule overrides it."""

    def constrain_grads(self) -> None:
        """Change the gradients in place after the backward, before clipping."""

    def clip_exempt(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(a view into a gradient, the part of that view gradient clipping keeps whole) pairs."""
        return []

    def restore(self) -> None:
        """Bring the weights back to the rule after the optimiser step."""

    def stacked(self, stack_of: StackOf) -> Constraint:
        """The same rule on an ensemble's stacked tensors [E, ...] (see sdlkit.train.ensemble)."""
        raise NotImplementedError(f"{type(self).__name__} has no stacked form (ensemble_refusal refuses it)")


@dataclass
class AverageOverRanks(Constraint):
    """Data parallel: every gradient becomes its mean over the `world_size` ranks. First in the list, so
    that every later rule, and the clip, sees the global batch's gradient and all ranks step alike."""

    params: list[torch.Tensor]
    world_size: int

    def constrain_grads(self) -> None:
        average_gradients(self.params, self.world_size)


@dataclass
class UnitNormDecoder(Constraint):
    """W_D [..., n_out, n_latents] keeps unit columns: its gradient loses each column's parallel part (the step
    moves along the unit sphere's tangent), and the columns are renormalised after the step."""

    W_D: torch.Tensor

    def constrain_grads(self) -> None:
        if self.W_D.grad is not None:
            project_columns_(self.W_D.grad, self.W_D.detach())

    def restore(self) -> None:
        normalize_columns_(self.W_D.detach())

    def stacked(self, stack_of: StackOf) -> Constraint:
        return UnitNormDecoder(stack_of(self.W_D))


@dataclass
class ActivationPostStep(Constraint):
    """σ's own rule after the step (`Activation.post_step`, e.g. a parameter kept in its domain)."""

    activation: Activation

    def restore(self) -> None:
        self.activation.post_step()


@dataclass
class HardAnchors(Constraint):
    """Hard anchoring: W_E[:k] and W_D[:, :k] stay at the anchors. Their gradients are zeroed before the clip
    (they take no part in the step, nor in the clipped norm) and the anchors are copied back after the step."""

    model: SparseDictionary
    anchors: Anchors

    def constrain_grads(self) -> None:
        zero_anchor_grads(self.model, self.anchors.k)

    def restore(self) -> None:
        apply_hard_anchors(self.model, self.anchors)


@dataclass
class ExemptAnchorPull(Constraint):
    """Soft anchoring: gradient clipping keeps the anchors' pull whole (sdlkit.train.anchoring.anchor_pull, the
    penalty's gradient in closed form) and clips the rest. W_E [..., L, n_in], W_D [..., n_out, L]; the penalty's
    buffers A [..., k, n_in], B [..., n_out, k], weight [...]."""

    W_E: torch.Tensor
    W_D: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    weight: torch.Tensor
    unit_norm_decoder: bool

    @classmethod
    def of(cls, penalty: AnchorPenalty, model: SparseDictionary) -> ExemptAnchorPull:
        """The exemption of `penalty`'s pull on `model`'s weights."""
        return cls(model.W_E, model.W_D, penalty.A, penalty.B, penalty.weight, model.config.unit_norm_decoder)

    def clip_exempt(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        W_E, W_D, k = self.W_E, self.W_D, self.A.shape[-2]
        pull_E, pull_D = anchor_pull(W_E.detach(), W_D.detach(), self.A, self.B, self.weight, self.unit_norm_decoder)
        return [(W_E.grad[..., :k, :], pull_E), (W_D.grad[..., :, :k], pull_D)]

    def stacked(self, stack_of: StackOf) -> Constraint:
        tensors = (self.W_E, self.W_D, self.A, self.B, self.weight)
        return ExemptAnchorPull(*map(stack_of, tensors), self.unit_norm_decoder)
