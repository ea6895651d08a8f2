"""Feature anchoring: eq. 26 on hand-built weights, anchors from ground truth and class means, training."""

import pytest
import torch

from conftest import tiny_config
from sdlkit.core.model import ModelConfig, SparseDictionary, project_columns_
from sdlkit.core.objective import TermContext
from sdlkit.data import build_source
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.train import Trainer
from sdlkit.train.anchoring import AnchorPenalty, Anchors, class_mean_anchors, ground_truth_anchors
from sdlkit.train.loop import clip_grads_except, constrain_grads


def test_penalty_is_eq_26_on_hand_built_weights():
    model = SparseDictionary(ModelConfig(n_in=2, n_latents=3, method="relu"))
    with torch.no_grad():
        model.W_E.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0], [5.0, 5.0]]))
        model.W_D.copy_(torch.tensor([[1.0, 0.0, 9.0], [1.0, 3.0, 9.0]]))
    anchors = Anchors(
        A=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), B=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), indices=[4, 7]
    )
    # ‖W_E[:2] − Ã‖² = (0² + 2²) + 0 = 4; ‖W_D[:, :2] − B̃‖² = 0 + 1 + 0 + 4 = 5; the third latent is free
    x = torch.zeros(1, 2)
    out = model(x)
    ctx = TermContext(out, x, x, model)
    assert AnchorPenalty(anchors, weight=0.5)(ctx).item() == pytest.approx(0.5 * 9)


def test_ground_truth_anchors_are_a_seeded_subset():
    W_p, W_r = torch.randn(6, 20), torch.randn(4, 20)
    a = ground_truth_anchors(W_p, W_r, k=5, seed=3)
    assert a.indices == sorted(a.indices) and len(set(a.indices)) == 5
    assert ground_truth_anchors(W_p, W_r, k=5, seed=3).indices == a.indices
    assert ground_truth_anchors(W_p, W_r, k=5, seed=4).indices != a.indices
    for row, i in enumerate(a.indices):
        torch.testing.assert_close(a.A[row], W_p[:, i] / W_p[:, i].norm())
        torch.testing.assert_close(a.B[:, row], W_r[:, i] / W_r[:, i].norm())


def test_more_anchors_than_features_is_refused():
    with pytest.raises(ConfigError, match=r"anchors count = 21 is not allowed: it must be in \[1, n_features = 20\]"):
        ground_truth_anchors(torch.randn(6, 20), torch.randn(6, 20), k=21)


def test_class_mean_anchors_are_normalised_class_means():
    torch.manual_seed(0)
    x = torch.randn(60, 5) + 1.0
    y = torch.randint(0, 4, (60,))
    a = class_mean_anchors(x, y, classes=[3, 1])
    assert a.indices == [3, 1]
    for row, c in enumerate((3, 1)):
        mean = x[y == c].mean(0)
        torch.testing.assert_close(a.A[row], mean / mean.norm())
        torch.testing.assert_close(a.B[:, row], mean / mean.norm())
    assert class_mean_anchors(x, y).indices == [0, 1, 2, 3]


def test_class_mean_anchors_bad_input():
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ConfigError, match="class 5 has no samples"):
        class_mean_anchors(x, y, classes=[5])
    with pytest.raises(ShapeError, match="labels must be integers"):
        class_mean_anchors(x, y.float())
    with pytest.raises(ShapeError, match=r"need x_p \[N, d\] and labels \[N\]"):
        class_mean_anchors(x, y[:5])


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_training_pulls_or_holds_the_anchored_latents(mode):
    # Adam moves a coordinate by at most ~lr a step, whatever λ: give the rows time to reach their anchors
    config = tiny_config("topk", steps=400, anchors={"count": 6, "weight": 1.0, "mode": mode, "seed": 1})
    source = build_source(config.data)
    trainer = Trainer(config, source)
    result = trainer.fit()
    anchors = trainer.anchors
    model = result.model
    cos_e = torch.nn.functional.cosine_similarity(model.W_E[:6], anchors.A, dim=1)
    cos_d = torch.nn.functional.cosine_similarity(model.W_D[:, :6], anchors.B, dim=0)
    if mode == "hard":
        assert torch.equal(model.W_E[:6], anchors.A) and torch.equal(model.W_D[:, :6], anchors.B)
    else:
        assert cos_e.min() > 0.95 and cos_d.min() > 0.95
    truth = source.ground_truth()["W_p"]
    torch.testing.assert_close(anchors.A, (truth[:, anchors.indices] / truth[:, anchors.indices].norm(dim=0)).T)


