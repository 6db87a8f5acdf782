"""The user-facing text speaks of the product, and stands on its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.conftest import DOCS, ROOT

TEXTS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md",
                *DOCS.rglob("*.md")])
# how jobd was built, and a contract file that a user of the repository does not have
FORBIDDEN = re.compile(r"\bsessions?\b|SPEC\.md|\.\./shared|\bsprints?\b", re.I)


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_text_about_how_jobd_was_built(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        # an aiohttp.ClientSession is a thing, not a period of work
        assert not FORBIDDEN.search(line.replace("ClientSession", "")), f"{path.name}:{number}: {line}"
