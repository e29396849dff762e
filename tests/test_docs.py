"""The documentation stays true to the code: the whole settings table is the generated one,
the test command is CI's, the README stays short and links every page, every `jewelmatch`
command it shows exists with the options it is given, and the benchmarks' summary quotes
the result files it names."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_settings_page_holds_exactly_the_generated_table():
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_table.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    page = (ROOT / "docs" / "settings.md").read_text()
    assert table in page, "run scripts/update-settings-doc"
    assert page.count("| `JEWELMATCH_") == table.count("| `JEWELMATCH_")


def test_ci_runs_the_test_command_the_readme_gives():
    test_command = "scripts/dev-setup && .venv/bin/python -m pytest"
    assert test_command in README.split("## How it works")[0]
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short_and_links_every_page():
    assert len(README.encode()) <= 15 * 1024
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(f"({page})" in README for page in pages)


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|&&\s*|\|\s*|=\S*\s+)(?:\.venv/bin/)?jewelmatch\s+(.*)")


def documented_commands(text: str) -> list[str]:
    """Each `jewelmatch ...` line of a code block (continuations joined, comments dropped)
    and each inline `jewelmatch ...` span."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [s for s in re.findall(r"`([^`\n]+)`", prose) if s.startswith("jewelmatch ")]
    lines = [
        line.split(" #")[0].strip()
        for block in blocks
        for line in re.sub(r"\\\n\s*", " ", block).splitlines()
    ]
    return [match.group(1) for line in [*lines, *spans] if (match := COMMAND.search(line))]


def test_every_documented_command_exists_with_its_options():
    import typer.main

    from worker.cli import app

    root = typer.main.get_command(app)
    checked, wrong = 0, []
    for document in DOCUMENTS:
        for words in map(str.split, documented_commands(document.read_text())):
            command, named = root, []
            while words[len(named) :] and hasattr(command, "get_command"):
                found = command.get_command(None, words[len(named)])
                if found is None:
                    break
                command, named = found, [*named, words[len(named)]]
            options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            unknown = [w.split("=")[0] for w in words if w.startswith("--")]
            unknown = [o for o in unknown if o not in options]
            if not named or unknown:
                wrong.append(f"{document.name}: jewelmatch {' '.join(words)}")
            checked += 1
    assert checked >= 100 and wrong == []


def test_relative_links_in_the_docs_lead_somewhere():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


def _prose(page: Path) -> str:
    """A page without its code blocks (whose `# comments` are no headings)."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    as hyphens, a repeated one numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for title in re.findall(r"^#{1,6} (.+)$", _prose(page), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_links_to_a_section_name_one_that_exists():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#:]*)#([^)]+)\)", _prose(page)):
            linked = (page.parent / target) if target else page
            assert anchor in _anchors(linked), (page.name, target, anchor)


def test_the_benchmarks_contents_list_every_section():
    page = ROOT / "docs" / "benchmarks.md"
    contents = _prose(page).split("**Contents.**")[1].split("\n## ")[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    assert listed == _anchors(page) - {"benchmarks-matching-quality-speed-and-scale", "at-a-glance"}


def _numbers(result) -> list[float]:
    """Every number in a result file, however deep."""
    if isinstance(result, dict):
        return [n for value in result.values() for n in _numbers(value)]
    if isinstance(result, list):
        return [n for value in result for n in _numbers(value)]
    if isinstance(result, int | float) and not isinstance(result, bool):
        return [float(result)]
    return []


def _in_result(figure: str, numbers: list[float]) -> bool:
    """A figure as the page writes it (0.875, 24.8 for a share in per cent, 496 s) is one of
    the file's numbers rounded, as a share, a percentage or its complement (photos answered
    are those not refused)."""
    value = float(figure)
    tolerance = 0.5 * 10 ** -(len(figure.split(".")[1]) if "." in figure else 0) + 1e-9
    candidates = [form for n in numbers for form in (n, 100 * n, 100 * (1 - n))]
    return any(abs(candidate - value) <= tolerance for candidate in candidates)


def test_the_benchmarks_at_a_glance_figures_are_those_of_the_files_they_name():
    """Each row's first figures (before a `;`, asides in brackets aside) are in the first
    result file the row names, so a file measured again cannot leave the summary behind."""
    glance = _prose(ROOT / "docs" / "benchmarks.md").split("## At a glance")[1]
    rows = re.findall(
        r"^\| (?!what )(?!---)(.+) \| (.+) \| (.+) \|$", glance.split("\n## ")[0], re.M
    )
    assert len(rows) >= 8
    for _what, figures, source in rows:
        name = re.search(r"`([\w.-]+\.json)`", source).group(1)
        numbers = _numbers(json.loads((ROOT / "benchmarks" / "results" / name).read_text()))
        first = re.sub(r"\((?![^)]*studio)[^)]*\)", "", figures.split(";")[0])
        checked = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", first)
        assert checked, figures
        for figure in checked:
            assert _in_result(figure, numbers), (name, figure)
