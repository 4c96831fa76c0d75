"""load_teacher on teachers it used to refuse or load wrongly, and the teacher's positions against a sequence length.

Each test failed before its fix: a tiny Gemma-2 folder raised transformers' "does not support an attention
implementation through ... scaled_dot_product_attention" (load_teacher always asked for SDPA); a folder without a
tokenizer raised a many-line ValueError from inside transformers' tokenizer classes (Llama) or loaded with an empty
5-token tokenizer (Gemma); and the teacher had no check of a sequence length against its positions, so runs with a
longer ``--seq-len`` trained without a word.
"""

import warnings
from types import SimpleNamespace

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.helpers.tiny_models import CONFIGS, V, tiny
from workbench.teachers import Teacher, TeacherNotFound, anatomy, load_teacher, teacher_config

pytestmark = pytest.mark.usefixtures("one_thread")


def save_teacher(path, family: str, tokenizer: bool = True) -> str:
    """A tiny random ``family`` model saved as a Hugging Face folder, with a word-level tokenizer of its vocabulary
    (``tokenizer``) or none."""
    tiny(family).save_pretrained(path)
    if tokenizer:
        vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, V)}}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="w2").save_pretrained(path)
    return str(path)


def sdpa_notes(record) -> list[str]:
    return [str(w.message) for w in record if "does not support SDPA" in str(w.message)]


def test_teacher_without_sdpa_loads_with_eager_attention_and_one_note(tmp_path):
    folder = save_teacher(tmp_path, "gemma2")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        teacher = load_teacher(folder, device="cpu", dtype="float32", progress=False)
    assert sdpa_notes(record) == ["Gemma2ForCausalLM does not support SDPA attention: the teacher runs with eager "
                                  "attention"]
    assert teacher.config._attn_implementation == "eager"
    ids = teacher.encode("w5 w6 w7 w8")
    assert ids.tolist() == [[5, 6, 7, 8]]
    assert teacher.logits(ids).shape == (1, 4, V)
    cap = teacher.capture(ids, attn_probs=True)  # eager already: nothing to switch
    assert cap.attn_probs[0].shape == (1, 4, 4, 4)


def test_teacher_with_sdpa_keeps_it_without_a_note(tmp_path):
    folder = save_teacher(tmp_path, "llama")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        teacher = load_teacher(folder, device="cpu", dtype="float32", progress=False)
    assert sdpa_notes(record) == []
    assert teacher.config._attn_implementation == "sdpa"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        eager = load_teacher(folder, device="cpu", dtype="float32", attn="eager", progress=False)
    assert eager.config._attn_implementation == "eager" and sdpa_notes(record) == []


@pytest.mark.parametrize("family", ["llama", "gemma", "gemma2"])
def test_folder_without_tokenizer_is_refused_in_one_line_before_the_weights_load(tmp_path, monkeypatch, family):
    folder = save_teacher(tmp_path, family, tokenizer=False)

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the folder was checked")

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(TeacherNotFound) as err:
        load_teacher(folder, device="cpu", dtype="float32", progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{folder} has no tokenizer (none of tokenizer.json, ")
    assert f".save_pretrained('{folder}')" in message  # what to add


def teacher_of(config) -> Teacher:
    torch.manual_seed(0)
    return Teacher(tf.AutoModelForCausalLM.from_config(config), tokenizer=None, name="tiny")


def test_seq_len_longer_than_the_positions_is_refused_naming_value_and_limit():
    llama = teacher_of(CONFIGS["llama"]())
    assert llama.max_length == 2048
    llama.check_seq_len(2048)  # the limit itself is fine
    with pytest.raises(ValueError, match=r"^seq_len 2049 is longer than the 2048 positions of teacher 'tiny' "
                                         r"\(max_position_embeddings\): seq_len can be at most 2048$"):
        llama.check_seq_len(2049)
    gpt2 = teacher_of(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=64, bos_token_id=1,
                                    eos_token_id=2))  # learned positions (n_positions, read as max_position_embeddings)
    with pytest.raises(ValueError, match=r"^--seq-len 65 is longer than the 64 positions .*: --seq-len can be at "
                                         r"most 64$"):
        gpt2.check_seq_len(65, name="--seq-len")


def test_positions_are_checked_from_the_config_before_the_weights_load(tmp_path, monkeypatch):
    folder = save_teacher(tmp_path, "gemma2")
    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", None)  # no weights are read
    config = teacher_config(folder)
    anatomy.check_positions(config, 8192, name="--seq-len")
    with pytest.raises(ValueError, match=r"^--seq-len 8193 is longer than the 8192 positions of teacher .*"
                                         r"--seq-len can be at most 8192$"):
        anatomy.check_positions(config, 8193, name="--seq-len", model=f"teacher {folder!r}")


def test_seq_len_past_the_positions_of_a_rope_scaled_teacher_warns():
    config = CONFIGS["llama"]()
    config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512,
                              "rope_theta": 10000.0}
    config.max_position_embeddings = 2048
    teacher = teacher_of(config)
    with pytest.warns(UserWarning, match=r"^seq_len 4096 is longer than the 2048 positions of teacher 'tiny' "
                                         r"\(max_position_embeddings\); its RoPE scaling \(yarn\) runs past them"):
        teacher.check_seq_len(4096)


def test_rope_scaling_and_unbounded_configs():
    assert anatomy.rope_scaling(CONFIGS["llama"]()) is None                       # plain RoPE
    assert anatomy.rope_scaling(CONFIGS["gemma3"]()) is None                      # one plain RoPE per layer type
    assert anatomy.rope_scaling(CONFIGS["gpt2"]()) is None                        # no RoPE
    per_layer_type = CONFIGS["gemma3"]()
    per_layer_type.rope_parameters["full_attention"] = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert anatomy.rope_scaling(per_layer_type) == "linear"
    legacy = SimpleNamespace(max_position_embeddings=16, rope_scaling={"type": "dynamic", "factor": 2.0})
    assert anatomy.rope_scaling(legacy) == "dynamic"
    anatomy.check_positions(SimpleNamespace(), 10**6)                           # no position field: unbounded
