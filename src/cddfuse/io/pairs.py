"""Pairing of two folders of images by file stem."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "PairListing", "list_images", "match_pairs", "short_list"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class PairListing:
    """Result of :func:`match_pairs`: matched ``(stem, path_a, path_b)`` and the unmatched stems."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    @property
    def unmatched(self) -> int:
        """How many images have no partner (in either folder)."""
        return len(self.only_a) + len(self.only_b)

    def unmatched_message(self, folder_a: Path, folder_b: Path, limit: int = 10) -> str | None:
        """One sentence naming the images without a partner (``None`` when every image has one).

        Example:
            >>> PairListing(only_a=["07", "09"]).unmatched_message(Path("ir"), Path("vi"))
            '2 image(s) in ir have no partner in vi: 07, 09'
        """
        parts = []
        if self.only_a:
            parts.append(f"{len(self.only_a)} image(s) in {folder_a} have no partner in {folder_b}: "
                         f"{short_list(self.only_a, limit)}")
        if self.only_b:
            parts.append(f"{len(self.only_b)} image(s) in {folder_b} have no partner in {folder_a}: "
                         f"{short_list(self.only_b, limit)}")
        return "; ".join(parts) or None


def short_list(names: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` names and how many more there are.

    For example ``a, b, c ... (+12)``.
    """
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit})" if len(names) > limit else "")


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder`` (hidden files skipped).

    Raises ValueError when two files share a stem (``a.png`` and ``a.jpg``): the pairing
    would be ambiguous.
    """
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in extensions:
            continue
        if p.stem in out:
            raise ValueError(f"two files with stem {p.stem!r} in {folder}: {out[p.stem].name} and {p.name}; rename one")
        out[p.stem] = p
    return out


def match_pairs(folder_a: Path, folder_b: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> PairListing:
    """Pair the images of two folders by file stem (``01.png`` in A with ``01.jpg`` in B), sorted by stem."""
    a = list_images(Path(folder_a), extensions)
    b = list_images(Path(folder_b), extensions)
    res = PairListing()
    for stem in sorted(set(a) | set(b)):
        if stem in a and stem in b:
            res.pairs.append((stem, a[stem], b[stem]))
        elif stem in a:
            res.only_a.append(stem)
        else:
            res.only_b.append(stem)
    return res
