"""Fast generation for teachers, students and hybrids (one decode loop, optional CUDA graph and torch.compile),
greedy speculative decoding, teacher pseudo-labels, and benchmarks of speed and quality side by side.

- ``engine``: ``generate`` (``prefill`` + a decode loop), ``DecodeOptions``, ``GenerationResult``;
- ``session``: ``Session``, a model's attention cache and mixer states, with checkpoint and rollback;
- ``graph``: the decode step in a CUDA graph; ``compile``: the decode step under torch.compile;
- ``sampling``: the next token from logits; ``speculative``: ``speculative_generate``;
- ``pseudo``: corpora of a teacher's own continuations; ``models``: ``load_model`` from any name;
- ``bench``: the benchmarks behind ``workbench bench``; ``cli``: that command.
"""

from workbench.generation.engine import DecodeOptions, GenerationResult, generate, prefill
from workbench.generation.models import LoadedModel, load_model
from workbench.generation.pseudo import PseudoLabelConfig, generate_corpus
from workbench.generation.session import Session
from workbench.generation.speculative import SpeculativeResult, speculative_generate

__all__ = ["DecodeOptions", "GenerationResult", "generate", "prefill", "Session", "LoadedModel", "load_model",
           "PseudoLabelConfig", "generate_corpus", "SpeculativeResult", "speculative_generate"]
