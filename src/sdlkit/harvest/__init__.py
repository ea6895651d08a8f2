"""Activations from real models (Hugging Face transformers, CLIP) into an activation store, (the splice evaluation, a
dictionary put back into a language model, is sdlkit.eval.splice).

    from sdlkit.harvest import harvest
    harvest("gpt2", "transformer.h.6", "texts.txt", "stores/gpt2-h6", max_rows=1_000_000)

transformers, tokenizers, pillow and pyarrow are the optional extra `pip install sdlkit[models]`; they
are imported only when a model, an image or a Parquet file is actually read.
"""

from sdlkit.harvest.checks import check_store_matches_model
from sdlkit.harvest.datasets import Dataset, open_dataset
from sdlkit.harvest.models import LoadedModel, ModuleSpec, list_modules, load_model, module_table, parse_modules
from sdlkit.harvest.run import harvest
from sdlkit.harvest.settings import HarvestOptions

__all__ = [
    "Dataset",
    "HarvestOptions",
    "LoadedModel",
    "ModuleSpec",
    "check_store_matches_model",
    "harvest",
    "list_modules",
    "load_model",
    "module_table",
    "open_dataset",
    "parse_modules",
]
