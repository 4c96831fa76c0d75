"""The tokenizer fingerprint that mixes and token caches are keyed by: the same for the same ids whatever the
tokenizer file's serialisation (as different tokenizers / transformers versions write it), different when ids
change."""

import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workbench.data.tokens import PROBE, tokenizer_fingerprint


def trained() -> dict:
    """A small byte-level BPE tokenizer trained on the probe text, as its JSON."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([PROBE] * 4, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return json.loads(tok.to_str())


def fast(spec: dict) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


def test_same_ids_same_fingerprint_whatever_the_serialisation():
    spec = trained()
    other = json.loads(json.dumps(spec))
    merges = other["model"]["merges"]                      # pairs in newer files, "a b" strings in older ones
    other["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m.split(" ") for m in merges]
    other["truncation"] = None
    other["padding"] = None
    other["decoder"] = None                                # decoding does not change ids
    assert json.dumps(other) != json.dumps(spec)
    assert tokenizer_fingerprint(fast(other)) == tokenizer_fingerprint(fast(spec))


def test_other_ids_other_fingerprint():
    spec = trained()
    reference = tokenizer_fingerprint(fast(spec))
    fewer_merges = json.loads(json.dumps(spec))
    fewer_merges["model"]["merges"] = fewer_merges["model"]["merges"][1:]      # the most frequent pair unmerged
    assert fast(fewer_merges)(PROBE).input_ids != fast(spec)(PROBE).input_ids
    assert tokenizer_fingerprint(fast(fewer_merges)) != reference
    renumbered = json.loads(json.dumps(spec))
    vocab = renumbered["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]                   # two ids swapped
    assert tokenizer_fingerprint(fast(renumbered)) != reference
