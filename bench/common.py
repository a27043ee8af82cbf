"""Shared helpers of the benchmarks: fresh databases, timing, machine facts, result files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

RESULTS = Path(__file__).parent / "results"

# The benchmarks' accounts sign in with a password alone: they measure messaging, search and
# delivery, not the second factor's enrolment (tested in tests/test_totp*.py). The servers they
# start inherit this environment. A bench that wants the policy sets the variable itself.
os.environ.setdefault("MONSISRA_TOTP_REQUIRED", "false")
PG_ADMIN_URL = os.environ.get("MONSISRA_BENCH_POSTGRES_URL",
                              os.environ.get("MONSISRA_TEST_POSTGRES_URL",
                                             "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def pg_admin(sql: str) -> None:
    import asyncpg

    u = sa.make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(user=u.username or "postgres", host=u.host or "127.0.0.1", port=u.port or 5432,
                                 database=u.database or "postgres", password=u.password)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url(name: str) -> str:
    return sa.make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False)


@contextlib.contextmanager
def fresh_database(backend: str, tmp: Path, *, keep: bool = False) -> Iterator[str]:
    """A new migrated database (SQLite file under ``tmp``, or ``monsisra_bench_core_[<tag>_]<random>`` on PG)."""
    from monsisra.store.migrate import upgrade

    if backend == "sqlite":
        path = tmp / f"bench_{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite+aiosqlite:///{path}"
        upgrade(url)
        try:
            yield url
        finally:
            if not keep:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        Path(str(path) + suffix).unlink()
        return
    # MONSISRA_BENCH_TAG (a branch name) names whose database it is, on a server several people share.
    tag = os.environ.get("MONSISRA_BENCH_TAG", "")
    name = f"monsisra_bench_core_{tag + '_' if tag else ''}{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = pg_url(name)
        upgrade(url)
        yield url
    finally:
        if not keep:
            asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary_ms(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"n": len(ms), "p50": round(percentile(ms, 50), 2), "p90": round(percentile(ms, 90), 2),
            "p99": round(percentile(ms, 99), 2), "max": round(max(ms), 2), "mean": round(statistics.fmean(ms), 2)}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    pg = "?"
    with contextlib.suppress(Exception):
        pg = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
                             "show server_version"], capture_output=True, text=True, timeout=5).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "os": platform.platform(),
            "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version, "postgresql": pg,
            "sqlalchemy": sa.__version__}


def git_commit() -> str:
    if os.environ.get("MONSISRA_BENCH_COMMIT"):  # a run from a `git archive` export says which commit it is
        return os.environ["MONSISRA_BENCH_COMMIT"]
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).parent.parent).stdout.strip()
    return "?"


def command_line() -> str:
    return ".venv/bin/python -m " + __import__("__main__").__spec__.name + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")


def header(title: str, meta: dict[str, Any]) -> list[str]:
    """The results page's opening lines; called once measuring is over (load after = now, if unset)."""
    m = meta["machine"]
    meta.setdefault("load_after", uptime())
    return [
        f"# {title}",
        "",
        f"- Date: {meta['date']} (git {meta['commit']})",
        f"- Command: `{meta['command']}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, {m['os']}",
        f"- Python {m['python']}, SQLite {m['sqlite']}, PostgreSQL {m['postgresql']}, "
        f"SQLAlchemy {m['sqlalchemy']}",
        f"- Load before: `{meta['load_before']}`",
        f"- Load after: `{meta['load_after']}`",
        "- The machine is shared with other engineers (2 cores): figures are indicative, not a lab measure.",
        "",
    ]


def new_meta() -> dict[str, Any]:
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "command": command_line(), "machine": machine(), "load_before": uptime()}


def write_results(name: str, meta: dict[str, Any], markdown: list[str], data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(markdown) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, **data}, indent=2, default=str) + "\n")


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start


# --- realistic (fictitious) French medical correspondence --------------------------------------

