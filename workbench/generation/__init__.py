"""Fast generation for teachers, students and hybrids (one decode loop, optional CUDA graph and torch.compile),
greedy speculative decoding, teacher pseudo-labels, and benchmarks of speed and quality side by side.

- ``engine``: ``generate`` (``prefill`` + a decode loop), ``Decoder`` (many batches, one captured step),
  ``DecodeOptions`` (``THROUGHPUT``), ``GenerationResult``;
- ``session``: ``Session``, a model's attention cache and mixer states, with checkpoint and rollback;
- ``graph``: the decode step in a CUDA graph; ``compile``: the decode step under torch.compile;
- ``sampling``: the next token from logits; ``speculative``: ``speculative_generate`` (a draft model) and the
  rounds both speculative decoders run; ``lookup``: ``lookup_generate`` (drafts copied from the context);
  ``verify``: the target's pass over a round's drafts (in place, captured in a CUDA graph, or by rolling back);
- ``pseudo``: corpora of a teacher's own continuations; ``models``: ``load_model`` from any name;
- ``bench``: the benchmarks behind ``workbench bench``; ``cli``: that command.
"""

from workbench._lazy import lazy_names

# name -> the module of this package that defines it, imported on first use (PEP 562): the ``workbench bench``
# command's --help and the command-line checks in ``cli`` load no model library
_NAMES = {
    "DecodeOptions": "engine", "GenerationResult": "engine", "generate": "engine", "prefill": "engine",
    "Decoder": "engine", "THROUGHPUT": "engine",
    "Session": "session", "LoadedModel": "models", "load_model": "models",
    "PseudoLabelConfig": "pseudo", "generate_corpus": "pseudo",
    "SpeculativeResult": "speculative", "speculative_generate": "speculative",
    "PromptLookup": "lookup", "lookup_generate": "lookup",
}
__all__ = list(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
