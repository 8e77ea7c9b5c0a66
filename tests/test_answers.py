import pytest

from sftrl_kit.envs.answers import AnswerError, as_text_list, normalise_key, parse_answer

FIELDS = ("cards", "number", "formula")


def read(text):
    return parse_answer(text, fields=FIELDS, required=("formula",))


@pytest.mark.parametrize(
    "text",
    [
        '{"cards": ["A", "3"], "number": [1, 3], "formula": "(1+3)*6"}',
        "{'cards': ['A', '3'], 'number': [1, 3], 'formula': '(1+3)*6'}",
        '{"cards": ["A", "3"], "number": [1, 3], "formula": "(1+3)*6",}',
        '```json\n{"cards": ["A", "3"], "number": [1, 3], "formula": "(1+3)*6"}\n```',
        'Sure! Here\'s my answer: {"cards": ["A", "3"], "number": [1, 3], "formula": "(1+3)*6"} Hope it helps.',
        '{cards: ["A", "3"], number: [1, 3], formula: "(1+3)*6"}',
        '{"Cards": "[\'A\', \'3\']", "NUMBER": "1, 3", "Formula ": "(1+3)*6"}',
    ],
)
def test_common_answer_styles_are_read(text):
    answer = read(text)
    assert answer["formula"] == "(1+3)*6"
    assert as_text_list(answer["cards"]) == ["A", "3"]
    assert [int(x) for x in as_text_list(answer["number"])] == [1, 3]


def test_the_last_object_wins_when_the_schema_is_echoed_first():
    text = '{"cards": [...], "formula": "your equation"}\nMy answer: {"cards": ["K"], "formula": "2*12"}'
    assert read(text)["formula"] == "2*12"


def test_an_object_without_the_required_field_is_skipped():
    text = '{"formula": "1+2"} and then {"note": "no formula here"}'
    assert read(text)["formula"] == "1+2"


def test_a_truncated_object_falls_back_to_the_field_pattern():
    text = '{"cards": ["A", "3"], "number": [1, 3], "formula": "(1+3)*6", "thoughts": "the answer is'
    assert read(text)["formula"] == "(1+3)*6"


def test_python_literals_and_escapes_are_repaired():
    answer = read("{'formula': '3*8', 'done': True, 'note': None, 'quote': 'say \\'hi\\''}")
    assert answer == {"formula": "3*8"}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("no object here", "no JSON object"),
        ('{"cards": ["A"]}', 'no readable "formula"'),
        ("x" * 10_000, "longer than"),
        ("{" * 3_000 + "}" * 3_000, 'no readable "formula"'),
    ],
)
def test_unreadable_answers_raise_answer_error(text, reason):
    with pytest.raises(AnswerError) as caught:
        read(text)
    assert reason in str(caught.value)


def test_keys_are_normalised():
    assert normalise_key(" Current_Observation ") == "current observation"
    assert normalise_key("current-instruction") == "current instruction"


def test_list_fields_in_every_shape():
    assert as_text_list(["A", 3, " K "]) == ["A", "3", "K"]
    assert as_text_list("A, 3; K") == ["A", "3", "K"]
    assert as_text_list("[1, 2, 3]") == ["1", "2", "3"]
    assert as_text_list("['A', 'K'") == ["A", "K"]
    assert as_text_list(None) == []


def test_repairs_leave_string_values_alone():
    answer = read("{'formula': '(1+3)*6', 'cards': 'A, note: 3',}")
    assert answer == {"formula": "(1+3)*6", "cards": "A, note: 3"}
