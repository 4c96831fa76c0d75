"""Generation benchmarks: scripts that write JSON (and a figure), driven by ``workbench bench
generate|speculative|quality``; never timed tests.

- ``speed.bench_generate``: decode tokens/s, time to first token, latency, memory and the bandwidth floor, per model,
  batch size and context (``BENCH_FIELDS``);
- ``speculative.bench_speculative``: speculative decoding with a draft against plain greedy;
- ``quality.bench_quality``: perplexity, KL and top-1 agreement by position against the teacher, and continuations
  side by side;
- ``facts``: what they share (bandwidth, bytes per decode step, prompts).
"""

from workbench.generation.bench.facts import corpus_tokens, kv_bytes, measure_bandwidth, prompts, weight_bytes
from workbench.generation.bench.quality import bench_quality, bucketed_agreement, position_buckets
from workbench.generation.bench.speculative import bench_speculative
from workbench.generation.bench.speed import BENCH_FIELDS, HF_SUFFIX, bench_generate, run_setting

__all__ = ["BENCH_FIELDS", "HF_SUFFIX", "bench_generate", "run_setting", "bench_speculative", "bench_quality",
           "bucketed_agreement", "position_buckets", "corpus_tokens", "kv_bytes", "measure_bandwidth", "prompts",
           "weight_bytes"]
