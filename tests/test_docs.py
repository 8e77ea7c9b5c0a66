"""What the README and docs/ name exists: files and links, notebooks, `sftrl` subcommands
and their flags, notebook parameters given with -p, and the kit's functions and modules.

A page that names a flag the command does not have, a notebook that was renamed or a
function that moved misleads every reader: these tests read the pages as text and check
each name against the code."""

import argparse
import ast
import importlib
import re
import shlex

import pytest
from conftest import REPO
from papermill import inspect_notebook

from sftrl_kit.cli import build_parser
from sftrl_kit.presets import override_fields

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GENERATED = ("data/generated", "bench/results", "papermill_runs/")  # written by runs, not committed
ROOTS = {p.name for p in REPO.iterdir()} - {".git", ".venv"}
PACKAGE_DIRS = {p.name for p in (REPO / "sftrl_kit").iterdir() if p.is_dir() and p.name != "__pycache__"}


def code_spans(text: str) -> list[str]:
    """Inline `code` and the lines of fenced blocks."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S))
    return inline + [line for block in fenced for line in block.splitlines()]


def page_ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def test_there_are_pages_and_the_readme_reads_in_five_minutes():
    assert len(PAGES) >= 9
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_linked_or_named_file_exists(page):
    text = page.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
            missing.append(target)
    for span in code_spans(text):
        for token in re.findall(r"[\w.$/*<>-]+", span):
            path = token.rstrip(".,:;")
            if "/" not in path or path.startswith(GENERATED) or any(c in path for c in "$*<>"):
                continue
            first = path.split("/")[0]
            if first in ROOTS and not (REPO / path).exists():
                missing.append(path)
            elif first in PACKAGE_DIRS and not (REPO / "sftrl_kit" / path).exists():
                missing.append(path)
    assert not missing, f"{page.name} names files that are not there: {sorted(set(missing))}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_notebook_named_exists(page):
    names = set(re.findall(r"\b(0[0-9]_[a-z_]+[a-z])\b", page.read_text()))
    missing = sorted(n for n in names if not (REPO / "notebooks" / f"{n}.ipynb").is_file())
    assert not missing, f"{page.name} names notebooks that are not there: {missing}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _notebook_parameters() -> set[str]:
    names = set(override_fields())
    for path in (REPO / "notebooks").glob("[0-9]*.ipynb"):
        names |= set(inspect_notebook(str(path)))
    return names


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_sftrl_command_flag_and_parameter_exists(page):
    """`sftrl <command> [<subcommand>] --flag -p name value`, as written in the pages."""
    problems, parameters = [], _notebook_parameters()
    for span in code_spans(page.read_text()):
        for command in re.findall(r"(?:^|[\s(])(?:\.venv/bin/)?sftrl( [^|#;]*)", span):
            try:
                words = shlex.split(command.replace("\\", " "))
            except ValueError:
                words = command.split()
            parser = build_parser()
            if words and words[0] in _subparsers(parser):
                parser = _subparsers(parser)[words.pop(0)]
                if words and _subparsers(parser):
                    if words[0] not in _subparsers(parser):
                        problems.append(f"sftrl ... {words[0]}: no such subcommand")
                        continue
                    parser = _subparsers(parser)[words.pop(0)]
            elif words and not words[0].startswith("<"):
                problems.append(f"sftrl {words[0]}: no such command")
                continue
            for i, word in enumerate(words):
                if word.startswith("--") and word.split("=")[0] not in _options(parser):
                    problems.append(f"sftrl {parser.prog.split(' ', 1)[-1]} {word}: no such flag")
                if word == "-p" and i + 1 < len(words) and words[i + 1] not in parameters:
                    problems.append(f"-p {words[i + 1]}: no notebook parameter or preset field of that name")
    assert not problems, f"{page.name}: {sorted(set(problems))}"


def _kit_names() -> set[str]:
    """Every function and class defined anywhere in sftrl_kit, and the calls its texts
    spell out for the model (the V-IRL actions, `turn_direction(left)`)."""
    names = set()
    for path in (REPO / "sftrl_kit").rglob("*.py"):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names |= set(re.findall(r"([a-z_]+)\(", node.value))
    return names


def _resolves(dotted: str) -> bool:
    """module.attr[.attr] under sftrl_kit: the longest importable module, then attributes."""
    parts = dotted.removeprefix("sftrl_kit.").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module("sftrl_kit." + ".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


KIT_MODULES = {p.stem for p in (REPO / "sftrl_kit").glob("*.py")} | PACKAGE_DIRS | {"sftrl_kit"}


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_kit_name_mentioned_exists(page):
    """`study.pick_start`, `sftrl_kit.envs.register`, `plots.plot_change(...)`: the module
    and the name in it; a bare `load_policy(...)` call: a name the kit defines."""
    defined, problems = _kit_names(), []
    for span in code_spans(page.read_text()):
        for dotted in re.findall(r"\b((?:[a-z_][a-z0-9_]*\.)+[A-Za-z_][A-Za-z0-9_]*)", span):
            head = dotted.split(".")[0]
            if head in KIT_MODULES and not re.fullmatch(
                r"[\w/.-]+\.(py|md|yaml|json|jsonl|ipynb|png|svg|csv|parquet)", dotted
            ):
                if not _resolves(dotted):
                    problems.append(dotted)
        for call in re.findall(r"(?<![.\w])([a-z_][a-z0-9_]*)\(", span):
            if "_" in call and call not in defined:
                problems.append(f"{call}()")
    assert not problems, f"{page.name} names what the kit does not have: {sorted(set(problems))}"


def test_the_design_page_lays_out_every_module_of_the_kit():
    """docs/design.md's layout names every file of sftrl_kit (by its name or, inside a
    package line such as envs/general_points/, by its stem), so the floor plan a reader
    is shown is the one in the tree."""
    text = (REPO / "docs" / "design.md").read_text()
    layout = text[text.index("## Layout") : text.index("## Choices worth knowing")]
    missing = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "sftrl_kit").rglob("*.py"))
        if path.name != "__init__.py" and path.name not in layout and path.stem not in layout
    ]
    assert missing == []
