"""``compare`` and its teacher cache: a comparison served from the kept final hidden states gives the numbers of one
that runs the teacher in full, for families with a plain head, a scale or a soft cap, and keeps nothing where it
cannot."""

import copy

import pytest
import torch

from tests.helpers.tiny_models import tiny
from workbench.analysis.compare import TeacherCache, compare
from workbench.teachers.wrapper import Teacher


def student_of(model: torch.nn.Module) -> torch.nn.Module:
    """A student that differs from the teacher: its weights perturbed."""
    student = copy.deepcopy(model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student.eval()


@pytest.mark.parametrize("name", ["llama", "gemma2", "cohere", "granite"])   # plain, soft cap, scale, division
def test_a_cached_teacher_side_gives_the_numbers_of_a_full_one(name):
    teacher = Teacher(tiny(name), tokenizer=None)
    students = [student_of(teacher.model), student_of(teacher.model)]
    ids = torch.randint(3, 101, (4 * 17 + 5,))                   # odd length: the last window is dropped
    cache = TeacherCache()
    for student in students:
        full = compare(teacher, student, ids, window=16, batch_size=2)
        first = compare(teacher, student, ids, window=16, batch_size=2, teacher_cache=cache)
        again = compare(teacher, student, ids, window=16, batch_size=2, teacher_cache=cache)
        for result in (first, again):
            assert result.keys() == full.keys() and result["tokens"] == full["tokens"] == 64
            for key in ("ppl_student", "ppl_teacher", "kl", "agreement"):
                assert result[key] == pytest.approx(full[key], rel=1e-6, abs=1e-9), key
    assert len(cache.hidden) == 2 and cache.hits == 4 * 2 - 2   # 4 calls of 2 batches: only the first call misses


def test_other_windows_are_not_served_and_models_without_a_head_rule_keep_nothing():
    teacher = Teacher(tiny("llama"), tokenizer=None)
    student = student_of(teacher.model)
    cache = TeacherCache()
    ids = torch.randint(3, 101, (50,))
    compare(teacher, student, ids, window=16, teacher_cache=cache)
    other = ids.clone()
    other[5] = (other[5] + 1) % 101                                # one token differs: a new batch
    assert compare(teacher, student, other, window=16, teacher_cache=cache) == pytest.approx(
        compare(teacher, student, other, window=16))
    assert cache.hits == 0 and len(cache.hidden) == 2
    plain = TeacherCache()                                         # a bare causal LM is not a workbench Teacher
    compare(teacher.model, student, ids, window=16, teacher_cache=plain)
    assert not TeacherCache.usable(teacher.model) and plain.hidden == {}
