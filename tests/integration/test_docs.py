"""docs/architecture.md is the map of the code: it must name only files and
folders that exist, and every folder of the proxy library must be on it.
(Issue 13: "the architecture document matches the folders".)"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
SOURCE_SUFFIXES = (".cc", ".h", ".py", ".md", ".toml", ".html", ".sh", ".txt")
SKIP_DIRS = {".git", "node_modules", "__pycache__"}


def tree() -> tuple[set[str], set[str]]:
    """Every file and folder below the repository (build trees left out),
    as repository-relative paths."""
    files, dirs = set(), set()
    for root, subdirs, names in os.walk(REPO):
        rel = Path(root).relative_to(REPO)
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.startswith("build")]
        if str(rel) != ".":
            dirs.add(rel.as_posix())
        for name in names:
            files.add((rel / name).as_posix() if str(rel) != "." else name)
    return files, dirs


def named_paths(text: str) -> list[str]:
    """The code spans of the document that name a file or a folder."""
    out = []
    for span in re.findall(r"`([^`\s]+)`", text):
        if "*" in span or "<" in span or span.startswith("../"):
            continue  # globs, placeholders, and the shared design outside the repo
        if span.endswith("/") or span.endswith(SOURCE_SUFFIXES):
            out.append(span)
    return out


def exists(span: str, files: set[str], dirs: set[str]) -> bool:
    """`span` is a path in the tree, or the tail of one (`session/relay.h`,
    `worker.cc`), or the same under a library's include folder
    (`portico/net/chunk.h`)."""
    if span.endswith("/"):
        tail = span.rstrip("/")
        return any(d == tail or d.endswith("/" + tail) for d in dirs)
    return any(f == span or f.endswith("/" + span) for f in files)


def test_every_file_and_folder_the_document_names_exists():
    files, dirs = tree()
    text = DOC.read_text()
    spans = named_paths(text)
    assert len(spans) > 50, "the document should name the code it maps"
    missing = sorted({s for s in spans if not exists(s, files, dirs)})
    assert missing == [], "docs/architecture.md names paths that do not exist: %s" % missing


def test_every_proxy_folder_and_library_is_on_the_map():
    """Each folder must be named as a folder in its own right: a code span
    that is exactly the folder (`lookup/`, or `proxy/src/lookup/` for the
    proxy's), not merely the start of a longer path (`lookup/redis_uv.*`),
    so that renaming or dropping a folder's own mention fails here."""
    spans = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    libraries = ["parser/", "logging/", "health/", "proxy/net/", "proxy/", "bench/", "tests/", "conf/"]
    proxy_folders = sorted(p.name + "/" for p in (REPO / "proxy" / "src").iterdir() if p.is_dir())
    assert proxy_folders, "proxy/src should have folders"
    absent = [f for f in libraries if f not in spans]
    absent += [f for f in proxy_folders if f not in spans and "proxy/src/" + f not in spans]
    assert absent == [], "docs/architecture.md does not name these folders as folders: %s" % absent
