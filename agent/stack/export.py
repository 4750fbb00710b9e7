"""Writing the rendered tree into a directory (`agent stack export DIR`): never over a file that differs
unless forced, so an operator's edits are not lost silently."""

from __future__ import annotations

import os
from pathlib import Path

# Nothing in the tree is secret (the webhook token is a path to the token, not the token).
FILE_MODE = 0o644


class ExportRefused(Exception):
    """Files in the directory that differ from what would be written; nothing was written."""

    def __init__(self, differing: list[Path]) -> None:
        super().__init__(f"{len(differing)} file(s) differ from the export")
        self.differing = differing


def _differs(path: Path, text: str) -> bool:
    try:
        return path.read_text() != text
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError):
        return True  # unreadable or not text: not ours to replace without --force


def plan(directory: Path, files: dict[str, str]) -> tuple[list[str], list[Path]]:
    """(to write, differing): the relative paths not already there with this content, and the existing files
    among them (whose content differs)."""
    write: list[str] = []
    differing: list[Path] = []
    for rel, text in files.items():
        path = directory / rel
        if path.is_file() and not _differs(path, text):
            continue
        write.append(rel)
        if path.exists() or path.is_symlink():
            differing.append(path)
    return write, differing


def export(directory: Path, files: dict[str, str], force: bool = False) -> list[str]:
    """Write `files` (relative path -> text) under `directory`, creating folders as needed; returns the relative
    paths written (the others were there already). ExportRefused when files there differ and not `force`;
    OSError naming the path on a failed write."""
    write, differing = plan(directory, files)
    if differing and not force:
        raise ExportRefused(differing)
    for rel in write:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(files[rel])
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
    return write
