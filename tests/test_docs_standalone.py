"""The repository stands on its own (issue 11, item 8).

Whoever clones it has no sibling directory of design notes: nothing tracked in git may
point outside the repository for the project's contracts, and the documents that now
hold them (docs/protocol.md, docs/comparison.md) exist and are linked from the README.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# assembled, so that this file does not name what it looks for
OUTSIDE = "../" + "shared"
# the section marks of the design notes that lived there: docs/protocol.md replaced them
# (also split over a comment's two lines: "DESIGN" at the end of one, "# §2" next)
OUTSIDE_SECTIONS = re.compile("DESIGN" + r"[\s#]*§")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout: {exc}")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_files():
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            continue  # listed in the index but gone from the work tree
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
        for m in OUTSIDE_SECTIONS.finditer(text):
            number = text.count("\n", 0, m.start()) + 1
            offenders.append(f"{path.relative_to(ROOT)}:{number}: {m.group()!r}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", ["protocol.md", "comparison.md"])
def test_contract_documents_exist_and_are_linked(name: str) -> None:
    assert (ROOT / "docs" / name).is_file()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"(docs/{name})" in readme, f"README.md does not link docs/{name}"


def test_relative_links_in_the_docs_resolve() -> None:
    """Every relative Markdown link in README.md and docs/ names a file that exists."""
    broken = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor on the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


def test_protocol_page_states_the_wire_constants() -> None:
    """The numbers a peer in another language needs match the code that sends them."""
    from utcp import crypto, wire

    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert f"`0x{crypto.EXID:04x}`" in text
    assert crypto.PROTOCOL_NAME.decode() in text
    assert f'"{crypto.PROLOGUE.decode()}"' in text
    assert f"{crypto.MSG1_LEN} bytes" in text and f"{crypto.MSG2_LEN} bytes" in text
    assert f"{crypto.COUNTER_OPTION_LEN} bytes: kind {wire.OPT_EXPERIMENTAL}" in text
    assert f"{crypto.REPLAY_WINDOW:,}" in text
    for kind in (wire.OPT_MSS, wire.OPT_WSCALE, wire.OPT_SACK_PERMITTED, wire.OPT_SACK,
                 wire.OPT_TIMESTAMPS, wire.OPT_EXPERIMENTAL):
        assert re.search(rf"^\| {kind} ", text, re.M), f"option kind {kind} missing"
