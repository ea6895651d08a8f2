"""Table 2's scores and references on hand-made directions and counts, worked out by hand."""

from __future__ import annotations

import pytest
import torch

from sdlkit.data.directions import KnownDirections
from sdlkit.paper.table2.scoring import anchor_specificity, anchors_only, class_mean_geometry, score_dictionary


def test_anchor_specificity_worked_example():
    # latent 0 is anchored to class 2, latent 1 to class 0; base rates of classes 0, 1, 2: 25%, 50%, 25%
    label_counts = torch.tensor([[1, 0, 3], [2, 2, 0], [5, 5, 5], [0, 0, 0]])
    counts = torch.tensor([4, 4, 15, 0])
    label_rows = torch.tensor([10, 20, 10])
    # latent 0: 3 of its 4 rows are class 2 (0.75, lift 3, its top label); latent 1: 2 of 4 are class 0
    # (0.5, lift 2; a tie with class 1 goes to the first, class 0)
    got = anchor_specificity(label_counts, counts, label_rows, [2, 0])
    assert got == pytest.approx({"precision": 0.625, "lift": 2.5, "top_label": 1.0, "base_rate": 0.25})
    dead = anchor_specificity(label_counts, counts, label_rows, [2, 0, 1, 1])  # latent 3 never fired: left out
    assert dead["precision"] == pytest.approx((0.75 + 0.5 + 5 / 15) / 3)


def test_scores_on_the_unanchored_classes_and_the_anchor_reference():
    # four unit class means in the plane's first quadrant: 0°, 10°, 60°, 90°
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 60.0, 90.0]))
    W = torch.stack([angles.cos(), angles.sin()])  # [2, 4]
    truth = KnownDirections(W, W, ["a", "b", "c", "d"], "labels")
    # anchored: class 0. Scored: classes 1, 2, 3, whose best cosines with the anchor are cos 10°, cos 60°, cos 90°
    ref = anchors_only(truth, [0])
    assert ref["M_IP"] == pytest.approx(float((torch.cos(torch.deg2rad(torch.tensor([10.0, 60.0, 90.0])))).mean()))
    assert ref["M_GT"] == pytest.approx(1 / 3)  # cos 10° = 0.985 > 0.95
    # a dictionary with a latent exactly on class 2 and one on the anchor: class 1 via the anchor latent
    W_E = torch.stack([W[:, 0], W[:, 2]])  # [2 latents, 2]
    got = score_dictionary(W_E, W_E.T, truth, [0], n_anchored_latents=1)
    assert got["M_GT"] == pytest.approx(2 / 3) and got["free_M_GT"] == pytest.approx(1 / 3)
    geometry = class_mean_geometry(truth, [0])
    assert geometry["covered_by_an_anchor"] == pytest.approx(1 / 3) and geometry["classes"] == 4
