"""SynthSAEBench's metrics, with SAELens's definitions (`sae_lens.synthetic.evals`, SAELens 6.x), for any data
whose ground-truth features and codes are known (SynthSAEBench data, the LRB).

Every latent j has a decoder direction d_j (column j of W_D); the truth is W [d, n] (columns: feature vectors).

    explained_variance  1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)              (R², over all samples)
    mcc                 Hungarian one-to-one matching of latents to features on |cos(d_j, w_i)|: the mean matched
                        |cos| over min(n_latents, n) pairs (sdlkit.eval.recovery.matched_scores)
    uniqueness          every latent's best feature argmax_i |cos(d_j, w_i)|: distinct best features / n_latents
    precision, recall,  latent j as a detector of its best feature: TP, FP, FN over the samples (fires: x_q ≠ 0;
    f1, accuracy        feature active: code > 0); each is 0 where undefined, then averaged over ALL latents
    shrinkage           mean over samples with ‖x‖ > 1e-6 of ‖x̂‖ / ‖x‖
    l0, true_l0         mean non-zero latents / active features per sample
    dead_latents        latents that never fire on the evaluated samples (a count, as SAELens reports it)

x and x̂ include the data's bias and the decoder's b_D, as in SAELens. Counts and sums are float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.eval.recovery import best_match, matched_scores

__all__ = ["SynthMetrics", "best_features", "mcc", "sample_pairs", "synth_metrics", "uniqueness"]

MIN_INPUT_NORM = 1e-6
"""Samples with ‖x‖ at or below this are left out of the shrinkage (SAELens's ShrinkageCalculator)."""


@torch.no_grad()
def mcc(decoder: torch.Tensor, truth: torch.Tensor, candidates: int | None = None) -> float:
    """Mean matched |cos| of the optimal one-to-one matching of decoder directions [n_latents, d] (rows) to the
    truth [d, n] (columns), over min(n_latents, n) pairs. `candidates` None solves the full assignment (exact,
    as SAELens); k restricts each feature to its k most similar latents (a lower bound, much faster)."""
    k = decoder.shape[0] if candidates is None else candidates
    scores, _ = matched_scores(decoder, truth, candidates_per_feature=k)
    return float(scores.sum()) / min(decoder.shape[0], truth.shape[1])


@torch.no_grad()
def best_features(decoder: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Every latent's best-matching feature argmax_i |cos(d_j, w_i)| [n_latents] (long; ties: the lowest i)."""
    return best_match(truth.T, decoder.T)[1]


def uniqueness(best: torch.Tensor) -> float:
    """Distinct best features / latents (`best` from `best_features`); 0 without latents."""
    return best.unique().numel() / best.numel() if best.numel() else 0.0


class SynthMetrics:
    """Streaming accumulator of the sample-based metrics of `model` against the truth [d, n]; `add` batches of
    (x [B, d], codes [B, n]), then `result()`."""

    def __init__(self, model: SparseDictionary, truth: torch.Tensor):
        self.model = model
        self.decoder = model.W_D.detach().T  # [n_latents, d]
        self.best = best_features(self.decoder, truth.to(self.decoder.device))
        m = self.decoder.shape[0]
        self.tp, self.fp, self.fn, self.tn = (torch.zeros(m, dtype=torch.float64) for _ in range(4))
        self.fired = torch.zeros(m, dtype=torch.bool)
        self.samples = 0
        self.sum_x = torch.zeros(self.decoder.shape[1], dtype=torch.float64)
        self.sq_norm = self.sq_residual = self.latent_l0 = self.true_l0 = 0.0
        self.shrink_sum, self.shrink_samples = 0.0, 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        """Run the model on x [B, d] and account for the batch with its true codes [B, n]."""
        device = self.model.W_E.device
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(x.to(device))
        finally:
            self.model.train(was_training)
        x = x.to(device, torch.float64)
        x_hat = out.x_hat.to(torch.float64)
        fires = (out.x_q != 0).cpu()
        truth_fires = (codes[:, self.best.to(codes.device)] > 0).cpu()
        self._classification(fires, truth_fires)
        self.samples += x.shape[0]
        self.sum_x += x.sum(dim=0).cpu()
        self.sq_norm += float(x.pow(2).sum())
        self.sq_residual += float((x - x_hat).pow(2).sum())
        self.latent_l0 += float(fires.sum())
        self.true_l0 += float((codes != 0).sum())
        norms = x.norm(dim=1)
        valid = norms > MIN_INPUT_NORM
        self.shrink_sum += float((x_hat[valid].norm(dim=1) / norms[valid]).sum())
        self.shrink_samples += int(valid.sum())

    def _classification(self, fires: torch.Tensor, truth_fires: torch.Tensor) -> None:
        self.fired |= fires.any(dim=0)
        self.tp += (fires & truth_fires).sum(dim=0)
        self.fp += (fires & ~truth_fires).sum(dim=0)
        self.fn += (~fires & truth_fires).sum(dim=0)
        self.tn += (~fires & ~truth_fires).sum(dim=0)

    def result(self) -> dict[str, float]:
        """The sample-based metrics (see the module docstring) and uniqueness; `mcc` is separate (a matching)."""
        n = max(self.samples, 1)
        variance = self.sq_norm / n - float((self.sum_x / n).pow(2).sum())
        mse = self.sq_residual / n
        explained = 1 - mse / variance if variance >= 1e-10 else float(mse < 1e-10)  # SAELens's 0-variance rule
        precision = _ratio(self.tp, self.tp + self.fp)
        recall = _ratio(self.tp, self.tp + self.fn)
        f1 = _ratio(2 * precision * recall, precision + recall)
        total = (self.tp + self.fp + self.fn + self.tn).clamp_min(1e-8)
        return {
            "explained_variance": explained,
            "uniqueness": uniqueness(self.best),
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "accuracy": float(((self.tp + self.tn) / total).mean()),
            "shrinkage": self.shrink_sum / self.shrink_samples if self.shrink_samples else 0.0,
            "l0": self.latent_l0 / n,
            "true_l0": self.true_l0 / n,
            "dead_latents": int((~self.fired).sum()),
            "n_samples": self.samples,
        }


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.zeros_like(numerator))


def synth_metrics(
    model: SparseDictionary,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    truth: torch.Tensor,
    mcc_candidates: int | None = None,
) -> dict[str, Any]:
    """Every SynthSAEBench metric of `model` on the (x [B, d], codes [B, n]) batches of `pairs`, against the
    truth [d, n] (e.g. `source.ground_truth()["W_r"]`). `mcc_candidates`: see `mcc` (None: exact)."""
    metrics = SynthMetrics(model, truth)
    for x, codes in pairs:
        metrics.add(x, codes)
    return {**metrics.result(), "mcc": mcc(metrics.decoder, truth.to(metrics.decoder.device), mcc_candidates)}


def sample_pairs(
    source: Any, n_samples: int, batch_size: int = 4096, stream: str = "synth-metrics"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fresh (x, codes) batches from a source with ground truth, held out from its training stream: a synth
    source's `sample`, or for the LRB its `sample_codes` mapped through W_p (x = W_p · codes)."""
    for index, start in enumerate(range(0, n_samples, batch_size)):
        rows = min(batch_size, n_samples - start)
        if hasattr(source, "sample"):
            batch, codes = source.sample(rows, stream, index)
            yield batch.x_p, codes
        else:
            codes = source.sample_codes(rows, stream, index)
            yield codes @ source.ground_truth()["W_p"].T.to(codes.dtype), codes