FIRST_NAMES = (
    "Marie Jean Pierre Michel Anne Philippe Nathalie Isabelle Sylvie Catherine Françoise Nicolas Christophe "
    "Stéphane Sandrine Valérie Céline Julien Sébastien Laurent Éric Hélène Camille Léa Chloé Manon Inès Hugo "
    "Lucas Théo Mathilde Émilie Aurélie Benoît Gaëlle Jérôme Agnès Bénédicte Thierry Hervé Martine Odile "
    "Josiane Raphaël Noémie Clément Margaux Élodie Frédéric Pascale"
).split()
LAST_NAMES = (
    "Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Simon Laurent Lefebvre Michel "
    "Garcia David Bertrand Roux Vincent Fournier Morel Girard André Lefèvre Mercier Dupont Lambert Bonnet "
    "François Martinez Chevalier Gauthier Perrin Rousseau Clément Faure Blanc Guérin Muller Henry Roussel "
    "Nicolas Perrot Mathieu Masson Marchand Duval Denis Dumont Lemaire Noël Meyer Dufour Meunier Brun "
    "Blanchard Giraud Joly Rivière Lucas Brunet Gaillard Barbier Arnaud Gérard Roche Renard Schmitt Roy "
    "Leroux Colin Vidal Caron Picard Roger Fabre Aubert Lemoine Renaud Dumas Lacroix Olivier Bourgeois "
    "Benoît Rey Leclerc Rolland Guillaume Lecomte Dupuy Guillot Hubert Berger Carpentier Moulin Deschamps "
    "Huet Vasseur Boucher Fleury Royer Jacquet Poirier Marty Aubry Guyot Carré Renault Charpentier Ménard "
    "Maillard Baron Bertin Bailly Hervé Collet Léger Bouvier Prévost Millet Perrier Germain Cousin Besson "
    "Chauvin Tessier Vallée Lebrun Chabert Pélissier Delmas Vigier Teyssier Chassagne Bouchet Fabre"
).split()
SPECIALTIES = ("cardiologie", "pneumologie", "endocrinologie", "néphrologie", "gastro-entérologie", "neurologie",
               "rhumatologie", "dermatologie", "gériatrie", "hématologie", "oncologie", "médecine interne",
               "chirurgie orthopédique", "chirurgie vasculaire", "psychiatrie", "pédiatrie", "gynécologie")
SERVICES = ("cardiologie du CHU de Clermont-Ferrand", "médecine polyvalente du CH d'Aurillac",
            "gériatrie du CH de Thiers", "pneumologie du CHU Gabriel-Montpied", "urgences du CH de Vichy",
            "néphrologie de l'hôpital Estaing", "SSR de Chanat-la-Mouteyre", "diabétologie du CH du Puy-en-Velay",
            "chirurgie vasculaire du CHU de Clermont-Ferrand", "hématologie de l'hôpital Estaing")
REASONS = ("douleur thoracique atypique", "dyspnée d'effort", "HTA résistante", "fibrillation auriculaire",
           "diabète de type 2 déséquilibré", "insuffisance cardiaque à fraction d'éjection altérée",
           "exacerbation de BPCO", "lombalgie chronique", "plaie chronique de jambe", "ulcère veineux",
           "suspicion d'embolie pulmonaire", "anémie ferriprive", "hypothyroïdie", "AVC ischémique",
           "chutes à répétition", "insuffisance rénale chronique stade 3", "syncope", "pneumopathie",
           "cholécystite", "douleurs abdominales", "bilan de troubles cognitifs", "épisode dépressif",
           "polyarthrite rhumatoïde", "psoriasis", "thrombose veineuse profonde", "anticoagulation",
           "drépanocytose", "maladie de Horton")
RARE_REASONS = ("phéochromocytome", "maladie de Fabry", "amylose à transthyrétine")
DRUGS = ("metformine 1000 mg", "bisoprolol 2,5 mg", "apixaban 5 mg", "ramipril 5 mg", "atorvastatine 20 mg",
         "lévothyroxine 75 µg", "furosémide 40 mg", "paracétamol 1 g", "amlodipine 5 mg", "tramadol 50 mg",
         "insuline glargine 20 UI", "oméprazole 20 mg", "kardégic 75 mg", "rivaroxaban 20 mg",
         "sertraline 50 mg", "prednisone 10 mg", "méthotrexate 15 mg", "salbutamol")
EXAMS = ("échographie cardiaque", "holter ECG", "scanner thoracique", "IRM lombaire", "NFS", "bilan hépatique",
         "HbA1c", "TSH", "D-dimères", "INR", "ionogramme sanguin", "créatininémie", "BNP", "ferritine",
         "épreuve d'effort", "doppler veineux des membres inférieurs", "radiographie pulmonaire", "EFR")
