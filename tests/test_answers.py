import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftrl_kit.envs.answers import (
    MAX_ANSWER_CHARS,
    AnswerError,
    as_text_list,
    field_offset,
    normalise_key,
    normalise_value,
    parse_answer,
    read_json_object,
)
from sftrl_kit.envs.general_points.prompts import ANSWER_FIELDS as GP_FIELDS
from sftrl_kit.envs.virl.prompts import ANSWER_FIELDS as VIRL_FIELDS

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


@pytest.mark.parametrize(
    "text",
    [
        '{"formula": "8/(3-8/3)\\n"}',  # json.dumps of a formula ending in a newline
        '{"formula": "8/(3-8/3)\\t"}',
        '{"formula": "\\u0038/(3-8/3)"}',  # \u0038 is "8"
        '{"formula": " 8/(3-8/3)\\r\\n"}',
        '{"formula": "8/(3-8/3)\n"}',  # a raw newline inside the string, not an escape
    ],
)
def test_escapes_in_the_formula_are_decoded(text):
    assert read(text) == {"formula": "8/(3-8/3)"}


@pytest.mark.parametrize("thought", ["a\nb", "\t", 'a\nb "c" \\', "caf\u00e9"])
@pytest.mark.parametrize("indent", [None, 2])
def test_an_escape_in_another_field_keeps_the_whole_object(thought, indent):
    answer = {"thought": thought, "cards": ["3", "3", "8", "8"], "formula": "8/(3-8/3)"}
    assert read(json.dumps(answer, indent=indent)) == {"cards": ["3", "3", "8", "8"], "formula": "8/(3-8/3)"}


def test_a_virl_action_with_a_trailing_newline_reads_as_the_action():
    text = json.dumps({"current observation": "a\tb", "action": "turn_direction(southwest)\n"})
    answer = parse_answer(text, fields=VIRL_FIELDS, required=("action",))
    assert answer == {"current observation": "a\tb", "action": "turn_direction(southwest)"}


def test_the_field_pattern_decodes_escapes_too():
    truncated = '{"cards": ["3"], "formula": "8/(3-8/3)\\n", "thought": "say \\"hi\\" and the answer is'
    assert read(truncated)["formula"] == "8/(3-8/3)"
    assert read("""{'formula': 'it\\'s 8/(3-8/3)', 'thought': 'unfinished""")["formula"] == "it's 8/(3-8/3)"


def test_python_string_escapes_read_as_python_reads_them():
    value = "caf\xe9 \\ 'x' \"y\" \x00\u2028\U000e0001 , }"
    written = {"formula": value, "done": True, "note": None, "rest": [1.5, "a, ]"]}
    text = repr(written)[:-1] + ", }"  # and a trailing comma
    assert all(escape in text for escape in ("\\x00", "\\'", "\\U000e0001"))  # escapes JSON lacks
    assert read_json_object(text) == written


@pytest.mark.parametrize(
    "text, offset",
    [
        ('Thinking. {"cards": ["A"], "formula": "1+2"}', 27),
        ("Thinking. {'cards': ['A'], 'formula': '1+2'}", 27),
        ('Thinking. {cards: ["A"], formula: "1+2"}', 25),
        ("Sure! ```{'formula': '1+2 = 24',}```", 10),  # notebook 01's sloppy answer
        ('{"Formula ": "1+2"}', 1),
        ('{"thought": "a, formula: b", "note": "formula", "formula": "1"}', 48),  # strings are not keys
        ('Formula: 3*4, so {"formula": "3*4"}', 18),  # prose is not a key
        ('{"cards": ["A"], "formula"', 17),  # cut off after the key
        ('formula = "1+2"', 0),  # no object: parse_answer's last resort
        ('{"cards": ["A"], "formula', None),
        ('{"cards": ["A"]}', None),
        ("no answer at all", None),
    ],
)
def test_field_offset_finds_the_key_as_parse_answer_reads_it(text, offset):
    assert field_offset(text, "formula") == offset


def test_field_offset_reads_every_spelling_of_a_virl_key():
    for key in ("current observation", "Current_Observation", "current-observation", " CURRENT OBSERVATION "):
        text = json.dumps({"action": "forward()", key: "x"})
        assert field_offset(text, "current observation") == text.index(json.dumps(key))
        assert field_offset(text, "action") == 1


