"""Write the feature browser: a static site that opens from the file system (no server, no CDN).

    DIR/index.html            the latents: frequency, max, mean activation, top tokens, nearest class mean;
                              sortable by any column, searchable
    DIR/latent.html#ID        one latent: top activating contexts with per-token highlighting, activation
                              histogram, nearest latents by decoder cosine, labels of the rows it fires on
    DIR/data/meta.js          what was browsed (run, store, labels, options)
    DIR/data/index.js         the index's columns
    DIR/data/latents/N.js     one file per latent that fired (pages load them with <script>, which
                              file:// allows where fetch() is refused)
    DIR/assets/               the pages' CSS and JavaScript (copied from sdlkit/browse/assets)

Data files assign JSON to window.SDL_*; the pages build the DOM with textContent only, so a token
string is never parsed as HTML.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from sdlkit.browse.scan import LatentScan
from sdlkit.browse.tokens import TokenText
from sdlkit.core.model import BLOCK_ENTRIES

ASSETS = Path(__file__).parent / "assets"
PAGES = ("index.html", "latent.html")
NEIGHBOURS = 8
"""Nearest latents by decoder cosine shown per latent."""
CLASSES_SHOWN = 3
LABELS_SHOWN = 12
TOP_TOKENS = 6
INDEX_TEXT = 60
"""Characters of a whole-sample row's text in the index."""
EXAMPLE_TEXT = 600
"""Characters of a whole-sample row's text on its latent's page."""
PAGE_BLOCK = 1024
"""Latent pages whose data is converted to Python lists at a time (memory: this many pages' contexts)."""


def _js(path: Path, name: str, value: Any) -> None:
    """Write `window.<name> = <json>;` (compact, UTF-8)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    path.write_text(f"window.{name}={text};\n", encoding="utf-8")


def _round(values: torch.Tensor, digits: int = 4) -> list[float]:
    """Values as floats with `digits` significant digits (keeps the data files small)."""
    return [float(f"{v:.{digits}g}") for v in values.tolist()]


def nearest_latents(
    W_D: torch.Tensor, k: int = NEIGHBOURS, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each latent, the k other latents whose decoder columns are closest in cosine: (ids [L, k] int64,
    cosines [L, k]), computed `chunk` latents at a time ([chunk, L] similarities, never [L, L]; default: about
    BLOCK_ENTRIES similarities a chunk). Time O(L²·n_out): the browser's one cost that is quadratic in L."""
    W = torch.nn.functional.normalize(W_D.detach().float(), dim=0)
    L = W.shape[1]
    k = min(k, L - 1)
    chunk = chunk or max(1, BLOCK_ENTRIES // L)
    ids, cos = [], []
    for lo in range(0, L, chunk):
        sims = W[:, lo : lo + chunk].T @ W  # [c, L]
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + lo] = -2.0  # never its own neighbour
        best = sims.topk(k, dim=1)
        ids.append(best.indices)
        cos.append(best.values)
    return torch.cat(ids), torch.cat(cos)


def nearest_classes(directions: torch.Tensor, class_means: torch.Tensor, present: torch.Tensor, k: int = CLASSES_SHOWN):
    """Cosines of each latent's direction (columns of `directions` [n, L]) with each present class mean
    (rows of `class_means` [C, n]): the k best (class ids [L, k], cosines [L, k])."""
    D = torch.nn.functional.normalize(directions.detach().double(), dim=0)
    M = torch.nn.functional.normalize(class_means.double(), dim=1)
    sims = (M @ D).T  # [L, C]
    sims[:, ~present] = -2.0
    best = sims.topk(min(k, int(present.sum())), dim=1)
    return best.indices, best.values.float()


def write_site(
    out: Path,
    scan: LatentScan,
    W_D: torch.Tensor,
    text: tuple[TokenText, dict[int, str]],
    meta: dict[str, Any],
    labels: list[str] | None,
    anchored: int = 0,
) -> int:
    """Write the site into `out` (which must be empty or absent); returns the number of latent pages.
    `text`: (how token ids read, sample id -> the text of a row that stands for a whole sample)."""
    tokens, texts = text
    (out / "data" / "latents").mkdir(parents=True, exist_ok=True)
    shutil.copytree(ASSETS, out / "assets", dirs_exist_ok=True, ignore=shutil.ignore_patterns(*PAGES))
    for page in PAGES:
        shutil.copy(ASSETS / page, out / page)
    L = scan.count.shape[0]
    live = (scan.count > 0).nonzero().squeeze(1).tolist()
    neighbour_ids, neighbour_cos = nearest_latents(W_D)
    classes = cos = None
    if scan.class_means is not None and scan.label_rows is not None and W_D.shape[0] == scan.class_means.shape[1]:
        classes, cos = nearest_classes(W_D, scan.class_means, scan.label_rows > 0)
    top_tokens = _top_tokens(scan, tokens)
    index = {
        "freq": _round(scan.frequency),
        "max": _round(scan.max),
        "mean": _round(scan.mean_active),
        "tokens": _index_tokens(scan, top_tokens, texts),
        "cls": classes[:, 0].tolist() if classes is not None else None,
        "cos": _round(cos[:, 0], 3) if cos is not None else None,
    }
    _js(out / "data" / "meta.js", "SDL_META", {**meta, "labels": labels, "anchored": anchored, "n_latents": L})
    _js(out / "data" / "index.js", "SDL_INDEX", index)
    near = (neighbour_ids, neighbour_cos)
    nearest = (classes, cos) if classes is not None and cos is not None else None
    for lo in range(0, len(live), PAGE_BLOCK):
        block = live[lo : lo + PAGE_BLOCK]
        columns = _per_latent_columns(scan, torch.tensor(block, dtype=torch.int64))
        for j, i in enumerate(block):
            page = {
                "id": i,
                "count": int(scan.count[i]),
                "freq": index["freq"][i],
                "max": index["max"][i],
                "mean": index["mean"][i],
                "hist": columns["hist"][j],
                "near": _pairs(near, i, 3),
                "tokens": top_tokens[i],
                "examples": _examples(scan, j, text, columns),
            }
            if nearest is not None:
                page["classes"] = _pairs(nearest, i, 3)
            if columns["label_top"] is not None:
                ids, counts = columns["label_top"]
                page["labels"] = [[a, b] for a, b in zip(ids[j], counts[j], strict=True) if b > 0]
            _js(out / "data" / "latents" / f"{i}.js", "SDL_LATENT", page)
    return len(live)