def test_anchor_count_larger_than_latents_is_refused():
    config = tiny_config("relu", steps=1, anchors={"count": 26})
    config.model.n_latents = 20
    with pytest.raises(ConfigError, match="train.anchors.count = 26 is larger than model.n_latents = 20"):
        Trainer(config, build_source(config.data))


# ----- the anchor pull is exempt from gradient clipping ------------------------------------------------------
def test_clip_grads_except_keeps_the_exempt_part_whole():
    """Worked directly: g' = s·(g − p) + p with s = min(1, max_norm / ‖g − p‖), member by member when stacked;
    gradients that need no clipping are left bit for bit."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 5, 4), torch.randn(3, 6)
    part = torch.randn(3, 2, 4)
    for stacked in (False, True):
        grads = [a.clone(), b.clone()]
        clip_grads_except(grads, [(grads[0][:, :2], part)], 1.5, stacked=stacked)
        data = [a.clone(), b.clone()]
        data[0][:, :2] -= part
        if stacked:
            norm = torch.stack([d.flatten(1).pow(2).sum(1) for d in data]).sum(0).sqrt()  # [3]
            s = (1.5 / norm).clamp(max=1).view(3, 1, 1)
            expect_a, expect_b = s * data[0], s.view(3, 1) * data[1]
        else:
            s = min(1.0, 1.5 / float(torch.cat([d.flatten() for d in data]).norm()))
            expect_a, expect_b = s * data[0], s * data[1]
        expect_a[:, :2] += part
        torch.testing.assert_close(grads[0], expect_a)
        torch.testing.assert_close(grads[1], expect_b)
    small = [a.clone() * 1e-3]
    clip_grads_except(small, [(small[0][:, :2], part * 1e-3)], 1.5)
    assert torch.equal(small[0], a * 1e-3)


@pytest.mark.parametrize("clip_pull", [False, True])
def test_training_clips_the_data_gradient_and_adds_the_anchor_pull_whole(clip_pull):
    """One step's gradient after clipping, against autograd run separately on the data terms and on the
    anchor penalty: s·∇(data loss) + ∇(anchor penalty), with s from the data gradient's norm alone (both
    projected onto the unit-norm decoder's tangent, as training does); with train.anchors.clip_pull, the
    old rule: s·(∇ data + ∇ anchor), s from the norm of the sum."""
    anchors = {"count": 6, "weight": 0.5, "seed": 1, "clip_pull": clip_pull}
    config = tiny_config("topk", steps=1, grad_clip=0.05, anchors=anchors)
    trainer = Trainer(config, build_source(config.data))
    batch = trainer.source.batch(0, 64)
    out = trainer.model(batch.x_p)
    ctx = TermContext(out, batch.x_p, batch.x_r, trainer.model, 0, trainer.dead.dead)
    params = list(trainer.model.parameters())
    data_loss = sum(term(ctx) for term in trainer.objective.terms if term.name != "anchor")
    anchor_loss = next(term for term in trainer.objective.terms if term.name == "anchor")(ctx)
    g_data = torch.autograd.grad(data_loss, params, retain_graph=True, allow_unused=True)
    g_anchor = torch.autograd.grad(anchor_loss, params, allow_unused=True)
    W_D = trainer.model.W_D.detach()
    expected = {}
    for (name, p), gd, ga in zip(trainer.model.named_parameters(), g_data, g_anchor, strict=True):
        gd = torch.zeros_like(p) if gd is None else gd.clone()
        ga = torch.zeros_like(p) if ga is None else ga.clone()
        if name == "W_D":
            project_columns_(gd, W_D)
            project_columns_(ga, W_D)
        expected[name] = (gd, ga)
    norm = torch.cat([gd.flatten() for gd, _ in expected.values()]).norm()
    assert norm > 0.05  # the data gradient is clipped here
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.losses(batch).loss.backward()
    constrain_grads(trainer, stacked=False)  # the trainer's constraints, then the clip (train_step's order)
    total = torch.cat([(gd + ga).flatten() for gd, ga in expected.values()]).norm()
    for name, p in trainer.model.named_parameters():
        gd, ga = expected[name]
        want = (0.05 / total) * (gd + ga) if clip_pull else (0.05 / norm) * gd + ga
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-7)
