"""`SynthSource`: random-access SynthSAEBench data, x = codes · W + bias, with its ground truth.

Same contract as the LRB (sdlkit.data.lrb.source): batch `index` is a pure function of (data seed, index,
batch_size), drawn with its own generator, so a stream position is one integer and resuming needs no replay.
The fixed held-out set and any extra evaluation stream (`sample`) have seed streams of their own.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from sdlkit.data.source import Batch, DataSource, DirectionKind, KnownDirections, register_source
from sdlkit.data.synth.config import SynthConfig
from sdlkit.data.synth.features import SynthModel, build_model, seeded_generator
from sdlkit.data.synth.sampler import CodeSampler, Entries
from sdlkit.errors import ConfigError

__all__ = ["SynthSource"]


class SynthSource(DataSource):
    """SynthSAEBench data on `device`: `batch(index, batch_size)`, `eval_batch()`, codes and ground truth.

    x_p = x_r = codes @ W + bias [batch, d] (SAE data: x_r is x_p), with codes [batch, n] drawn as active
    entries by `CodeSampler`. `model` is the drawn `SynthModel` (built from the config unless given, e.g. to
    sample with another implementation's dictionary and factor); `true_l0` is the held-out set's mean number
    of active features per sample (the copula and the forest leave no closed form).
    """

    def __init__(
        self,
        config: SynthConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        model: SynthModel | None = None,
    ):
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model if model is not None else build_model(config, self.device)
        self.sampler = CodeSampler(self.model)
        self.n_in = self.n_out = self.model.vectors.shape[1]
        self.in_blocks, self.out_blocks = [self.n_in], [self.n_out]
        self._vectors = self.model.vectors.to(dtype)
        self._bias = self.model.bias.to(dtype)
        self._eval: tuple[Entries, Batch] | None = None

    # ---- public API ----
    def batch(self, index: int, batch_size: int) -> Batch:
        """Training batch `index`: x_p = x_r = codes @ W + bias."""
        return self._to_batch(self.entries(index, batch_size))

    def codes(self, index: int, batch_size: int) -> torch.Tensor:
        """Codes [batch_size, n] of training batch `index` (dense, zeros where inactive)."""
        return self.dense(self.entries(index, batch_size))

    def entries(self, index: int, batch_size: int) -> Entries:
        """The active entries (CSR) of training batch `index`."""
        if index < 0 or batch_size < 1:
            raise ConfigError(
                f"batch index must be >= 0 and batch_size >= 1, got index={index}, batch_size={batch_size}"
            )
        return self.sampler.draw(batch_size, self._generator("train", index))

    def eval_batch(self) -> Batch:
        """The fixed held-out set (config.eval_size samples, cached)."""
        return self._eval_cache()[1]

    def eval_codes(self) -> torch.Tensor:
        """Codes [eval_size, n] of the held-out set."""
        return self.dense(self._eval_cache()[0])

    def sample(self, n_samples: int, stream: str = "extra", index: int = 0) -> tuple[Batch, torch.Tensor]:
        """`n_samples` fresh samples from the named stream: (the Batch, their codes [n_samples, n]). Streams are
        prefixed "user:" so they never share random numbers with training or the held-out set."""
        if n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
        entries = self.sampler.draw(n_samples, self._generator(f"user:{stream}", index))
        return self._to_batch(entries), self.dense(entries)

    def sample_codes(self, n_samples: int, stream: str = "extra", index: int = 0) -> torch.Tensor:
        """The codes of `sample(n_samples, stream, index)` (the LRB's name for it)."""
        return self.sample(n_samples, stream, index)[1]

    def ground_truth(self) -> dict[str, torch.Tensor]:
        """{"W_p": [d, n], "W_r": [d, n]}: the feature vectors as columns (separate tensors for safetensors)."""
        W = self.model.vectors.T.contiguous()
        return {"W_p": W, "W_r": W.clone()}

    def known_directions(self, kind: DirectionKind = "auto") -> KnownDirections | None:
        """The ground-truth feature vectors, named by their index."""
        if kind == "labels":
            return None
        truth = self.ground_truth()
        return KnownDirections(
            truth["W_p"], truth["W_r"], [str(i) for i in range(self.model.n_features)], "ground_truth"
        )

    @property
    def true_l0(self) -> float:
        """Mean number of active features per sample on the held-out set."""
        row_ptr = self._eval_cache()[0][0]
        return float(row_ptr[-1]) / (len(row_ptr) - 1)

    def true_l0_within(self, k: int) -> float:
        """Mean number of active features among the k most frequent (features 0..k−1) on the held-out set: the
        L0 a dictionary of k latents could match (SynthSAEBench's published L0s are set against it)."""
        row_ptr, col, _ = self._eval_cache()[0]
        return float((col < k).sum()) / (len(row_ptr) - 1)

    def dense(self, entries: Entries) -> torch.Tensor:
        """Dense codes [rows, n] of CSR entries."""
        row_ptr, col, val = entries
        rows = len(row_ptr) - 1
        out = torch.zeros(rows, self.model.n_features, device=self.device, dtype=self.dtype)
        row = torch.repeat_interleave(torch.arange(rows, device=self.device), row_ptr.diff())
        out[row, col] = val.to(self.dtype)
        return out

    # ---- internals ----
    def _generator(self, stream: str, index: int) -> torch.Generator:
        return seeded_generator(self.config.seed, stream, index, self.device)

    def _to_batch(self, entries: Entries) -> Batch:
        row_ptr, col, val = entries
        x = F.embedding_bag(col, self._vectors, row_ptr[:-1], mode="sum", per_sample_weights=val.to(self.dtype))
        x = x + self._bias
        return Batch(x_p=x, x_r=x)

    def _eval_cache(self) -> tuple[Entries, Batch]:
        if self._eval is None:
            entries = self.sampler.draw(self.config.eval_size, self._generator("eval", 0))
            self._eval = (entries, self._to_batch(entries))
        return self._eval


register_source("synth", SynthConfig, SynthSource)
