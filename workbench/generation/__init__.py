"""Fast generation for teachers, students and hybrids (one decode loop, optional CUDA graph), greedy speculative
decoding, and benchmarks of speed and quality side by side."""

from workbench.generation.engine import GenerationResult, generate
from workbench.generation.models import LoadedModel, load_model
from workbench.generation.speculative import SpeculativeResult, speculative_generate

__all__ = ["GenerationResult", "generate", "LoadedModel", "load_model", "SpeculativeResult", "speculative_generate"]
