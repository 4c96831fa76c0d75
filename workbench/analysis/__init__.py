"""Analysis: how a student compares with its teacher, and readings of the teacher itself.

    from workbench.analysis import perplexity, compare
    perplexity(teacher, ids, window=1024).ppl                 # held-out perplexity over fixed windows
    compare(teacher, student, ids)                            # both perplexities, KL(teacher ‖ student), agreement

- ``metrics``: per-token KL and top-1 agreement with an explicit mask (the distillation losses build on them)
- ``perplexity``: the windowing convention and perplexity of any causal LM
- ``compare``: student vs teacher on the same windows
- ``attention``: how far back each attention head looks; ``hybrids``: untrained hybrids by attention share and init
- ``mixing``: the students' mixing matrices in float32 (for figures), whatever dtype the models run in
"""

from workbench.analysis.attention import attention_reach
from workbench.analysis.compare import compare
from workbench.analysis.hybrids import keep_for_share, share_sweep
from workbench.analysis.metrics import kl_divergence, top1_agreement
from workbench.analysis.perplexity import PerplexityResult, perplexity, windows

__all__ = ["perplexity", "PerplexityResult", "windows", "compare", "kl_divergence", "top1_agreement",
           "attention_reach", "keep_for_share", "share_sweep"]
