"""Tolerant reading of the JSON-like answer objects that models write.

Models wrap answers in chatter and code fences, use single quotes, leave trailing
commas, write Python's True/None, or stop mid-object when they run out of tokens. We
look for balanced {...} spans (last one first, since models often echo the schema
before answering), repair the common slips, and read the span with `json`. If no span
reads, a per-field regular expression is the last resort. Nothing is ever evaluated.

Keys are normalised ("Current_Observation " -> "current observation") so that every
task asks for its fields in one spelling.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

MAX_ANSWER_CHARS = 8_000  # answers of 512 new tokens stay far below this
_MAX_SPANS = 32

_STRUCTURAL = re.compile(r"""[{}"'\\]""")
_BARE_WORDS = {"True": "true", "False": "false", "None": "null"}
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_UNQUOTED_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_ ]*?)(\s*:)")


class AnswerError(ValueError):
    """No answer object could be read; the message says why, for the model to read."""


def normalise_key(key: str) -> str:
    return " ".join(str(key).replace("_", " ").replace("-", " ").lower().split())


def parse_answer(
    text: str, fields: Sequence[str], required: Sequence[str], max_chars: int = MAX_ANSWER_CHARS
) -> dict[str, Any]:
    """The answer object in `text`, keys normalised, restricted to `fields`.

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
        picked = {normalise_key(k): v for k, v in obj.items() if normalise_key(k) in wanted}
        if all(k in picked for k in needed):
            return picked
    picked = _fields_by_pattern(text, wanted)
    if all(k in picked for k in needed):
        return picked
    missing = ", ".join(f'"{k}"' for k in needed if k not in picked)
    if "{" not in text:
        raise AnswerError("the answer contains no JSON object")
    raise AnswerError(f"the answer object has no readable {missing} field")


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
    """Top-level balanced {...} substrings, quotes respected inside objects."""
    spans, depth, start, quote, escaped = [], 0, 0, None, False
    for match in _STRUCTURAL.finditer(text):
        char, index = match.group(), match.start()
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = index + 1 < len(text)
            elif char == quote:
                quote = None
            continue
        if depth and char in "\"'" and not _is_apostrophe(text, index):
            quote = char
        elif char == "{":
            depth, start = depth + 1, (index if depth == 0 else start)
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : index + 1])
    return spans


def _is_apostrophe(text: str, index: int) -> bool:
    """A single quote between two letters (don't, it's) is not a string delimiter."""
    return (
        text[index] == "'"
        and 0 < index < len(text) - 1
        and text[index - 1].isalpha()
        and text[index + 1].isalpha()
    )


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
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _repair(span: str) -> str:
    """Single-quoted strings -> double-quoted, Python's True/False/None, trailing commas."""
    out, index = [], 0
    while index < len(span):
        char = span[index]
        if char in "\"'":
            end = _string_end(span, index)
            body = span[index + 1 : end]
            if char == "'":
                body = body.replace('\\"', '"').replace("\\'", "'").replace('"', '\\"')
            out.append('"' + body + '"')
            index = end + 1
            continue
        word = re.match(r"True|False|None", span[index:])
        if word and (index == 0 or not span[index - 1].isalnum()):
            out.append(_BARE_WORDS[word.group()])
            index += len(word.group())
            continue
        out.append(char)
        index += 1
    return _TRAILING_COMMA.sub(r"\1", "".join(out))


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
    """Last resort: `"field": "value"` or `"field": [..]` pairs anywhere in the text."""
    found: dict[str, Any] = {}
    for key in wanted:
        name = r"[\s_-]*".join(re.escape(part) for part in key.split())
        pattern = re.compile(
            r"""["']?""" + name + r"""["']?\s*[:=]\s*(?:"([^"\n]*)"|'([^'\n]*)'|(\[[^\]\n]*\]))""",
            re.IGNORECASE,
        )
        matches = list(pattern.finditer(text))
        if matches:
            double, single, bracket = matches[-1].groups()
            found[key] = next(v for v in (double, single, bracket) if v is not None)
    return found