def test_values_lose_surrounding_whitespace_only():
    assert normalise_value(" a b\n") == "a b"
    assert normalise_value(["\tA ", 3]) == ["A", 3]
    assert normalise_value(2.5) == 2.5
    assert read('{"formula": " (1 + 3) * 6 ", "cards": [" A\\n", "3"], "number": [1, 3]}') == {
        "formula": "(1 + 3) * 6",
        "cards": ["A", "3"],
        "number": [1, 3],
    }


# Every answer object, written out with escapes, reads as the object it encodes.
TASKS = {"gp": (GP_FIELDS, "formula"), "virl": (VIRL_FIELDS, "action")}
TRICKY_CHARACTERS = "\n\t\r\x00\x1f\x7f\"'\\/{}[],: aZ0=éß€\u2028\U0001f600\U000e0001"
TRICKY_TEXT = st.text(alphabet=st.sampled_from(TRICKY_CHARACTERS), max_size=20)
TEXT = st.one_of(st.text(max_size=20), TRICKY_TEXT)
VALUES = st.one_of(
    TEXT,
    st.lists(TEXT, max_size=3),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


def spellings(field: str) -> st.SearchStrategy[str]:
    """How a model may spell a field name: 'current observation', 'Current_Observation ', ..."""
    return st.sampled_from(
        [field, field.upper(), field.title(), field.replace(" ", "_"), field.replace(" ", "-"), f" {field} "]
    )


@st.composite
def answer_objects(draw, fields, required):
    extra_keys = st.one_of(st.sampled_from(fields).flatmap(spellings), TEXT)
    answer = draw(st.dictionaries(extra_keys, VALUES, max_size=5))
    answer[draw(spellings(required))] = draw(VALUES)
    return answer


def expected_reading(answer, fields):
    wanted = {normalise_key(f) for f in fields}
    return {normalise_key(k): normalise_value(v) for k, v in answer.items() if normalise_key(k) in wanted}


@pytest.mark.parametrize("task", sorted(TASKS))
@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    data=st.data(),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 0, 2, "\t"]),
    wrapping=st.sampled_from(["{}", "```json\n{}\n```", "My answer:\n{}\nDone."]),
)
def test_an_answer_written_with_escapes_reads_as_the_decoded_object(task, data, ensure_ascii, indent, wrapping):
    fields, required = TASKS[task]
    written = json.dumps(data.draw(answer_objects(fields, required)), ensure_ascii=ensure_ascii, indent=indent)
    text = wrapping.replace("{}", written)
    assert len(text) <= MAX_ANSWER_CHARS
    assert parse_answer(text, fields, required=(required,)) == expected_reading(json.loads(written), fields)


@pytest.mark.parametrize("task", sorted(TASKS))
@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data())
def test_an_answer_written_as_a_python_literal_reads_as_the_object(task, data):
    fields, required = TASKS[task]
    answer = data.draw(answer_objects(fields, required))
    assert parse_answer(repr(answer), fields, required=(required,)) == expected_reading(answer, fields)


@pytest.mark.parametrize("task", sorted(TASKS))
@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    data=st.data(),
    as_python=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
    wrapping=st.sampled_from(["{}", "```json\n{}\n```", "My answer:\n{}\nDone."]),
)
def test_field_offset_points_at_the_first_key_parse_answer_reads(task, data, as_python, indent, wrapping):
    fields, required = TASKS[task]
    answer = data.draw(answer_objects(fields, required))
    written = repr(answer) if as_python else json.dumps(answer, indent=indent)
    text = wrapping.replace("{}", written)
    key = next(k for k in answer if normalise_key(k) == required)
    offset = field_offset(text, required)
    assert offset is not None
    assert text[offset:].startswith(repr(key) if as_python else json.dumps(key))
    assert text[:offset].rstrip()[-1] in "{,"  # a key, not a value


def test_a_field_named_in_prose_before_the_answer_is_not_its_start():
    """Only a key counts: "formula" quoted in the thought before the answer object (which
    a plain text search took for the field) leaves that thought weighted as thought."""
    text = 'I think "formula" is the key part. {"formula": "(2+4)*4"}'
    assert field_offset(text, "formula") == text.index('{"formula"') + 1
