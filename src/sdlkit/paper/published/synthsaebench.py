"""SynthSAEBench-16k's published results (SAELens docs/synth_sae_bench.md, "Raw results for SynthSAEBench-16k
at selected L0s"; Chanin & Garriga-Alonso, arXiv 2602.14687): width 4,096, 200 M samples, lr 3e-4, batch 1,024,
mean ± standard deviation over seeds, for the report to set beside ours.

Keys: published setting ("L0=20", "L0=25") -> row -> metric -> (mean, std). Rows are sdlkit's bench rows
(standard L1 = relu); the published MatchPursuit row has no sdlkit method and is kept under its own name.
"""

from __future__ import annotations

Cell = tuple[float, float]
METRICS = ("f1", "mcc", "uniqueness", "explained_variance")
"""The published columns, as sdlkit.eval.synth_metrics names them."""


def _row(*cells: Cell) -> dict[str, Cell]:
    return dict(zip(METRICS, cells, strict=True))


SYNTHSAEBENCH_16K: dict[str, dict[str, dict[str, Cell]]] = {
    "L0=25": {
        "batchtopk": _row((0.7316, 0.0010), (0.7574, 0.0003), (0.9837, 0.0015), (0.7923, 0.0003)),
        "matryoshka": _row((0.8793, 0.0021), (0.7927, 0.0006), (0.9987, 0.0005), (0.7792, 0.0004)),
        "matching-pursuit": _row((0.4464, 0.0044), (0.6930, 0.0030), (0.8281, 0.0069), (0.8351, 0.0003)),
        "relu": _row((0.5562, 0.0020), (0.6039, 0.0012), (0.8976, 0.0021), (0.7654, 0.0001)),
        "jumprelu": _row((0.7317, 0.0034), (0.7527, 0.0009), (0.9885, 0.0010), (0.7951, 0.0004)),
    },
    "L0=20": {
        "batchtopk": _row((0.8183, 0.0011), (0.7526, 0.0007), (0.9760, 0.0028), (0.7889, 0.0002)),
        "matryoshka": _row((0.8601, 0.0016), (0.7455, 0.0021), (0.9874, 0.0020), (0.7699, 0.0002)),
        "matching-pursuit": _row((0.4439, 0.0024), (0.6748, 0.0028), (0.7552, 0.0026), (0.8267, 0.0003)),
        "relu": _row((0.5777, 0.0012), (0.5834, 0.0015), (0.8528, 0.0055), (0.7501, 0.0009)),
        "jumprelu": _row((0.8241, 0.0041), (0.7434, 0.0015), (0.9781, 0.0029), (0.7906, 0.0005)),
    },
}
