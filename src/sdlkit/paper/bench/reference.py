"""Reference rows of a bench report, computed on the same data and scored by the same metrics as every run:

- chance: a randomly initialised dictionary of the runs' shape (what M_GT and M_IP give for no learning);
- oracle: the ground-truth dictionary W_r as decoder, with the best linear encoder (least squares of the
  codes on x_p, with a bias, fitted on training samples) and ReLU: the ceiling of an SAE's encoder rows.
  Its FVU is that of W_r · ReLU(E x_p + b) on the held-out rows;
- dictionary learning: scikit-learn's MiniBatchDictionaryLearning with non-negative codes (a classical
  sparse-coding baseline with no encoder: only its atoms, the decoder columns, are scored; its FVU uses
  its own sparse coding of the held-out rows). Needs scikit-learn (`pip install 'sdlkit[bench]'`); the row
  is left out, and the report says so, without it.

Each reference is saved as a checkpoint folder beside `ground_truth.safetensors`, so its scores can be
recomputed like a run's.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data.lrb.source import LRBSource
from sdlkit.eval.metrics import reconstruction_metrics
from sdlkit.io import save, save_tensors
from sdlkit.paper.bench.scoring import score

REFERENCES = ("chance", "oracle", "dictionary-learning")
FIT_SAMPLES = 16_384
"""Training samples the oracle is fitted on."""
DL_SAMPLES, DL_EVAL_ROWS = 4096, 1024
"""Training samples the dictionary-learning baseline is fitted on (one pass), and the held-out rows its
FVU is measured on (coordinate-descent sparse coding is the slow part: benchmarks/README.md has its cost)."""
DL_ALPHA = 0.1
"""L1 weight of the dictionary-learning baseline's sparse coding (chosen so its L0 is near the true L0 on
the quick preset)."""


def _training_rows(source: LRBSource, samples: int, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [samples, n], x_p [samples, n_in]) from the start of the training stream."""
    batches = range(max(1, samples // batch_size))
    codes = torch.cat([source.codes(i, batch_size) for i in batches])
    x_p = torch.cat([source.batch(i, batch_size).x_p for i in batches])
    return codes, x_p


def _dictionary(n_in: int, n_out: int, n_latents: int, seed: int = 0) -> SparseDictionary:
    config = ModelConfig(n_in=n_in, n_out=n_out, n_latents=n_latents, method={"name": "relu"})
    return SparseDictionary(config, torch.Generator().manual_seed(seed))


@torch.no_grad()
def chance(source: LRBSource, n_latents: int) -> tuple[SparseDictionary, dict[str, Any]]:
    """A randomly initialised dictionary (sdlkit's own initialisation, seed 0) of `n_latents` latents."""
    return _dictionary(source.n_in, source.n_out, n_latents), {"fvu": None, "l0": None}


@torch.no_grad()
def oracle(source: LRBSource) -> tuple[SparseDictionary, dict[str, Any]]:
    """W_D = W_r, and (W_E, b_E) = the least-squares fit of the codes on [x_p, 1] over FIT_SAMPLES rows."""
    codes, x_p = _training_rows(source, FIT_SAMPLES)
    design = torch.cat([x_p, torch.ones(len(x_p), 1, dtype=x_p.dtype)], dim=1).double()
    solution = torch.linalg.lstsq(design, codes.double()).solution  # [n_in + 1, n]
    model = _dictionary(source.n_in, source.n_out, source.W_r.shape[1])
    model.W_E.copy_(solution[:-1].T)
    model.b_E.copy_(solution[-1])
    model.W_D.copy_(source.W_r)
    model.b_D.zero_()
    metrics = reconstruction_metrics(model, source.eval_batch())
    return model, {"fvu": metrics["fvu"], "l0": metrics["l0"]}


def dictionary_learning(source: LRBSource, n_latents: int) -> tuple[SparseDictionary, dict[str, Any]] | None:
    """MiniBatchDictionaryLearning (non-negative codes, coordinate descent) on FIT_SAMPLES rows; None
    without scikit-learn."""
    try:
        from sklearn.decomposition import MiniBatchDictionaryLearning
    except ImportError:
        return None
    _, x_p = _training_rows(source, DL_SAMPLES)
    learner = MiniBatchDictionaryLearning(
        n_components=n_latents,
        alpha=DL_ALPHA,
        batch_size=256,
        max_iter=1,
        positive_code=True,
        fit_algorithm="cd",
        transform_algorithm="lasso_cd",
        transform_alpha=DL_ALPHA,
        random_state=0,
    )
    with warnings.catch_warnings():  # coordinate descent warns about its iteration cap on almost every batch
        warnings.simplefilter("ignore")
        learner.fit(x_p.double().numpy())
        eval_x = source.eval_batch().x_p[:DL_EVAL_ROWS]
        codes = torch.from_numpy(learner.transform(eval_x.double().numpy()))
    atoms = torch.from_numpy(learner.components_)  # [n_latents, n_in]
    model = _dictionary(source.n_in, source.n_out, n_latents)
    with torch.no_grad():
        model.W_D.copy_((atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)).T)
        model.W_E.copy_(model.W_D.T)
        model.b_E.zero_()
        model.b_D.zero_()
    x_hat = codes @ atoms
    centred = eval_x.double() - eval_x.double().mean(dim=0)
    fvu = ((x_hat - eval_x.double()) ** 2).sum().item() / (centred**2).sum().item()
    return model, {"fvu": fvu, "l0": (codes != 0).sum(dim=1).double().mean().item(), "encoder": False}


def reference_records(
    source: LRBSource, n_latents: int, out: Path, subdir: str, exclude: list[int], tau: float, base: dict[str, Any]
) -> list[dict[str, Any]]:
    """Build, save (out/subdir/<name>/) and score every reference row on `source` (SAE-mode bench data).
    `base` holds the fields every record of this data shares (frame, setting, the frame's geometry)."""
    folder = out / subdir
    folder.mkdir(parents=True, exist_ok=True)
    truth = source.ground_truth()
    save_tensors(folder / "ground_truth.safetensors", truth)
    builders = {
        "chance": lambda: chance(source, n_latents),
        "oracle": lambda: oracle(source),
        "dictionary-learning": lambda: dictionary_learning(source, n_latents),
    }
    records = []
    for name, build in builders.items():
        started = time.perf_counter()
        built = build()
        if built is None:
            continue
        model, extra = built
        save(model, folder / name)
        record = score(model, source, exclude, tau, curves=False)
        if not extra.pop("encoder", True):  # no encoder rows: only the atoms are a dictionary
            for key in [k for k in record if not k.endswith("_decoder")]:
                record[key] = None
        records.append(
            {
                **base,
                "reference": name,
                "excluded_features": exclude,
                **record,
                **extra,
                "fit_seconds": time.perf_counter() - started,
                "run_dir": f"{subdir}/{name}",
            }
        )
    return records