CONCLUSIONS = ("Évolution favorable.", "Pas d'argument pour une cause cardiaque.",
               "Poursuite du traitement à l'identique.", "Adaptation posologique proposée.",
               "Un avis spécialisé me semble nécessaire.", "Contrôle biologique dans un mois.",
               "Retour à domicile organisé avec passage infirmier quotidien.",
               "Réévaluation en consultation dans trois mois.")
TOPICS = ("rappel de lots", "vaccination antigrippale", "alerte épidémique", "tension d'approvisionnement",
          "canicule : mesures de prévention", "rougeole : recrudescence")
CATEGORY_WEIGHTS = {"letter": 30, "result": 25, "conversation": 10, "mssante": 10, "event": 8, "patient": 5,
                    "teleexpertise": 4, "support": 4, "dgs_urgent": 4}


class Corpus:
    """Deterministic generator of subjects, bodies and names (fictitious people only)."""

    def __init__(self, seed: int = 42) -> None:
        import random

        self.rng = random.Random(seed)
        self.categories = list(CATEGORY_WEIGHTS)
        self.cat_weights = list(CATEGORY_WEIGHTS.values())

    def person(self) -> str:
        r = self.rng
        return f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES).upper()}"

    def category(self) -> str:
        return self.rng.choices(self.categories, self.cat_weights)[0]

    def message(self, category: str | None = None) -> tuple[str, str, str]:
        """(category, subject, body)"""
        r = self.rng
        category = category or self.category()
        patient = f"{r.choice(('M.', 'Mme'))} {r.choice(LAST_NAMES).upper()} {r.choice(FIRST_NAMES)}"
        reason = r.choice(RARE_REASONS) if r.random() < 0.0005 else r.choice(REASONS)
        exam = r.choice(EXAMS)
        spec = r.choice(SPECIALTIES)
        subject = {
            "letter": r.choice((f"Compte rendu d'hospitalisation — {patient}",
                                f"Courrier de sortie — service de {r.choice(SERVICES)}",
                                f"Lettre de liaison : {patient}",
                                f"Compte rendu de consultation de {spec}")),
            "result": r.choice((f"Résultats biologiques du {r.randint(1, 28)}/{r.randint(1, 12):02d} — {patient}",
                                f"Bilan sanguin : NFS, ionogramme, créatinine — {patient}",
                                f"Résultat d'examen : {exam}")),
            "conversation": r.choice((f"Avis sur {patient}", f"Question sur le traitement de {patient}")),
            "mssante": f"Transmission MSSanté : {r.choice(('ordonnance', 'compte rendu', 'courrier', 'DMP'))}",
            "patient": f"Message de {patient}",
            "teleexpertise": f"Demande de téléexpertise en {spec} — {patient}",
            "support": f"Demande d'appui DAC : situation complexe de {patient}",
            "event": r.choice((f"Admission aux urgences de {patient}", f"Sortie d'hospitalisation de {patient}")),
            "dgs_urgent": f"DGS-Urgent n°2026-{r.randint(1, 99):02d} : {r.choice(TOPICS)}",
        }[category]
        lines = [r.choice(("Cher confrère,", "Chère consœur,", "Bonjour,", "Cher ami,")),
                 f"Je vous adresse {patient}, {r.randint(18, 97)} ans, pour {reason}.",
                 f"Antécédents : {r.choice(REASONS)}, {r.choice(REASONS)}.",
                 f"Traitement en cours : {', '.join(r.sample(DRUGS, r.randint(1, 4)))}."]
        if r.random() < 0.6:
            lines.append(f"Le bilan comprend : {', '.join(r.sample(EXAMS, r.randint(1, 3)))}.")
        lines.append(r.choice(CONCLUSIONS))
        lines.append(r.choice(("Bien confraternellement,", "Bien cordialement,", "Avec mes remerciements,")))
        lines.append(f"Dr {self.person()}")
        return category, subject, "\n".join(lines)


def start_serve(env: dict[str, str], port: int, log: Path, wait_s: float = 300) -> subprocess.Popen:
    """``monsisra serve`` on ``port`` (HTTP only), once its login page answers; on a loaded
    machine its start-up over a national directory takes a minute or more."""
    proc = subprocess.Popen([sys.executable, "-m", "monsisra.cli", "serve", "--no-migrate", "--port", str(port),
                             "--https-port", "0"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/connexion", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_serve(proc)
    raise RuntimeError("monsisra serve did not start: " + log.read_text()[-2000:])


def stop_serve(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
