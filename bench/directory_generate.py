"""Generate national-scale directory extractions in the exact sample formats (fictitious people).

    .venv/bin/python -m bench.directory_generate [--people 500000] [--out var/bench/directory]

Writes ``PS_LibreAcces_Personne_activite_<stamp>.txt`` (56 columns, trailing ``|``, one line per
activity: about 16 % of people have a second one) and ``Extraction_Correspondance_MSSante_<stamp>.txt``
(31 columns: a PER mailbox for about 91 % of people, ORG mailboxes for the services of
establishments, a few addresses listed twice). Names have a realistic long tail (common French
surnames plus generated ones), places are real communes weighted by population.
"""

from __future__ import annotations

import argparse
import random
import time
import unicodedata
import zlib
from pathlib import Path

from monsisra.domain import directory_format as fmt
from monsisra.services.communes import package_index

SURNAMES = ("Martin Bernard Thomas Petit Robert Richard Durand Dubois Moreau Laurent Simon Michel Lefebvre Leroy "
            "Roux David Bertrand Morel Fournier Girard Bonnet Dupont Lambert Fontaine Rousseau Vincent Muller "
            "Lefèvre Faure André Mercier Blanc Guérin Boyer Garnier Chevalier François Legrand Gauthier Garcia "
            "Perrin Robin Clément Morin Nicolas Henry Roussel Mathieu Gautier Masson Marchand Duval Denis Dumont "
            "Marie Lemaire Noël Meyer Dufour Meunier Brun Blanchard Giraud Joly Rivière Lucas Brunet Gaillard "
            "Barbier Arnaud Martinez Gérard Roche Renard Schmitt Roy Leroux Colin Vidal Caron Picard Roger Fabre "
            "Aubert Lemoine Renaud Dumas Lacroix Olivier Philippe Bourgeois Pierre Benoît Rey Leclerc Payet Rolland "
            "Leclercq Guillaume Lecomte Lopez Jean Dupuy Guillot Hubert Berger Carpentier Sanchez Dupuis Moulin "
            "Louis Deschamps Huet Vasseur Perez Boucher Fleury Royer Klein Jacquet Adam Paris Poirier Marty Aubry "
            "Guyot Carré Charles Renault Charpentier Ménard Maillard Baron Bertin Bailly Hervé Schneider Fernandez "
            "Le Gall Collet Léger Bouvier Julien Prévost Millet Perrot Daniel Le Roux Cousin Germain Breton Besson "
            "Langlois Rémy Le Goff Pelletier Lévêque Perrier Leblanc Barré Lebrun Marchal Weber Mallet Hamon "
            "Boulanger Jacob Monnier Michaud Rodriguez Guichard Gillet Étienne Grondin Poulain Tessier Chevallier "
            "Collin Chauvin Da Silva Bouchet Gay Lemaître Bénard Maréchal Humbert Reynaud Antoine Hoarau Perret "
            "Barthélemy Cordier Pichon Lejeune Gilbert Lamy Delaunay Pasquier Carlier Laporte Gallet Gallé").split()
FIRST = ("Marie Jean Pierre Michel Anne Philippe Nathalie Isabelle Sylvie Catherine Françoise Nicolas Christophe "
         "Stéphane Sandrine Valérie Céline Julien Sébastien Laurent Éric Hélène Camille Léa Chloé Manon Inès Hugo "
         "Lucas Théo Mathilde Émilie Aurélie Benoît Gaëlle Jérôme Agnès Bénédicte Thierry Hervé Martine Odile "
         "Josiane Raphaël Noémie Clément Margaux Élodie Frédéric Pascale Sophie Alice Bruno Claire Damien Romain "
         "Maëlle Solène Gaël Léo Zoé Louise Arthur Jade Paul Emma Louis Rose Anaïs Océane Patrick Véronique "
         "Guillaume Laurence Fanny Laura Vincent Antoine Thomas Mathis Gabriel Juliette Adèle Victor Baptiste").split()
SYLLABLES = ("ba be bi bo bou bru ca ce cha che co cou da de di do du fa fe fo ga ge gi go gu la le li lo lu ma me "
             "mi mo mu na ne ni no nu pa pe pi po ra re ri ro ru sa se si so ta te ti to tu va ve vi vo za zi "
             "ber bert card mont val ville court mar nier chard tier vel rac lin dor gan quet zac").split()
PROFESSIONS = [("10", "Médecin", 0.45), ("60", "Infirmier", 0.25), ("70", "Masseur-Kinésithérapeute", 0.10),
               ("21", "Pharmacien", 0.10), ("40", "Chirurgien-Dentiste", 0.06), ("50", "Sage-Femme", 0.04)]
