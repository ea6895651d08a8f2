"""What a dictionary costs the model: next-token loss and KL with its reconstruction spliced in.

For each batch the language model runs three times: clean; with `module`'s output replaced by the
dictionary's reconstruction (spliced); with it replaced by zeros (ablated). Then

    ce_loss_recovered = (ce_zero − ce_spliced) / (ce_zero − ce_clean)      1 = as good as the model, 0 = as bad as zeros
    kl_div            = mean over real tokens of KL(p_clean ‖ p_spliced)

An SAE reads and replaces the same module output; a transcoder reads `input_module` (e.g.
`transformer.h.1.mlp:input`) and replaces the output of `module`. Only real tokens are replaced (never
padding; special tokens only with include_special=True, mirroring the harvest default that never
showed them to the dictionary). Losses are token-weighted over the whole input, padding ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdlkit.errors import ConfigError, ShapeError
from sdlkit.harvest.hooks import capture, replace_output
from sdlkit.harvest.models import ModuleSpec, check_context_size, parse_modules, prepare_tokenizer
from sdlkit.overrides import with_overrides

Dictionary = Callable[[torch.Tensor], torch.Tensor]
"""Maps activations [rows, n_in] (float32, on the model's device) to reconstructions [rows, n_out]."""


@dataclass(frozen=True)
class SpliceOptions:
    """How `splice_metrics` reads the texts and which tokens it replaces."""

    batch_size: int = 8
    """Texts tokenised and run at a time."""
    context_size: int = 128
    """Tokens per text (longer texts are truncated)."""
    include_special: bool = False
    """Also replace special tokens (BOS, EOS, ...); the harvest leaves them out by default."""


_TOTALS = ("ce_clean", "ce_spliced", "ce_zero", "kl", "targets", "tokens", "replaced")
"""Sums over batches: summed losses (float64 as floats) and token counts."""


def splice_metrics(
    model: nn.Module,
    tokenizer: Any,
    texts_or_token_batches: Sequence[str] | Iterable[dict[str, torch.Tensor] | torch.Tensor],
    module: str,
    dictionary: Dictionary,
    input_module: str | None = None,
    options: SpliceOptions | None = None,
    **overrides: Any,
) -> dict[str, float]:
    """CE loss (clean, spliced, zero-ablated), CE loss recovered and KL for `dictionary` spliced at `module`.

    `texts_or_token_batches`: texts (tokenised here in batches of `batch_size`, truncated to `context_size`)
    or token batches (dicts with input_ids [B, T] and attention_mask [B, T], right-padded, or input_ids alone).
    `options` (or keyword overrides of its fields, e.g. `batch_size=4`): see SpliceOptions.
    """
    options = with_overrides(SpliceOptions, options, overrides, "splice")
    out_spec = parse_modules([module], [model])[0]
    if out_spec.role != "output":
        raise ConfigError(f"splice module {module!r} must name a module output (the one replaced), not an input")
    in_spec = parse_modules([input_module], [model])[0] if input_module is not None else out_spec
    if tokenizer is not None:
        prepare_tokenizer(tokenizer)
    special = sorted(set(tokenizer.all_special_ids)) if tokenizer is not None and not options.include_special else []
    run = _Splice(model, in_spec, out_spec, dictionary, torch.tensor(special, dtype=torch.int64))
    totals = dict.fromkeys(_TOTALS, 0.0)
    with torch.inference_mode():
        batches = _token_batches(texts_or_token_batches, tokenizer, options.batch_size, options.context_size)
        for ids, attention in batches:
            for name, value in run.batch(ids, attention).items():
                totals[name] += value
    return _metrics(totals)


@dataclass
class _Splice:
    """One model with the dictionary to splice: runs a batch clean, spliced and zero-ablated."""

    model: nn.Module
    in_spec: ModuleSpec
    out_spec: ModuleSpec
    dictionary: Dictionary
    special_ids: torch.Tensor  # int64: token ids never replaced

    def batch(self, ids: torch.Tensor, attention: torch.Tensor) -> dict[str, float]:
        """The batch's summed losses and token counts (the keys of _TOTALS). ids, attention [B, T]."""
        model, in_spec, out_spec = self.model, self.in_spec, self.out_spec
        check_context_size(model, ids.shape[1], type(model).__name__)
        device = next(model.parameters()).device
        ids, attention = ids.to(device), attention.to(device)
        replace = attention.bool() & ~torch.isin(ids, self.special_ids.to(device))
        clean = _log_probs(model, ids, attention)
        with capture(model, in_spec.module, in_spec.role) as seen:
            splice = _splicer(replace, seen, in_spec.key, out_spec.key, self.dictionary, same=in_spec == out_spec)
            with replace_output(model, out_spec.module, splice):
                spliced = _log_probs(model, ids, attention)
        with replace_output(model, out_spec.module, _zeroer(replace)):
            zero = _log_probs(model, ids, attention)
        targets, valid = ids[:, 1:], attention[:, 1:].bool() & attention[:, :-1].bool()
        runs = (("ce_clean", clean), ("ce_spliced", spliced), ("ce_zero", zero))
        sums = {name: float(_next_token_loss(log_probs, targets, valid)) for name, log_probs in runs}
        real = attention.bool()
        kl = F.kl_div(spliced[real], clean[real], log_target=True, reduction="none").sum(-1)
        sums["kl"] = float(kl.sum(dtype=torch.float64))
        sums.update(targets=int(valid.sum()), tokens=int(real.sum()), replaced=int(replace.sum()))
        return sums


def _metrics(totals: dict[str, float]) -> dict[str, float]:
    """Per-token means of the summed losses, and CE loss recovered."""
    if not totals["targets"]:
        raise ConfigError("splice metrics need at least one sequence of two or more real tokens")
    n = totals["targets"]
    ce_clean, ce_spliced, ce_zero = totals["ce_clean"] / n, totals["ce_spliced"] / n, totals["ce_zero"] / n
    gap = ce_zero - ce_clean
    return {
        "ce_clean": ce_clean,
        "ce_spliced": ce_spliced,
        "ce_zero": ce_zero,
        "ce_loss_recovered": (ce_zero - ce_spliced) / gap if gap != 0 else float("nan"),
        "kl_div": totals["kl"] / totals["tokens"],
        "tokens": int(totals["tokens"]),
        "replaced_tokens": int(totals["replaced"]),
    }


def _token_batches(
    data: Sequence[str] | Iterable[dict[str, torch.Tensor] | torch.Tensor],
    tokenizer: Any,
    batch_size: int,
    context: int,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask) per batch, from texts or from ready token batches."""
    if isinstance(data, str):
        raise ConfigError("splice metrics need a list of texts or token batches, not a single string")
    if isinstance(data, Sequence) and data and all(isinstance(t, str) for t in data):
        if tokenizer is None:
            raise ConfigError("splice metrics on texts need the model's tokenizer")
        for start in range(0, len(data), batch_size):
            encoded = tokenizer(
                list(data[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=context,
                return_tensors="pt",
            )
            yield encoded["input_ids"], encoded["attention_mask"]
        return
    for batch in data:
        if isinstance(batch, torch.Tensor):
            ids, attention = batch, torch.ones_like(batch)
        else:
            ids, attention = batch["input_ids"], batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        if ids.ndim != 2 or attention.shape != ids.shape:
            raise ShapeError(
                f"token batch input_ids {list(ids.shape)} / attention_mask {list(attention.shape)}: "
                "both must be [batch, tokens]"
            )
        yield ids.long(), attention.long()


def _log_probs(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """log p(next token) [B, T, V] in float32."""
    output = model(input_ids=ids, attention_mask=attention)
    logits = getattr(output, "logits", None)
    if logits is None:
        raise ConfigError(f"{type(model).__name__} gives no logits; splice metrics need a language model with a head")
    return torch.log_softmax(logits.float(), dim=-1)


def _next_token_loss(log_probs: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of predicting token t+1 at position t, over valid pairs (float64)."""
    picked = log_probs[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -(picked[valid].sum(dtype=torch.float64))


def _splicer(
    replace: torch.Tensor, seen: dict[str, torch.Tensor], in_key: str, out_key: str, dictionary: Dictionary, same: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The output hook: the dictionary's reconstruction of the read activations, at the replaced tokens."""

    def splice(out: torch.Tensor) -> torch.Tensor:
        source = out if same else seen.pop("x", None)
        if source is None:
            raise ConfigError(f"input module {in_key!r} did not run before {out_key!r}; pick one that runs earlier")
        for name, x in ((in_key, source), (out_key, out)):
            if x.ndim != 3 or tuple(x.shape[:2]) != tuple(replace.shape):
                raise ShapeError(
                    f"module {name!r} gives shape {list(x.shape)}; splicing needs one vector per token "
                    f"[{replace.shape[0]}, {replace.shape[1]}, dim]"
                )
        rows = source[replace].float()
        reconstruction = dictionary(rows)
        expected = (rows.shape[0], out.shape[-1])
        if not isinstance(reconstruction, torch.Tensor) or tuple(reconstruction.shape) != expected:
            got = list(reconstruction.shape) if isinstance(reconstruction, torch.Tensor) else type(reconstruction)
            raise ShapeError(
                f"the dictionary returned {got} for input {list(rows.shape)}; {out_key!r} needs {list(expected)}"
            )
        spliced = out.clone()
        spliced[replace] = reconstruction.to(out.dtype)
        return spliced

    return splice


def _zeroer(replace: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def zero(out: torch.Tensor) -> torch.Tensor:
        return out.masked_fill(replace.unsqueeze(-1), 0)

    return zero
