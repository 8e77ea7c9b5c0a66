"""Tolerant reading of the JSON-like answer objects that models write.

Models wrap answers in chatter and code fences, use single quotes, leave trailing
commas, write Python's True/None, or stop mid-object when they run out of tokens. We
look for balanced {...} spans (last one first, since models often echo the schema
before answering), repair the common slips, and read the span with `json`. If no span
reads, a per-field regular expression is the last resort. Nothing is ever evaluated.

String escapes are read as JSON (and Python) define them wherever a string is read, so
an answer written with escapes (`json.dumps` writes a trailing newline as `\\n`) reads
exactly as the decoded object does. Keys are normalised ("Current_Observation " ->
"current observation") so that every task asks for its fields in one spelling, and
values lose surrounding whitespace (`normalise_value`), which no task's field gives a
meaning to, so every verifier checks the same value however the model spaced it.

`field_offset` says where in the text a field is written, reading keys as `parse_answer`
does (PPO's `thought_coef` weights the tokens before it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

MAX_ANSWER_CHARS = 8_000  # answers of 512 new tokens stay far below this
_MAX_SPANS = 32

_STRUCTURAL = re.compile(r"""[{}"']""")
# One escape in a string body (a Python \xHH or \UHHHHHHHH, or any backslash pair), or a
# double quote, which must be escaped in a JSON string.
_ESCAPE_OR_QUOTE = re.compile(r'\\(x[0-9a-fA-F]{2}|U[0-9a-fA-F]{8}|.)|"', re.DOTALL)
_JSON_ESCAPES = set('"\\/bfnrtu')
_BARE_WORDS = {"True": "true", "False": "false", "None": "null"}
_BARE_WORD = re.compile("|".join(_BARE_WORDS))
_TRAILING_COMMA = re.compile(r",(?=\s*[}\]])")
_UNQUOTED_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_ ]*?)(\s*:)")
_BARE_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*:")  # _UNQUOTED_KEY after its [{,]
_KEY_END = re.compile(r"\s*(:|\Z)")  # a key, or one the text was cut off after


class AnswerError(ValueError):
    """No answer object could be read; the message says why, for the model to read."""


def normalise_key(key: str) -> str:
    return " ".join(str(key).replace("_", " ").replace("-", " ").lower().split())


def normalise_value(value: Any) -> Any:
    """A field's value without surrounding whitespace on its strings (lists included)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return [normalise_value(item) for item in value]
    return value


def parse_answer(
    text: str, fields: Sequence[str], required: Sequence[str], max_chars: int = MAX_ANSWER_CHARS
) -> dict[str, Any]:
    """The answer object in `text`, restricted to `fields`, keys and values normalised
    (`normalise_key`, `normalise_value`).

    Raises AnswerError when no object holding every `required` field can be read.
    """
    if not isinstance(text, str):
        raise AnswerError(f"the answer must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise AnswerError(f"the answer is longer than {max_chars} characters")
    wanted = {normalise_key(f) for f in fields}
    needed = [normalise_key(f) for f in required]
    for span in reversed(_object_spans(text)[-_MAX_SPANS:]):
        obj = read_json_object(span)
        if obj is None:
            continue
        picked = _pick(obj, wanted)
        if all(k in picked for k in needed):
            return picked
    picked = _pick(_fields_by_pattern(text, wanted), wanted)
    if all(k in picked for k in needed):
        return picked
    missing = ", ".join(f'"{k}"' for k in needed if k not in picked)
    if "{" not in text:
        raise AnswerError("the answer contains no JSON object")
    raise AnswerError(f"the answer object has no readable {missing} field")


def field_offset(text: str, field: str) -> int | None:
    """Where `field` is first written in `text`: the offset of its key (the opening quote
    of a quoted key), or None where it is not written.

    Keys are read as `parse_answer` reads them: double-quoted, single-quoted or bare
    (`{formula: ...}`), in any spelling `normalise_key` folds into the field ("Formula ",
    "current_observation"), followed by ":" inside an object, whether or not the object
    is complete or readable (a quoted key the text is cut off after counts too). Only
    where no object holds the key, the first pair that parse_answer's last resort reads
    (`formula = "1+2"`). The first such key counts, so a schema echoed before the answer
    is not a thought."""
    wanted = normalise_key(field)
    depth, index = 0, 0
    while index < len(text):
        char = text[index]
        if char == "{" or (char == "," and depth):
            depth += char == "{"
            bare = _BARE_KEY.match(text, index + 1)
            if bare and normalise_key(bare.group(1)) == wanted:
                return bare.start(1)
        elif char == "}" and depth:
            depth -= 1
        elif depth and char in "\"'" and not _is_apostrophe(text, index):
            end = _string_end(text, index)
            key = end < len(text) and _KEY_END.match(text, end + 1)
            if key and normalise_key(_decode_string(text[index + 1 : end])) == wanted:
                return index
            index = end + 1
            continue
        index += 1
    pair = _field_pattern(wanted).search(text)
    return pair.start() if pair else None


def _pick(obj: dict, wanted: set[str]) -> dict[str, Any]:
    return {normalise_key(k): normalise_value(v) for k, v in obj.items() if normalise_key(k) in wanted}


def as_text_list(value: Any) -> list[str]:
    """A list field that may arrive as a list, a JSON-ish string or 'a, b, c'."""
    if isinstance(value, list):
        return [str(item).strip() for item in value]
    if value is None:
        return []
    text = str(value).strip()
    if text.startswith("["):
        parsed = _read_json(_repair(text))
        if isinstance(parsed, list):
            return [str(item).strip() for item in parsed]
        text = text.strip("[]")
    return [part.strip().strip("'\"") for part in re.split(r"[,;]", text) if part.strip()]


def _object_spans(text: str) -> list[str]:
    """Top-level balanced {...} substrings; inside an object, strings are skipped whole
    (escapes included) by the same `_string_end` that `_repair` uses."""
    spans, depth, start, resume = [], 0, 0, 0
    for match in _STRUCTURAL.finditer(text):
        char, index = match.group(), match.start()
        if index < resume:
            continue
        if depth and char in "\"'" and not _is_apostrophe(text, index):
            resume = _string_end(text, index) + 1
        elif char == "{":
            depth, start = depth + 1, (index if depth == 0 else start)
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : index + 1])
    return spans


def _is_apostrophe(text: str, index: int) -> bool:
    """A single quote between two letters (don't, it's) is not a string delimiter."""
    return text[index] == "'" and 0 < index < len(text) - 1 and text[index - 1].isalpha() and text[index + 1].isalpha()


def read_json_object(span: str) -> dict | None:
    """One {...} text as a dict, or None: read as it is, then repaired, then with bare
    keys quoted as well (last, since that pattern could also match inside a string)."""
    repaired = _repair(span)
    for candidate in (span, repaired, _quote_bare_keys(repaired)):
        parsed = _read_json(candidate)
        if isinstance(parsed, dict):
            return parsed
    return None


def _read_json(text: str) -> Any:
    """JSON, allowing raw control characters (a literal newline) inside strings."""
    try:
        return json.loads(text, strict=False)
    except (ValueError, RecursionError):
        return None


def _repair(span: str) -> str:
    """Strings -> JSON strings (`_json_string`); outside strings, Python's True/False/None
    -> JSON's and trailing commas dropped (so a ", }" inside a string stays)."""
    out, index = [], 0
    while index < len(span):
        char = span[index]
        if char in "\"'":
            end = _string_end(span, index)
            out.append(_json_string(span[index + 1 : end]))
            index = end + 1
            continue
        word = _BARE_WORD.match(span, index)
        if word and (index == 0 or not span[index - 1].isalnum()):
            out.append(_BARE_WORDS[word.group()])
            index = word.end()
            continue
        if not _TRAILING_COMMA.match(span, index):
            out.append(char)
        index += 1
    return "".join(out)


