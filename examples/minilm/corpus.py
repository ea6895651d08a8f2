"""A labelled text corpus that ships with Python itself: no download, no hub.

Two sources, both in every CPython install:

- the language reference's topics (`pydoc_data.topics`, what `help("for")` prints): label `ref:<topic>`;
- the standard library's docstrings (modules, classes, functions), read with `ast` from the source files
  (nothing is imported, so no module runs): label `lib:<top-level module>`.

A sample is one paragraph (blank-line separated, whitespace collapsed) of at least `min_words` words.
Classes with fewer than `min_per_class` paragraphs are dropped and larger ones are capped at
`max_per_class` (a seeded random choice), so a few big packages (distutils, asyncio, email) do not
dominate the class means. The corpus depends on the Python version; `build_corpus` records it.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path

SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "ensurepip"}
"""Stdlib folders that are tests, tools or vendored code rather than library documentation."""


def paragraphs(text: str, min_words: int) -> list[str]:
    """The blank-line separated paragraphs of `text` with at least `min_words` words, whitespace collapsed."""
    parts = (" ".join(part.split()) for part in re.split(r"\n\s*\n", text))
    return [part for part in parts if len(part.split()) >= min_words]


def reference_topics(min_words: int) -> dict[str, list[str]]:
    """`ref:<topic>` -> paragraphs of the language reference topic (pydoc_data.topics)."""
    from pydoc_data.topics import topics

    return {f"ref:{name}": paragraphs(text, min_words) for name, text in sorted(topics.items())}


def library_docstrings(min_words: int, root: Path | None = None) -> dict[str, list[str]]:
    """`lib:<module>` -> paragraphs of the docstrings in the stdlib sources of that top-level module."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in SKIP_PARTS or part.startswith(("test", "config-", "__")) for part in parts[:-1]):
            continue
        if parts[-1].startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately broken or not UTF-8
        label = "lib:" + parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    found[label] += paragraphs(doc, min_words)
    return dict(found)


def balance(classes: dict[str, list[str]], min_per_class: int, max_per_class: int, seed: int) -> dict[str, list[str]]:
    """Classes with at least `min_per_class` distinct paragraphs, each capped at `max_per_class` (seeded)."""
    rng = random.Random(seed)
    kept = {}
    for label, texts in sorted(classes.items()):
        unique = list(dict.fromkeys(texts))  # docstrings repeat (overloads, aliases)
        if len(unique) < min_per_class:
            continue
        kept[label] = unique if len(unique) <= max_per_class else rng.sample(unique, max_per_class)
    return kept


def build_corpus(
    out: Path,
    *,
    min_words: int = 8,
    min_per_class: int = 20,
    max_per_class: int = 80,
    seed: int = 0,
) -> dict:
    """Write `out` (JSONL: {"text", "label"} per paragraph, grouped by class) and return a summary."""
    classes = balance(
        {**reference_topics(min_words), **library_docstrings(min_words)}, min_per_class, max_per_class, seed
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for label, texts in classes.items():
            for text in texts:
                handle.write(json.dumps({"text": text, "label": label}) + "\n")
    sizes = [len(texts) for texts in classes.values()]
    return {
        "file": str(out),
        "python": sys.version.split()[0],
        "samples": sum(sizes),
        "classes": len(classes),
        "reference_classes": sum(label.startswith("ref:") for label in classes),
        "library_classes": sum(label.startswith("lib:") for label in classes),
        "characters": sum(len(text) for texts in classes.values() for text in texts),
        "min_words": min_words,
        "min_per_class": min_per_class,
        "max_per_class": max_per_class,
        "seed": seed,
    }


if __name__ == "__main__":
    print(json.dumps(build_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "corpus.jsonl")), indent=2))
