"""Citations of benchmarks/RESULTS.md point at its explicit anchors, never at its heading text.

RESULTS.md's headings get reworded and regrouped; an anchor line (`<a id="capped-solver"></a>` just
above a heading or a bold paragraph lead) moves with its section. A citation is `RESULTS.md#ID`,
as in `benchmarks/RESULTS.md#capped-solver`, and ID must be one of RESULTS.md's anchors (GitHub's
slugs of heading text are not: they change with the heading). Citing a section by its quoted
heading text is refused."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SCANNED = ("pql_jax", "configs", "scripts", "benchmarks", "tests", "README.md", "docs")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".txt", ".cfg"}
"""Source, configs and prose; recorded outputs (.json, .jsonl) keep the text they were written with."""

ANCHOR = re.compile(r'^<a id="([^"]*)"></a>$', re.MULTILINE)
KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
CITATION = re.compile(r"RESULTS\.md#([\w.-]*\w)")
BY_HEADING = re.compile(
    r"""RESULTS\.md(?:[ ,;:(]{1,3}|[ ,;:(]{0,3}\n[ \t]*(?:\#[ \t]*)?)\\?["“']"""  # RESULTS.md, "Heading"
    r"""|["”][ \t]+in[ \t]+(?:benchmarks/)?RESULTS\.md""")  # "Heading" in benchmarks/RESULTS.md
"""RESULTS.md followed within a few characters by a quote (on the same line or the next, past a
comment sign), or a quote closed just before `in RESULTS.md`: a section named by its heading."""


def anchors() -> list[str]:
    return ANCHOR.findall(RESULTS.read_text())


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in found if p.suffix in SUFFIXES and "__pycache__" not in p.parts
                  and p != RESULTS and p != Path(__file__).resolve()]
    return files


def bad_citations(path: Path, ids: set[str]) -> list[str]:
    """`file:line: text (why)` for each citation of RESULTS by heading text or by an unknown anchor."""
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    rel = path.relative_to(ROOT).as_posix()

    def where(match) -> str:
        number = text.count("\n", 0, match.start()) + 1
        return f"{rel}:{number}: {lines[number - 1].strip()[:100]!r}"

    bad = [f"{where(m)} (cites a heading's text: cite RESULTS.md#ID)" for m in BY_HEADING.finditer(text)]
    bad += [f"{where(m)} (no <a id=\"{m.group(1)}\"></a> in benchmarks/RESULTS.md)"
            for m in CITATION.finditer(text) if m.group(1) not in ids]
    return bad


def test_anchors_are_kebab_case_unique_and_above_a_heading():
    ids = anchors()
    assert ids, "no anchors in benchmarks/RESULTS.md"
    assert [i for i in ids if not KEBAB.fullmatch(i)] == []
    assert sorted({i for i in ids if ids.count(i) > 1}) == []
    lines = RESULTS.read_text().splitlines()
    loose = [lines[i] for i in range(len(lines)) if ANCHOR.fullmatch(lines[i])
             and not (i + 1 < len(lines) and lines[i + 1].startswith(("#", "**")))]
    assert loose == [], "an anchor goes just above its heading (or bold paragraph lead)"


def test_citations_name_existing_anchors_not_headings():
    ids = set(anchors())
    bad = [b for p in scanned_files() for b in bad_citations(p, ids)]
    assert bad == [], "\n".join(bad)


def test_the_patterns_catch_both_forms():
    ids = {"capped-solver"}
    cases = {'(benchmarks/RESULTS.md, "Capped solver")': 1, '(RESULTS.md "Capped solver")': 1,
             'benchmarks/RESULTS.md ("Capped solver")': 1, '(benchmarks/RESULTS.md,\n# "Capped solver")': 1,
             '"Capped solver" in benchmarks/RESULTS.md': 1, '"(benchmarks/RESULTS.md, \\"Capped solver\\")"': 1,
             "benchmarks/RESULTS.md#capped-solver": 0, "benchmarks/RESULTS.md#capped-solvr": 1,
             'RESULTS.md#quickstart-on-this-cpu': 1, 'ROOT / "benchmarks" / "RESULTS.md"': 0,
             "[RESULTS](benchmarks/RESULTS.md).": 0}
    for text, n in cases.items():
        found = [m.group(0) for m in BY_HEADING.finditer(text)]
        found += [m.group(0) for m in CITATION.finditer(text) if m.group(1) not in ids]
        assert len(found) == n, (text, found)
