"""The rule that chooses the layers keeping attention by measurement (``workbench.students.spec.AutoKeep``): what it
accepts, how many layers it keeps of a teacher, and the errors that name the fix."""

import pytest

from workbench.students.spec import AutoKeep


def test_a_share_or_a_count_with_its_method():
    assert AutoKeep.parse("auto:25%") == AutoKeep("auto", share=0.25)
    assert AutoKeep.parse("auto:8") == AutoKeep("auto", count=8)
    assert AutoKeep.parse("auto-greedy:12.5%") == AutoKeep("auto-greedy", share=0.125)
    for text in ("auto:25%", "auto:8", "auto-greedy:12.5%"):
        assert str(AutoKeep.parse(text)) == text


def test_the_count_for_a_teacher_rounds_half_up_and_keeps_one_to_all_but_one():
    assert AutoKeep.parse("auto:25%").count_for(30) == 8          # 7.5 -> 8
    assert AutoKeep.parse("auto:12.5%").count_for(30) == 4        # 3.75 -> 4
    assert AutoKeep.parse("auto:12.5%").count_for(4) == 1         # 0.5 -> 1
    assert AutoKeep.parse("auto:3").count_for(4) == 3
    with pytest.raises(ValueError, match="keeps 8 layers but the teacher has 4: at most 3"):
        AutoKeep.parse("auto:8").count_for(4)
    with pytest.raises(ValueError, match="keeps 4 layers but the teacher has 4"):
        AutoKeep.parse("auto:4").count_for(4)
    with pytest.raises(ValueError, match="rounds to no layer"):
        AutoKeep.parse("auto:1%").count_for(30)


@pytest.mark.parametrize("text, message", [
    ("auto:0%", "above 0% and below 100%"), ("auto:100%", "above 0% and below 100%"), ("auto:150%", "below 100%"),
    ("auto:0", "count of layers >= 1"), ("auto:-2", "count of layers >= 1"), ("auto:2.5", "count of layers"),
    ("auto:x%", "not a percentage"), ("auto", "not a layer-choice rule"), ("best:25%", "not a layer-choice rule"),
])
def test_malformed_rules_are_refused_with_the_accepted_forms(text, message):
    with pytest.raises(ValueError, match=message):
        AutoKeep.parse(text)