SITE_KINDS = [("SA07", "Cabinet individuel", "L", "Libéral", "Titulaire de cabinet"),
              ("SA08", "Cabinet de groupe", "L", "Libéral", "Titulaire de cabinet"),
              ("SA05", "Centre de santé", "S", "Salarié", "Salarié"),
              ("SA02", "Etablissement privé PSPH", "S", "Salarié", "Salarié"),
              ("SA01", "Etablissement public de santé", "S", "Salarié", "Salarié")]
SERVICES = ["Urgences", "Imagerie médicale", "Laboratoire de biologie", "Bureau des entrées", "Avis Hémostase",
            "Avis Endocrinologie", "Secrétariat Cardiologie", "Consultations Dermatologie", "Pédiatrie",
            "Maternité", "Oncologie", "Pneumologie", "Gériatrie", "Chirurgie orthopédique", "Néphrologie",
            "Psychiatrie adulte", "Pharmacie à usage intérieur", "Service social", "Neurologie", "Rhumatologie"]
STREETS = ["de la République", "Victor Hugo", "Jean Jaurès", "de la Gare", "des Écoles", "de l'Église",
           "Gambetta", "des Tilleuls", "Pasteur", "Évariste Galois", "du Général de Gaulle", "Saint-Exupéry"]
STREET_TYPES = [("R", "Rue"), ("AV", "Avenue"), ("BD", "Boulevard"), ("PL", "Place"), ("ALL", "Allée"),
                ("CHE", "Chemin")]
DOMAINS = ["medecin.mssante.fr", "infirmier.mssante.fr", "pharmacien.mssante.fr", "aura.mssante.fr",
           "idf.mssante.fr", "ch-reseau.mssante.fr", "mk.mssante.fr"]


def slug(text: str) -> str:
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return "".join(c if c.isalnum() else "-" for c in t).strip("-").replace("--", "-")


def load_specialties() -> list[tuple[str, str]]:
    path = Path(__file__).parent.parent / "tests" / "fixtures" / "savoir_faire.csv"
    rows = [line.split(";", 1) for line in path.read_text(encoding="utf-8").splitlines()[1:] if ";" in line]
    return [(c.strip(), label.strip()) for c, label in rows]


COMMON_SURNAMES = 300  # --common-surnames: every surname is one of so few, each carried by ~1,700 people