def _json_string(body: str) -> str:
    """A string body written between single or double quotes, as a JSON string literal.

    JSON escapes are kept; Python's \\' becomes ', \\xHH and \\UHHHHHHHH become the
    character, a bare " is escaped, and any other backslash stays a literal backslash (as
    Python reads an unknown escape)."""

    def convert(match: re.Match) -> str:
        escape = match.group(1)
        if escape is None:
            return '\\"'
        if escape == "'":
            return "'"
        if len(escape) > 1 and int(escape[1:], 16) <= 0x10FFFF:  # \xHH or \UHHHHHHHH
            return json.dumps(chr(int(escape[1:], 16)))[1:-1]
        if escape in _JSON_ESCAPES:
            return match.group()
        return "\\\\" + escape

    return '"' + _ESCAPE_OR_QUOTE.sub(convert, body) + '"'


def _decode_string(body: str) -> str:
    """A string body as `_repair` would read it, or the body itself if it cannot be read."""
    decoded = _read_json(_json_string(body))
    return decoded if isinstance(decoded, str) else body


def _quote_bare_keys(text: str) -> str:
    return _UNQUOTED_KEY.sub(lambda m: f'{m.group(1)}"{m.group(2).strip()}"{m.group(3)}', text)


def _string_end(text: str, start: int) -> int:
    quote, index = text[start], start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == quote and not _is_apostrophe(text, index):
            return index
        index += 1
    return len(text)


def _fields_by_pattern(text: str, wanted: set[str]) -> dict[str, Any]:
    """Last resort: `"field": "value"` or `"field": [..]` pairs anywhere in the text.
    A quoted value's escapes are decoded as in an object."""
    found: dict[str, Any] = {}
    for key in wanted:
        matches = list(_field_pattern(key).finditer(text))
        if matches:
            double, single, bracket = matches[-1].groups()
            quoted = double if double is not None else single
            found[key] = _decode_string(quoted) if quoted is not None else bracket
    return found


def _field_pattern(key: str) -> re.Pattern:
    """`"key": "value"`, `'key' = 'value'`, `key: [..]`: one field's pair, as the last resort reads it."""
    name = r"[\s_-]*".join(re.escape(part) for part in key.split())
    return re.compile(
        r"""["']?""" + name + r"""["']?\s*[:=]\s*"""
        r"""(?:"((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)'|(\[[^\]\n]*\]))""",
        re.IGNORECASE,
    )
