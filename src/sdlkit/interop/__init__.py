"""Checkpoint exchange with other SAE libraries: SAELens and EleutherAI sparsify.

    export_checkpoint("runs/topk", "out/saelens", "saelens")      # cfg.json + sae_weights.safetensors
    import_checkpoint("their/sae", "ckpt", "sparsify")           # a normal sdlkit checkpoint

Every conversion is exact: the other library's forward pass on the written files gives the codes and
reconstructions of the sdlkit model (and back), up to float rounding. Where the other format cannot
express a dictionary (a crosscoder, a Gated transcoder, an input normalisation that is not linear),
the conversion refuses with one line that says so, instead of writing different numbers.

convert.py (the entry points), one module per format (saelens.py, sparsify.py: files, layout, biases),
forms.py (each method's form in a format, declared by its config in sdlkit/methods), files.py (checked
reading of the other library's files), dictionary.py (the sdlkit side: kind, dtypes, building the model).
"""

from sdlkit.interop.convert import FORMATS, export_checkpoint, import_checkpoint
from sdlkit.interop.dictionary import Imported

__all__ = ["FORMATS", "Imported", "export_checkpoint", "import_checkpoint"]
