"""What an import tells its caller: per file and per entity, created, updated, deactivated, unchanged, rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    deactivated: int = 0
    unchanged: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "deactivated": self.deactivated,
                "unchanged": self.unchanged}


@dataclass
class FileReport:
    name: str
    kind: str
    lines: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    entities: dict[str, Counts] = field(default_factory=dict)
    deactivation_skipped: bool = False

    def counts(self, entity: str) -> Counts:
        return self.entities.setdefault(entity, Counts())

    def reject(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < 200:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.name, "kind": self.kind, "lines": self.lines, "rejected": self.rejected,
                "errors": self.errors, "deactivation_skipped": self.deactivation_skipped,
                "entities": {k: v.as_dict() for k, v in self.entities.items()}}


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)
    indexed: int | None = None

    @property
    def totals(self) -> Counts:
        out = Counts()
        for f in self.files:
            for c in f.entities.values():
                out.created += c.created
                out.updated += c.updated
                out.deactivated += c.deactivated
                out.unchanged += c.unchanged
        return out

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        t = self.totals
        return {"created": t.created, "updated": t.updated, "deactivated": t.deactivated, "unchanged": t.unchanged,
                "rejected": self.rejected, "indexed": self.indexed, "files": [f.as_dict() for f in self.files]}
