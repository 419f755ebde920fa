"""What a user reads: a short README, tables generated from the raw files, no references users cannot follow, and
relative links that resolve. Offline, standard library only, a few seconds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "make_tables.py"
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def prose(path: Path) -> str:
    """The file's text with fenced code blocks blanked (line numbers kept) and inline code removed."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else re.sub(r"`[^`\n]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation and symbols dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def make_tables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move the details to docs/"


def test_generated_tables_match_the_raw_files():
    result = make_tables("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_changed_number_in_a_raw_file_fails_the_check(tmp_path):
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    raw = tmp_path / "docs" / "results" / "forget_defaults.json"
    data = json.loads(raw.read_text(encoding="utf-8"))
    data["runs"]["orl-4x5"]["defaults"]["tasks"][2]["acc_r_drop"] += 10.0  # ΔAcc_r -2.7 -> -12.7
    raw.write_text(json.dumps(data), encoding="utf-8")
    proof = tmp_path / "docs" / "results" / "depth_proof.json"
    data = json.loads(proof.read_text(encoding="utf-8"))
    data["runs"]["orl-4x5"]["tasks"][2]["acc_r_change"] -= 10.0
    proof.write_text(json.dumps(data), encoding="utf-8")
    rerun = tmp_path / "docs" / "results" / "depth_proof_rerun.json"
    data = json.loads(rerun.read_text(encoding="utf-8"))
    data["runs"]["orl-4x5"]["tasks"][2]["acc_r_change"] -= 10.0
    rerun.write_text(json.dumps(data), encoding="utf-8")

    result = make_tables("--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert "table:forget_defaults_orl_4x5" in result.stderr
    assert "table:depth_proof" in result.stderr
    assert "table:depth_rerun" in result.stderr
    assert "table:summary" in result.stderr  # the README's line for ORL 4 x 5 reads the proof from zero
    assert "table:forget_defaults_orl_4x8" not in result.stderr

    # the repository's files are untouched; rewriting the copy brings it in line with its raw files
    assert make_tables("--check").returncode == 0
    assert make_tables("--root", str(tmp_path)).returncode == 0
    assert "| 3 | 0.0 | 0.0 | -12.7 |" in (tmp_path / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert make_tables("--check", "--root", str(tmp_path)).returncode == 0


def test_the_check_names_a_table_without_a_function(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("<!-- table:no_such_table -->\n| x |\n<!-- /table:no_such_table -->\n")
    result = make_tables("--check", "--root", str(tmp_path), "--results", str(ROOT / "docs" / "results"))
    assert result.returncode == 1
    assert "no_such_table" in result.stderr


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_references_users_cannot_follow(path):
    text = path.read_text(encoding="utf-8")
    assert "SPEC §" not in text and not re.search(r"SPEC\s*§", text)
    found = [m.group(0) for m in re.finditer(r"\bissue #?\d+", text, re.IGNORECASE)]
    assert not found, f"{path.relative_to(ROOT)}: {found}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = prose(path)
    broken = []
    for m in LINK.finditer(text):  # link text may run over a line break
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "\n".join(broken)