def generate(people: int, out: Path, seed: int = 20260319, common_surnames: bool = False) -> tuple[Path, Path]:
    """``common_surnames``: every person's surname is one of :data:`COMMON_SURNAMES` (the common
    French ones, then generated ones), so that any name query matches thousands of people."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    index = package_index()
    communes = [c for c in index.by_code.values() if c.postcodes and c.latitude is not None]
    weights = [max(c.population, 50) for c in communes]
    specialties = load_specialties()
    # Long tail of surnames: ~60 % common ones, the rest from ~120,000 generated names.
    generated = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3, 3, 4)))).capitalize()
                        for _ in range(150_000)})
    extra = max(0, COMMON_SURNAMES - len(SURNAMES))
    pool = [*SURNAMES, *generated[::len(generated) // extra][:extra]] if common_surnames and extra else \
        list(SURNAMES) if common_surnames else []
    stamp = "202611280000"
    ps_path = out / f"PS_LibreAcces_Personne_activite_{stamp}.txt"
    mss_path = out / f"Extraction_Correspondance_MSSante_{stamp}.txt"
    prof_codes = [p[:2] for p in PROFESSIONS]
    prof_weights = [p[2] for p in PROFESSIONS]
    establishments: list[tuple[str, str, object]] = []
    used_addresses: set[str] = set()
    n_act = n_mss = 0
    with open(ps_path, "w", encoding="utf-8", newline="\n") as ps, \
            open(mss_path, "w", encoding="utf-8", newline="\n") as mss:
        ps.write("|".join(fmt.PERSON_COLUMNS) + "|\n")
        mss.write("|".join(fmt.MAILBOX_COLUMNS) + "\n")
        commune_picks = rng.choices(communes, weights=weights, k=people + 20_000)
        for i in range(people):
            rpps = f"1{rng.randrange(10**10):010d}"
            nid = "8" + rpps
            if pool:
                last = rng.choice(pool)
            else:
                last = rng.choice(SURNAMES) if rng.random() < 0.6 else rng.choice(generated)
            if not pool and rng.random() < 0.03:
                last = f"{last}-{rng.choice(SURNAMES)}"
            first = rng.choice(FIRST)
            female = rng.random() < 0.55
            code, profession = rng.choices(prof_codes, weights=prof_weights)[0]
            is_doc = code in ("10", "40")
            title_code, title = ("DR", "Docteur") if is_doc else ("", "")
            civ_code, civ = ("MME", "Madame") if female else ("M", "Monsieur")
            spec = rng.choice(specialties) if code == "10" else ("", "")
            n_lines = 2 if rng.random() < 0.16 else 1
            first_site = None
            for k in range(n_lines):
                c = commune_picks[i] if k == 0 else rng.choice(communes)
                sa_code, sa_label, mode_code, mode, function = rng.choice(SITE_KINDS)
                if mode_code == "S":
                    site = f"CH {c.name.upper()}"
                    finess = f"{zlib.crc32((c.code + 'fin').encode()) % 10**9:09d}"
                    establishments.append((site, finess, c))
                    structure = f"R{zlib.crc32((c.code + 'st').encode()) % 10**9:09d}"
                    siret = ""
                else:
                    site = f"CABINET {'DU DR ' if is_doc else ''}{last.upper()}"
                    finess, siret = "", ""
                    structure = f"R{rng.randrange(10**9):09d}"
                stype, stype_label = rng.choice(STREET_TYPES)
                num = str(rng.randint(1, 150))
                pc = c.postcodes[0]
                row = ["8", rpps, nid, title_code, title, civ_code, civ, last.upper(), first, code, profession, "C",
                       "Civil", "S" if spec[0] else "", "Spécialité ordinale" if spec[0] else "", spec[0], spec[1],
                       mode_code, mode, siret, "", finess, f"{int(finess) + 1:09d}" if finess else "", structure,
                       site, "", "", "", num, "", stype, stype_label, rng.choice(STREETS), "", "", pc, c.code,
                       c.name.upper(), "99000", "France", f"0{rng.randint(100000000, 599999999)}", "", "", "",
                       c.department_code, c.department, "", "RPPS", sa_code, sa_label, "", "", "FON-01", function,
                       "GENR01", "Diagnostic et soin"]
                ps.write("|".join(row) + "|\n")
                n_act += 1
                first_site = first_site or (site, c, num, stype, pc)
            if rng.random() < 0.91:
                site, c, num, stype, pc = first_site
                base = f"{slug(first)}.{slug(last)}"
                domain = rng.choice(DOMAINS)
                address = f"{base}@{domain}"
                j = 2
                while address in used_addresses:
                    address = f"{base}{j}@{domain}"
                    j += 1
                used_addresses.add(address)
                row = ["PER", address, "8", rpps, nid, "", "", "", title or civ, last.upper(), first, "C", "Civil",
                       code, profession, spec[0], spec[1], rng.choice("ON"), site, "", "", "", num, "", stype,
                       rng.choice(STREETS), "", f"{pc} {c.name.upper()}", pc, c.department_code, "France"]
                line = "|".join(row) + "\n"
                mss.write(line)
                n_mss += 1
                if rng.random() < 0.002:  # the same address listed twice
                    mss.write(line)
                    n_mss += 1
        # Organisational mailboxes: services of the establishments seen above (~80,000).
        seen: set[str] = set()
        target = int(people * 0.168)
        k = 0
        while k < target and establishments:
            site, finess, c = establishments[rng.randrange(len(establishments))]
            service = rng.choice(SERVICES)
            local = f"{slug(service)}.{slug(site)}"[:64]
            address = f"{local}@{slug(site)[:24]}.mssante.fr"
            if address in seen:
                service = f"{service} {rng.randint(2, 9)}"
                address = f"{slug(service)}.{slug(site)}"[:64] + f"@{slug(site)[:24]}.mssante.fr"
                if address in seen:
                    k += 1
                    continue
            seen.add(address)
            row = ["ORG", address, "", "", "", "1", f"1{finess}", service, "", "", "", "", "", "", "", "", "", "",
                   site, "", "", "", "", "", "", "", "", "", c.postcodes[0], c.department_code, "France"]
            mss.write("|".join(row) + "\n")
            n_mss += 1
            k += 1
    print(f"{people} people, {n_act} activity lines → {ps_path}")
    print(f"{n_mss} mailbox lines → {mss_path}")
    return ps_path, mss_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=Path("var/bench/directory"))
    parser.add_argument("--common-surnames", action="store_true",
                        help=f"only {COMMON_SURNAMES} surnames: every name query matches thousands of people")
    args = parser.parse_args()
    t = time.perf_counter()
    generate(args.people, args.out, common_surnames=args.common_surnames)
    print(f"generated in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
