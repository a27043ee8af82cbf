"""Long hospital letters (fictitious): discharge summaries and consultation reports of 300 to
2,000 words, as services really write them, for measuring the search signatures on letters far
longer than the benchmark's ~52-word messages (issue 18, item 4).

The vocabulary is that of French hospital correspondence (history, examination, results with
values, course in hospital, discharge treatment, follow-up): each letter draws its sentences from
section pools with random slots, so a longer letter has more distinct words, as a real one does
(French prose of 1,000 words has about 340 distinct words, 290 distinct four-letter prefixes:
measured on the French translations of Django and CUPS, ``bench.signature_fill``).
"""

from __future__ import annotations

import random

from bench.common import DRUGS, EXAMS, FIRST_NAMES, LAST_NAMES, RARE_REASONS, REASONS, SERVICES, SPECIALTIES

ORGANS = ("cœur", "poumon droit", "poumon gauche", "foie", "rein droit", "rein gauche", "pancréas", "rate",
          "vésicule biliaire", "thyroïde", "prostate", "vessie", "côlon", "estomac", "œsophage", "aorte",
          "carotide", "genou", "hanche", "épaule", "rachis lombaire", "cerveau", "surrénale gauche")
SIGNS = ("asthénie", "amaigrissement de cinq kilos", "fièvre à 38,5 °C", "frissons", "toux sèche",
         "expectorations purulentes", "dyspnée de repos", "orthopnée", "œdèmes des membres inférieurs",
         "douleur épigastrique", "nausées", "vomissements", "diarrhée", "constipation", "céphalées",
         "vertiges", "palpitations", "sueurs nocturnes", "prurit", "ictère", "hématurie", "dysurie",
         "pollakiurie", "arthralgies", "myalgies", "confusion", "troubles de la marche", "chute",
         "perte de connaissance brève", "dysphagie", "méléna", "rectorragies", "hémoptysie", "claudication")
LABS = ("hémoglobine", "leucocytes", "plaquettes", "CRP", "procalcitonine", "sodium", "potassium",
        "créatinine", "urée", "ASAT", "ALAT", "gamma-GT", "phosphatases alcalines", "bilirubine totale",
        "albumine", "troponine", "NT-proBNP", "lactates", "glycémie", "HbA1c", "TSH", "T4 libre", "ferritine",
        "vitamine D", "calcium", "phosphore", "magnésium", "lipase", "fibrinogène", "TP", "TCA")
FINDINGS = ("sans anomalie notable", "discrètement augmenté", "nettement élevé", "abaissé", "normalisé",
            "en amélioration", "stable par rapport au précédent", "à contrôler", "limite haute de la normale")
IMAGING = ("Le scanner thoraco-abdomino-pelvien injecté retrouve {o} {f}.",
           "L'échographie abdominale montre {o} de taille normale, sans dilatation des voies biliaires.",
           "La radiographie de thorax objective un émoussement du cul-de-sac costodiaphragmatique.",
           "L'IRM encéphalique ne montre pas de lésion ischémique récente ni de saignement.",
           "L'angioscanner pulmonaire élimine une embolie pulmonaire proximale.",
           "L'échographie cardiaque transthoracique retrouve une fraction d'éjection à {n} %, "
           "sans valvulopathie significative.",
           "Le doppler artériel des membres inférieurs montre une sténose serrée de l'artère fémorale superficielle.",
           "La coronarographie retrouve une lésion tritronculaire, discutée en réunion médico-chirurgicale.",
           "La fibroscopie œsogastroduodénale retrouve une gastrite érosive, biopsiée.",
           "La coloscopie totale est normale, sans polype.",
           "Le TEP-scanner ne retrouve pas d'hypermétabolisme suspect à distance.",
           "L'électroencéphalogramme est sans particularité.",
           "L'électrocardiogramme montre un rythme sinusal régulier à {n} battements par minute.")
HISTORY = ("Il s'agit d'un{e} patient{e} de {n} ans, {living}, autonome pour les actes de la vie quotidienne.",
           "Ses antécédents sont marqués par {r}, {r2} et une cholécystectomie ancienne.",
           "On retrouve dans ses antécédents familiaux un cancer colique chez le père.",
           "Tabagisme sevré depuis {n} ans, estimé à trente paquets-années ; consommation d'alcool occasionnelle.",
           "Allergie connue à la pénicilline (éruption cutanée).",
           "Le patient vit avec son épouse, deux passages infirmiers par jour sont en place.",
           "Elle est suivie par le Dr {doc} en {spec} depuis plusieurs années.",
           "Vaccinations à jour selon le carnet ; pas de voyage récent en zone tropicale.")
STORY = ("Le patient est adressé aux urgences par son médecin traitant pour {sign} évoluant depuis {n} jours.",
         "Depuis une semaine, apparition progressive de {sign} associée à {sign2}.",
         "À l'admission, la pression artérielle est à {n}/80 mmHg, la fréquence cardiaque à {n2} par minute, "
         "la saturation à 94 % en air ambiant.",
         "L'examen clinique retrouve {sign}, l'auscultation cardiopulmonaire est par ailleurs normale.",
         "L'abdomen est souple, dépressible et indolore ; pas d'hépatosplénomégalie.",
         "L'examen neurologique ne retrouve pas de déficit sensitivomoteur ni de syndrome méningé.",
         "Les mollets sont souples, sans signe de thrombose veineuse profonde.",
         "Il existe un souffle systolique au foyer aortique, connu.",
         "Les aires ganglionnaires sont libres.")