def _pairs(table: tuple[torch.Tensor, torch.Tensor], i: int, digits: int) -> list[list]:
    """Row i of (ids [L, k], values [L, k]) as [[id, value], ...], values rounded to `digits` digits."""
    return [[a, b] for a, b in zip(table[0][i].tolist(), _round(table[1][i], digits), strict=True)]


def _per_latent_columns(scan: LatentScan, block: torch.Tensor) -> dict[str, Any]:
    """The scan's tensors for the latents `block` [b] as nested lists indexed [position in block][...] (one
    conversion per block of pages, not one per latent, and never the whole [L, K, W] at once)."""
    label_top = None
    if scan.label_counts is not None:
        counts = scan.label_counts[block]
        top = counts.topk(min(LABELS_SHOWN, counts.shape[1]), dim=1)
        label_top = (top.indices.tolist(), top.values.tolist())
    return {
        "hist": scan.hist[block].tolist(),
        "values": scan.top_values[:, block].T.tolist(),
        "samples": scan.top_samples[:, block].T.tolist(),
        "labels": scan.top_labels[:, block].T.tolist() if scan.top_labels is not None else None,
        "acts": scan.context_acts[:, block].permute(1, 0, 2).tolist(),
        "ids": scan.context_tokens[:, block].permute(1, 0, 2).tolist(),
        "label_top": label_top,
    }


def _index_tokens(scan: LatentScan, top_tokens: list[list[tuple[str, int]]], texts: dict[int, str]) -> list[str]:
    """The index's "top tokens" cell per latent: its three most frequent top tokens; for a latent whose top row
    stands for a whole sample, the start of that sample's text instead."""
    first = scan.top_samples[0].tolist()
    return [
        " · ".join(t for t, _ in top_tokens[i][:3]) or _snippet(texts.get(first[i], ""), INDEX_TEXT)
        for i in range(len(first))
    ]


def _snippet(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters (with an ellipsis when cut)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _examples(
    scan: LatentScan, i: int, text: tuple[TokenText, dict[int, str]], columns: dict[str, Any]
) -> list[dict[str, Any]]:
    """The top rows of the latent at position i of `columns`' block: activation v, sample s, label l, context
    tokens t with codes a, the top row at c, and for a row that stands for a whole sample its text x (when known)."""
    tokens, texts = text
    examples = []
    centre = (scan.context_tokens.shape[2] - 1) // 2
    for j, value in enumerate(columns["values"][i]):
        if value <= 0:
            break
        ids, acts = columns["ids"][i][j], columns["acts"][i][j]
        keep = [p for p, token in enumerate(ids) if token >= 0] or [centre]
        example = {
            "v": float(f"{value:.4g}"),
            "s": columns["samples"][i][j],
            "t": tokens.context([ids[p] for p in keep]) if ids[keep[0]] >= 0 else [""],
            "a": [float(f"{acts[p]:.3g}") for p in keep],
            "c": keep.index(centre) if centre in keep else 0,
        }
        if columns["labels"] is not None:
            example["l"] = columns["labels"][i][j]
        if ids[centre] < 0 and example["s"] in texts:
            example["x"] = _snippet(texts[example["s"]], EXAMPLE_TEXT)
        examples.append(example)
    return examples


def _top_tokens(scan: LatentScan, tokens: TokenText) -> list[list[tuple[str, int]]]:
    """Per latent, the display strings of the tokens at its top rows, most frequent first (ties: the order
    of the top rows), at most TOP_TOKENS, as (string, count)."""
    centre = (scan.context_tokens.shape[2] - 1) // 2
    ids = scan.context_tokens[:, :, centre].T  # [L, K]
    K = ids.shape[1]
    same = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)  # [L, K, K]
    counts = same.sum(2)  # [L, K]: how often the token at slot j occurs among the top rows
    earlier = torch.ones(K, K, dtype=torch.bool).tril(-1)  # [j, j']: j' < j
    first = ~(same & earlier).any(2) & (ids >= 0)  # slot j holds the token's first occurrence
    score = torch.where(first, counts * (K + 1) + (K - torch.arange(K)), 0)
    best = score.topk(min(TOP_TOKENS, K), dim=1)
    chosen_ids, chosen_counts = ids.gather(1, best.indices).tolist(), counts.gather(1, best.indices).tolist()
    keep = (best.values > 0).tolist()
    return [
        [(tokens.get(t, f"#{t}").strip() or "␣", n) for t, n, k in zip(tr, cr, kr, strict=True) if k]
        for tr, cr, kr in zip(chosen_ids, chosen_counts, keep, strict=True)
    ]