COURSE = ("L'évolution est marquée par {sign} au troisième jour, motivant {exam}.",
          "Une antibiothérapie probabiliste par amoxicilline et acide clavulanique est débutée, puis adaptée "
          "à l'antibiogramme.",
          "Le bilan étiologique, comprenant {exam} et {exam2}, revient {f}.",
          "L'anticoagulation curative est relayée par {drug} après avis cardiologique.",
          "Une transfusion de deux culots globulaires est réalisée, bien tolérée.",
          "Le traitement diurétique est majoré avec une perte de poids de {n} kilos et une nette amélioration "
          "de la dyspnée.",
          "La kinésithérapie respiratoire et motrice permet une reprise de la marche avec déambulateur.",
          "La diététicienne a revu les apports protéiques, l'albuminémie étant basse.",
          "L'avis du Dr {doc} ({spec}) a été sollicité : il préconise {exam} à distance.",
          "Un épisode de confusion nocturne est survenu, spontanément régressif, sans cause retrouvée.",
          "Les glycémies capillaires sont restées comprises entre 1,2 et 2,4 g/l sous insuline.",
          "Le dossier a été présenté en réunion de concertation pluridisciplinaire de {spec}.",
          "La recherche de {rare} a été évoquée devant l'association des symptômes, puis écartée.",
          "L'assistante sociale a rencontré la famille pour organiser le retour à domicile.")
DISCHARGE = ("Traitement de sortie : {drugs}.",
             "Arrêt de {drug}, source probable d'interaction.",
             "Surveillance biologique : {lab} et {lab2} dans une semaine au laboratoire de ville.",
             "Rendez-vous de consultation avec le Dr {doc} dans {n} semaines, avec {exam}.",
             "Une ordonnance de soins infirmiers à domicile est remise au patient.",
             "Le patient a été informé des signes devant motiver une nouvelle consultation.",
             "Il conviendra de réévaluer la posologie de {drug} selon la fonction rénale.")
LIVING = ("vivant seul à domicile", "vivant en EHPAD", "vivant avec son conjoint", "retraité de l'enseignement",
          "agriculteur en activité", "ancien ouvrier du bâtiment")


class LongLetters:
    """Deterministic generator of long hospital letters: ``letter(words)`` has about that many words."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = random.Random(seed)

    def _fill(self, template: str) -> str:
        r = self.rng
        e = r.choice(("", "e"))
        slots = {"e": e, "n": r.randint(2, 95), "n2": r.randint(50, 130), "living": r.choice(LIVING),
                 "r": r.choice(REASONS), "r2": r.choice(REASONS), "rare": r.choice(RARE_REASONS + REASONS * 40),
                 "doc": f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}", "spec": r.choice(SPECIALTIES),
                 "sign": r.choice(SIGNS), "sign2": r.choice(SIGNS), "exam": r.choice(EXAMS),
                 "exam2": r.choice(EXAMS), "f": r.choice(FINDINGS), "o": r.choice(ORGANS),
                 "drug": r.choice(DRUGS), "drugs": ", ".join(r.sample(DRUGS, r.randint(3, 8))),
                 "lab": r.choice(LABS), "lab2": r.choice(LABS)}
        return template.format(**slots)

    def _results(self) -> str:
        r = self.rng
        labs = r.sample(LABS, r.randint(4, 12))
        return "Biologie : " + ", ".join(f"{lab} {r.randint(1, 400)} ({r.choice(FINDINGS)})" for lab in labs) + "."

    def letter(self, words: int) -> tuple[str, str]:
        """(subject, body) of a letter of about ``words`` words."""
        r = self.rng
        patient = f"{r.choice(('M.', 'Mme'))} {r.choice(LAST_NAMES).upper()} {r.choice(FIRST_NAMES)}"
        subject = r.choice((f"Compte rendu d'hospitalisation — {patient}",
                            f"Courrier de sortie — service de {r.choice(SERVICES)}",
                            f"Compte rendu de consultation de {r.choice(SPECIALTIES)} — {patient}"))
        parts = [r.choice(("Cher confrère,", "Chère consœur,", "Cher ami,")),
                 f"Votre patient{r.choice(('', 'e'))} {patient} a été hospitalisé{r.choice(('', 'e'))} "
                 f"dans le service de {r.choice(SERVICES)} du {r.randint(1, 28)}/{r.randint(1, 12):02d} "
                 f"au {r.randint(1, 28)}/{r.randint(1, 12):02d} pour {r.choice(REASONS)}."]
        pools = (HISTORY, STORY, IMAGING, COURSE, DISCHARGE)
        while sum(len(p.split()) for p in parts) < words:
            pool = r.choices(pools, (2, 3, 2, 4, 2))[0]
            parts.append(self._results() if r.random() < 0.12 else self._fill(r.choice(pool)))
        parts += [r.choice(("Je vous remercie de votre confiance.", "Je reste à votre disposition.")),
                  "Bien confraternellement,", f"Dr {r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES).upper()}"]
        return subject, "\n".join(parts)
