"""Demo data (``monsisra demo``): the accounts of DESIGN §4, a few dozen fictitious
professionals and services, and messages of every category and state. Idempotent."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.model import Access, Category, MailboxKind, Role
from monsisra.domain.text import preview
from monsisra.services import accounts, attachments, mailboxes, messages, patients, totp, trust
from monsisra.services.core import Actor, Core
from monsisra.store.models import Account, Delivery, Mailbox, Message, Patient, Recipient

PASSWORD = "demo"
DAY, HOUR, MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
TRUSTED_DEMO_DOMAINS = ("patient.mssante.fr", "ch-vichy.mssante.fr", "labo-dore.mssante.fr")


@dataclass(frozen=True)
class Person:
    username: str
    civility: str
    first_name: str
    last_name: str
    profession: str
    specialty: str
    national_id: str | None = None
    profession_code: str | None = None


MAIN = [
    Person("alice.martin", "Dr", "Alice", "Martin", "Médecin", "Médecine générale", "810000000017", "10"),
    Person("bruno.petit", "Dr", "Bruno", "Petit", "Médecin", "Cardiologie et maladies vasculaires",
           "810000000025", "10"),
    Person("claire.roux", "", "Claire", "Roux", "Infirmier", "", "810000000033", "60"),
    Person("sophie.blanc", "", "Sophie", "Blanc", "Secrétaire médicale", ""),
    Person("hemostase.admin", "Dr", "Hélène", "Morel", "Médecin", "Hématologie", "810000000041", "10"),
    Person("dac63.admin", "", "Damien", "Chevalier", "Coordinateur de parcours", ""),
]

OTHERS = [
    ("Dr", "Julien", "Garnier", "Médecin", "Médecine générale"),
    ("Dr", "Camille", "Faure", "Médecin", "Pédiatrie"),
    ("Dr", "Nicolas", "Girard", "Médecin", "Pneumologie"),
    ("Dr", "Émilie", "Lefèvre", "Médecin", "Dermatologie et vénéréologie"),
    ("Dr", "Thomas", "Mercier", "Médecin", "Endocrinologie-diabétologie"),
    ("Dr", "Léa", "Dupont", "Médecin", "Gynécologie médicale"),
    ("Dr", "Antoine", "Bonnet", "Médecin", "Rhumatologie"),
    ("Dr", "Manon", "François", "Médecin", "Psychiatrie"),
    ("Dr", "Hugo", "Lambert", "Médecin", "Néphrologie"),
    ("Dr", "Chloé", "Fontaine", "Médecin", "Ophtalmologie"),
    ("Dr", "Louis", "Rousseau", "Médecin", "Gériatrie"),
    ("Dr", "Inès", "Vincent", "Médecin", "Médecine générale"),
    ("", "Lucas", "Muller", "Infirmier", ""),
    ("", "Sarah", "Lefebvre", "Infirmier", ""),
    ("", "Mathis", "Leroy", "Masseur-kinésithérapeute", ""),
    ("", "Jade", "Moreau", "Pharmacien", "Officine"),
    ("", "Paul", "Simon", "Pharmacien", "Biologie médicale"),
    ("", "Zoé", "Laurent", "Sage-femme", ""),
    ("Dr", "Gabriel", "Michel", "Chirurgien-dentiste", ""),
    ("", "Anaïs", "Garcia", "Orthophoniste", ""),
    ("Dr", "Raphaël", "David", "Médecin", "Cardiologie et maladies vasculaires"),
    ("Dr", "Louise", "Bertrand", "Médecin", "Oncologie médicale"),
    ("Dr", "Arthur", "Roux-Dubois", "Médecin", "Médecine d'urgence"),
    ("", "Élodie", "Marchand", "Infirmier", "Infirmière en pratique avancée"),
    ("Dr", "Jean-Pierre", "N'Diaye", "Médecin", "Neurologie"),
]

SERVICES = [
    # local part, display name, organisation, expert, resource team, members
    ("avis-hemostase.chu-clermont", "Avis Hémostase — CHU Clermont-Ferrand", "CHU Clermont-Ferrand", True, False,
     ["hemostase.admin"]),
    ("dac63", "DAC 63 — Dispositif d'appui à la coordination du Puy-de-Dôme", "DAC 63", False, True,
     ["dac63.admin"]),
    ("cardiologie.chu-clermont", "Cardiologie — CHU Clermont-Ferrand", "CHU Clermont-Ferrand", True, False,
     ["bruno.petit"]),
    ("secretariat.ch-aurillac", "Secrétariat médical — CH Henri Mondor Aurillac", "CH Aurillac", False, False, []),
    ("urgences.ch-aurillac", "Urgences — CH Henri Mondor Aurillac", "CH Aurillac", False, False, []),
    ("laboratoire.biocantal", "Laboratoire Biocantal — Aurillac", "Biocantal", False, False, []),
    ("radiologie.imagerie-volcans", "Imagerie des Volcans — Clermont-Ferrand", "Imagerie des Volcans", False,
     False, []),
    ("cpts.aurillac", "CPTS du Bassin d'Aurillac", "CPTS Bassin d'Aurillac", False, True, []),
    ("reppop.auvergne", "RéPPOP Auvergne", "RéPPOP Auvergne", False, True, []),
    ("avis-dermatologie.chu-clermont", "Avis Dermatologie — CHU Clermont-Ferrand", "CHU Clermont-Ferrand", True,
     False, []),
    ("pharmacie.centrale-thiers", "Pharmacie centrale de Thiers", "Pharmacie centrale", False, False, []),
    ("dgs-urgent", "DGS-Urgent — Ministère de la Santé", "Ministère de la Santé", False, False, []),
]

# What an expert service's card says (issue 14: « DEMANDER UNE EXPERTISE » under it).
SERVICE_DESCRIPTIONS = {
    "avis-hemostase.chu-clermont": "Téléexpertise en hémostase : bilan de coagulation anormal, saignements, "
                                   "thromboses, gestion des anticoagulants autour d'un geste. Documents à fournir : "
                                   "bilan d'hémostase (TP, TCA, fibrinogène), NFS, traitement en cours. "
                                   "Réponse sous 2 jours ouvrés.",
}

SERVICE_EXPERTISE = {
    "avis-hemostase.chu-clermont": {"specialties": ["Hémostase", "Hématologie"], "answer_days": 2,
                                    "documents": "Bilan d'hémostase (TP, TCA, fibrinogène), NFS, traitement en cours.",
                                    "urgent_contact": "Hématologue d'astreinte : 04 73 75 00 00"},
}

PATIENTS = [
    # ins (valid key), family, given, birth date, sex
    ("180017510801182", "DURAND", "Pierre Marie", "1980-01-01", "M"),
    ("275082A00412359", "BERNARD", "Jeanne", "1975-08-14", "F"),
    ("263116312300136", "ROBERT", "Monique", "1963-11-02", "F"),
]


def minimal_pdf(lines: list[str]) -> bytes:
    """A small valid one-page PDF showing ``lines`` (no dependency, deterministic)."""
    text = "BT /F1 12 Tf 56 780 Td 16 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*"
        for line in lines) + " ET"
    stream = zlib.compress(text.encode("latin-1", "replace"))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


async def is_empty(core: Core) -> bool:
    async with core.read() as s:
        return (await s.scalar(sa.select(sa.func.count()).select_from(Account))) == 0


def _demo_usernames() -> list[str]:
    others = [f"{mailboxes.local_part(first)}.{mailboxes.local_part(last)}" for _, first, last, _, _ in OTHERS]
    return [p.username for p in MAIN] + others + ["admin"]


async def keep_demo_exempt(core: Core) -> int:
    """A database loaded with the demo before the second factor existed: its demo accounts stay
    exempt (recognised by alice.martin's demo password), so that `make run` logins keep working."""
    async with core.read() as s:
        alice = await s.scalar(sa.select(Account).where(Account.username == "alice.martin"))
        if alice is None or not alice.password_hash or not accounts.password_matches(alice.password_hash, PASSWORD):
            return 0
        ids = list(await s.scalars(sa.select(Account.id).where(Account.username.in_(_demo_usernames()))))
    await totp.set_exempt(core, ids)
    return len(ids)


async def _ensure_account(core: Core, p: Person) -> Account:
    async with core.read() as s:
        existing = await s.scalar(sa.select(Account).where(Account.username == p.username))
    if existing:
        return existing
    account, _ = await accounts.create_account(core, accounts.NewAccount(
        username=p.username, password=PASSWORD, first_name=p.first_name, last_name=p.last_name,
        civility=p.civility, profession=p.profession, specialty=p.specialty, national_id=p.national_id,
        profession_code=p.profession_code,
        personal_mailbox=p.username not in ("hemostase.admin", "dac63.admin")))
    return account


async def _mailbox(core: Core, address: str) -> Mailbox:
    async with core.read() as s:
        m = await s.scalar(sa.select(Mailbox).where(Mailbox.address == address))
    assert m is not None, address
    return m


def _actor(a: Account) -> Actor:
    return Actor(a.id, a.username, a.is_admin)


async def load(core: Core, progress=None) -> None:
    from rich.progress import Progress

    domain = core.settings.domain
    with Progress(console=progress, transient=True) as bar:
        task = bar.add_task("Démonstration : comptes", total=len(MAIN) + len(OTHERS) + len(SERVICES) + 2)
        people = {}
        for p in MAIN:
            people[p.username] = await _ensure_account(core, p)
            bar.advance(task)
        for civ, first, last, prof, spec in OTHERS:
            username = f"{mailboxes.local_part(first)}.{mailboxes.local_part(last)}"
            people[username] = await _ensure_account(core, Person(username, civ, first, last, prof, spec))
            bar.advance(task)
        async with core.read() as s:
            if not await s.scalar(sa.select(Account.id).where(Account.username == "admin")):
                admin_missing = True
            else:
                admin_missing = False
        if admin_missing:
            await accounts.create_account(core, accounts.NewAccount(
                username="admin", password=PASSWORD, is_admin=True, personal_mailbox=False,
                first_name="Administrateur", last_name="Plateforme"))
        # Demo logins keep working with the password alone (`make run`): exempt from the second factor.
        async with core.read() as s:
            admin_id = await s.scalar(sa.select(Account.id).where(Account.username == "admin"))
        await totp.set_exempt(core, [a.id for a in people.values()] + [admin_id])
        bar.advance(task)
        for local, name, org, expert, resource, members in SERVICES:
            async with core.read() as s:
                exists = await s.scalar(sa.select(Mailbox.id).where(Mailbox.address == f"{local}@{domain}"))
            if not exists:
                kind = MailboxKind.APP if local == "dgs-urgent" else MailboxKind.ORG
                mb = await mailboxes.create_service_mailbox(core, local=local, display_name=name, kind=kind,
                                                            organisation=org, is_expert=expert,
                                                            is_resource_team=resource,
                                                            description=SERVICE_DESCRIPTIONS.get(local, ""))
                for username in members:
                    await mailboxes.grant(core, mb.id, people[username].id, Access.MEMBER)
                    # The demo's service members manage their service (card, expert declaration).
                    await mailboxes.set_manager(core, mb.id, people[username].id)
                if expert and members and local in SERVICE_EXPERTISE:
                    from monsisra.services import teleexpertise

                    await teleexpertise.declare_expert(core, _actor(people[members[0]]), mb.id, {
                        "description": SERVICE_DESCRIPTIONS[local], **SERVICE_EXPERTISE[local]})
            bar.advance(task)
        # The other MSSanté operators whose mail the demo shows (and patients' Mon espace santé).
        await trust.add(core, list(TRUSTED_DEMO_DOMAINS), note="démonstration")
        alice_box = await _mailbox(core, f"alice.martin@{domain}")
        await mailboxes.grant(core, alice_box.id, people["sophie.blanc"].id, Access.DELEGATE)
        bar.advance(task)
        from monsisra.services import directory  # communes of the demo people and services (issue 3)

        await directory.seed_demo(core)

        async with core.read() as s:
            seeded = await s.scalar(sa.select(sa.func.count()).select_from(Delivery)
                                    .where(Delivery.mailbox_id == alice_box.id))
        if seeded:
            return
        await _seed_messages(core, people, bar)
        await _seed_conversation(core, people)


async def _seed_conversation(core: Core, people: dict[str, Account]) -> None:
    """One live conversation (issue 13): the nurse, the GP and the hospital's haemostasis service."""
    from monsisra.services import conversations

    domain = core.settings.domain
    claire, alice = _actor(people["claire.roux"]), _actor(people["alice.martin"])
    conversation_id = await conversations.start(
        core, claire, title="Plaie du talon — M. DURAND",
        participants=[f"alice.martin@{domain}", f"avis-hemostase.chu-clermont@{domain}"],
        body="Bonjour Docteur, la plaie du talon de M. Durand saigne encore sous anticoagulant. "
             "Je vous envoie une photo au prochain passage.")
    await conversations.post(core, alice, conversation_id,
                             "Merci Claire. J'ajoute l'avis hémostase du CHU pour l'adaptation du traitement.")


def attachment_name(title: str) -> str:
    """A whole, plausible file name for a document titled ``title`` (never cut mid-word)."""
    return f"{title.replace(' — ', ' - ').strip()}.pdf"


@dataclass
class _Seed:
    """One demo message: sent through the service (``compose``) or arrived from outside
    (``external``), ``ago`` before now; ``trashed``: in the bin since that long."""

    ago: timedelta
    who: Actor | None = None
    compose: messages.Compose | None = None
    external: tuple[str, str, str, str, str] | None = None  # sender, name, subject, body, category
    trashed: timedelta | None = None


async def _seed_messages(core: Core, people: dict[str, Account], bar) -> None:
    domain = core.settings.domain
    alice, bruno, claire = people["alice.martin"], people["bruno.petit"], people["claire.roux"]
    box = {name: await _mailbox(core, f"{name}@{domain}") for name in
           ("alice.martin", "bruno.petit", "claire.roux", "secretariat.ch-aurillac", "laboratoire.biocantal",
            "dac63", "avis-hemostase.chu-clermont", "urgences.ch-aurillac", "dgs-urgent",
            "radiologie.imagerie-volcans", "cardiologie.chu-clermont", "cpts.aurillac")}
    async with core.write() as tx:
        for ins, family, given, born, sex in PATIENTS:
            if not await tx.session.scalar(sa.select(Patient.id).where(Patient.ins == ins)):
                patient = Patient(ins=ins, ins_oid="1.2.250.1.213.1.4.11", family_name=family,
                                  given_names=given, birth_date=born, sex=sex)
                patient.search_name = patients.search_name(patient)
                tx.session.add(patient)
    # Service mailboxes have no human owner in the demo; act as the platform for them.
    async with core.read() as s:
        admin = await s.scalar(sa.select(Account).where(Account.username == "admin"))
    assert admin is not None
    for name in ("secretariat.ch-aurillac", "laboratoire.biocantal", "urgences.ch-aurillac", "dgs-urgent",
                 "radiologie.imagerie-volcans", "cardiologie.chu-clermont", "dac63",
                 "avis-hemostase.chu-clermont", "cpts.aurillac"):
        await mailboxes.grant(core, box[name].id, admin.id, Access.MEMBER)
    adm = _actor(admin)

    async def pdf(title: str, lines: list[str], who: Actor) -> str:
        data = minimal_pdf([attachment_name(title).removesuffix(".pdf"), "", *lines])
        digest, size = core.blobs.put_bytes(data)
        view = await attachments.register(core, who.account_id, digest, size, "application/pdf",
                                          attachment_name(title))
        return view.id

    seeds: list[_Seed] = []

    def send(ago: timedelta, who: Actor, trashed: timedelta | None = None, **compose) -> None:
        seeds.append(_Seed(ago, who, messages.Compose(**compose), trashed=trashed))

    def arrive(ago: timedelta, sender: str, name: str, subject: str, body: str, category: str) -> None:
        seeds.append(_Seed(ago, external=(sender, name, subject, body, category)))

    a_alice = _actor(alice)
    a_bruno = _actor(bruno)
    a_claire = _actor(claire)
    to_alice = [box["alice.martin"].address]
    p1 = messages.PatientRef(ins=PATIENTS[0][0], oid="1.2.250.1.213.1.4.11", family_name="DURAND",
                             given_names="Pierre Marie", birth_date="1980-01-01", sex="M")
    p2 = messages.PatientRef(ins=PATIENTS[1][0], oid="1.2.250.1.213.1.4.11", family_name="BERNARD",
                             given_names="Jeanne", birth_date="1975-08-14", sex="F")
    # Dated over the last five weeks, so that every view and date format looks real: today,
    # yesterday, this week, earlier this month, last month.
    letters = [
        (12 * DAY, "Compte rendu d'hospitalisation — M. DURAND Pierre", "Hospitalisé quatre jours pour "
         "décompensation cardiaque. Traitement de sortie : furosémide 40 mg, bisoprolol 2,5 mg. Contrôle "
         "ionogramme à J7.", p1),
        (9 * DAY, "Compte rendu de consultation de cardiologie", "Patiente vue ce jour. ECG sans anomalie, "
         "échographie cardiaque normale. Pas de contre-indication au sport.", p2),
        (23 * DAY, "Lettre de sortie — Urgences", "Passage aux urgences pour entorse de cheville droite. "
         "Immobilisation par attelle 10 jours, antalgiques de palier 1.", None),
        (34 * DAY, "Compte rendu opératoire", "Cholécystectomie par cœlioscopie sans complication. Ablation des "
         "fils à J10.", None),
    ]
    for i, (ago, subject, body, patient) in enumerate(letters):
        att = await pdf(subject, [body[:90]], adm)
        send(ago, adm, from_mailbox=box["secretariat.ch-aurillac"].id, to=to_alice, subject=subject, body=body,
             category=Category.LETTER, attachments=[att], patient=patient)
        if i == 1:
            send(ago - 20 * MINUTE, adm, from_mailbox=box["cardiologie.chu-clermont"].id, to=to_alice,
                 subject=subject, body=body, category=Category.LETTER, patient=patient)
    for ago, subject, body in [
        (2 * DAY, "Résultats d'analyses — BERNARD Jeanne", "NFS normale. Ferritine 12 µg/L (basse). "
         "Créatinine 68 µmol/L."),
        (3 * HOUR, "Résultats — INR", "INR à 2,6 (zone cible 2-3)."),
        (6 * DAY, "Résultats d'imagerie — radiographie thoracique", "Pas d'anomalie pleuro-parenchymateuse."),
    ]:
        att = await pdf(subject, [body], adm)
        src = box["radiologie.imagerie-volcans"] if "imagerie" in subject else box["laboratoire.biocantal"]
        send(ago, adm, from_mailbox=src.id, to=to_alice, subject=subject, body=body, category=Category.RESULT,
             attachments=[att], patient=p2)
    send(50 * MINUTE, adm, from_mailbox=box["urgences.ch-aurillac"].id, to=to_alice, category=Category.EVENT,
         subject="Admission aux urgences de votre patient", body="M. DURAND Pierre a été admis aux urgences "
         "ce jour pour dyspnée.", patient=p1)
    send(1 * DAY, adm, from_mailbox=box["urgences.ch-aurillac"].id, to=to_alice, category=Category.EVENT,
         subject="Sortie d'hospitalisation programmée", body="Sortie prévue demain matin ; le compte rendu suivra.",
         patient=p1)
    send(16 * DAY, adm, from_mailbox=box["dgs-urgent"].id, category=Category.DGS_URGENT,
         to=[box[n].address for n in ("alice.martin", "bruno.petit", "claire.roux")],
         subject="DGS-Urgent n° 2026-17 : épidémie de grippe saisonnière",
         body="Mesdames, Messieurs, l'épidémie de grippe est déclarée dans la région. Rappel des mesures barrières "
              "et de la vaccination des personnes à risque.")
    send(4 * DAY, a_claire, from_mailbox=box["claire.roux"].id, to=to_alice, category=Category.CONVERSATION,
         subject="Plaie de M. DURAND", body="Bonjour Docteur, la plaie du talon évolue mal : écoulement et rougeur. "
         "Je vous envoie une photo demain matin.", patient=p1)
    send(4 * DAY - 2 * HOUR, a_alice, from_mailbox=box["alice.martin"].id, to=[box["claire.roux"].address],
         category=Category.CONVERSATION, subject="Re: Plaie de M. DURAND",
         body="Merci Claire, je passe le voir jeudi. Poursuivez les soins.", patient=p1)
    send(8 * DAY, a_alice, from_mailbox=box["alice.martin"].id, to=[box["bruno.petit"].address],
         category=Category.TELEEXPERTISE, subject="Demande d'avis : souffle systolique",
         body="Cher confrère, patiente de 50 ans avec souffle systolique 2/6 au foyer aortique. Un avis sur "
              "l'indication d'une échographie ?", patient=p2)
    send(7 * DAY, a_bruno, from_mailbox=box["bruno.petit"].id, to=to_alice, category=Category.TELEEXPERTISE,
         subject="Avis : souffle systolique", body="Chère consœur, une échocardiographie transthoracique est "
         "indiquée ; je peux la recevoir sous 15 jours.", patient=p2)
    send(20 * DAY, a_alice, from_mailbox=box["alice.martin"].id, to=[box["dac63"].address],
         category=Category.SUPPORT, subject="Demande d'appui — maintien à domicile",
         body="Patiente de 87 ans isolée, chutes répétées. Besoin d'une évaluation à domicile et d'une "
              "coordination des aides.")
    send(18 * DAY, adm, from_mailbox=box["dac63"].id, to=to_alice, category=Category.SUPPORT,
         subject="Re: Demande d'appui — maintien à domicile", body="Bonjour Docteur, une coordinatrice passera "
         "au domicile lundi. Nous vous tenons informée.")
    send(27 * DAY, adm, from_mailbox=box["avis-hemostase.chu-clermont"].id, to=to_alice,
         category=Category.TELEEXPERTISE, subject="Avis hémostase : relais AVK",
         body="Relais par HBPM recommandé 5 jours avant le geste ; reprise de l'AVK le soir de l'intervention.")
    send(5 * DAY, a_bruno, from_mailbox=box["bruno.petit"].id, to=to_alice, cc=[box["claire.roux"].address],
         category=Category.LETTER, subject="Compte rendu d'échocardiographie",
         body="Échocardiographie : FEVG 60 %, pas de valvulopathie significative.", patient=p2)
    send(40 * MINUTE, a_alice, from_mailbox=box["alice.martin"].id, to=[], category=Category.LETTER, draft=True,
         subject="Courrier d'adressage — brouillon", body="Cher confrère, je vous adresse…")
    send(11 * DAY, a_alice, from_mailbox=box["alice.martin"].id, to=[box["bruno.petit"].address],
         category=Category.LETTER, subject="Adressage pour bilan cardiologique",
         body="Cher confrère, je vous adresse M. DURAND pour un bilan après décompensation cardiaque.", patient=p1)
    # One in Dr MARTIN's bin, so that « Corbeille » shows what it is for.
    send(14 * DAY, adm, trashed=2 * DAY, from_mailbox=box["cpts.aurillac"].id, to=to_alice,
         category=Category.LETTER, subject="Invitation : soirée de formation sur l'insuffisance cardiaque",
         body="La CPTS vous invite à une soirée de formation jeudi à 20 h, salle des fêtes d'Aurillac.")
    # Patient exchanges and MSSanté letters arrive from outside the platform.
    arrive(2 * HOUR, f"{PATIENTS[0][0]}@patient.mssante.fr", "DURAND Pierre", "Question sur mon traitement",
           "Bonjour Docteur, dois-je prendre le furosémide le matin ?", Category.PATIENT)
    arrive(10 * DAY, "secretariat.cardiologie@ch-vichy.mssante.fr", "Secrétariat de cardiologie — CH Vichy",
           "Compte rendu de consultation — M. DURAND",
           "Veuillez trouver ci-joint le compte rendu de la consultation de cardiologie de M. DURAND.",
           Category.MSSANTE)
    arrive(26 * HOUR, "contact@labo-dore.mssante.fr", "Laboratoire du Dore", "Résultats — ROBERT Monique",
           "HbA1c 7,2 %.", Category.RESULT)

    # Oldest first: deliveries (and so the lists, newest first) follow the dates.
    now = utcnow()
    seeds.sort(key=lambda seed: seed.ago, reverse=True)
    trashed: list[tuple[int, timedelta]] = []
    seeded: list[int] = []
    for seed in seeds:
        at = now - seed.ago
        if seed.compose is not None:
            assert seed.who is not None
            message_id = (await messages.send(core, seed.who, seed.compose))["id"]
            await _backdate(core, message_id, at, draft=seed.compose.draft)
        else:
            assert seed.external is not None
            message_id = await _external(core, box["alice.martin"], *seed.external, at=at)
        seeded.append(message_id)
        if seed.trashed is not None:
            trashed.append((message_id, seed.trashed))
        bar.advance(bar.task_ids[0], 0)
    # Vary states so that every view shows something.
    async with core.read() as s:
        rows = (await s.execute(sa.select(Delivery.id, Delivery.message_id, Delivery.category)
                                .where(Delivery.mailbox_id == box["alice.martin"].id, Delivery.role == Role.IN)
                                .order_by(Delivery.id))).all()
    binned = {m for m, _ in trashed}
    for i, row in enumerate(r for r in rows if r.message_id not in binned):
        flags = {}
        if i % 3 == 0:
            flags["read"] = True
        if i % 5 == 1:
            flags["favorite"] = True
        if i % 4 == 2:
            flags["todo"] = True
        if i in (3, 9):
            flags["archived"] = True
            flags["read"] = True
        if flags:
            await messages.update_state(core, a_alice, box["alice.martin"].id, row.message_id, flags)
    for message_id, _since in trashed:
        await messages.trash(core, a_alice, box["alice.martin"].id, message_id)
    async with core.write() as tx:
        s = tx.session
        for message_id, since in trashed:
            await s.execute(sa.update(Delivery).where(Delivery.message_id == message_id,
                                                      Delivery.mailbox_id == box["alice.martin"].id)
                            .values(deleted_at=now - since))
        # Read an hour after arrival (never in the future), as people do.
        read = (await s.execute(sa.select(Delivery.id, Delivery.created_at)
                                .where(Delivery.message_id.in_(seeded), Delivery.first_read_at.is_not(None)))).all()
        for delivery_id, created_at in read:
            await s.execute(sa.update(Delivery).where(Delivery.id == delivery_id)
                            .values(first_read_at=min(now, as_utc(created_at) + timedelta(hours=1))))


async def _backdate(core: Core, message_id: int, at: datetime, *, draft: bool) -> None:
    """Date a message just sent through the service as if it had been sent at ``at``."""
    async with core.write() as tx:
        s = tx.session
        await s.execute(sa.update(Message).where(Message.id == message_id)
                        .values(created_at=at, sent_at=None if draft else at))
        await s.execute(sa.update(Delivery).where(Delivery.message_id == message_id).values(created_at=at))
        await s.execute(sa.update(Recipient).where(Recipient.message_id == message_id).values(status_at=at))


async def _external(core: Core, mailbox: Mailbox, sender: str, sender_name: str, subject: str, body: str,
                    category: str, *, at: datetime) -> int:
    async with core.write() as tx:
        message = Message(message_id=messages.new_message_id(sender.split("@")[1]), sender_address=sender,
                          sender_name=sender_name, subject=subject, body=body, preview=preview(body),
                          category=category, created_at=at, sent_at=at, origin="smtp",
                          search_text=messages.build_search_text(subject, body, sender_name, sender, []))
        tx.session.add(message)
        await tx.session.flush()
        message.thread_id = message.id
        tx.session.add(Recipient(message_id=message.id, kind="to", address=mailbox.address,
                                 display_name=mailbox.display_name, mailbox_id=mailbox.id, status="delivered",
                                 status_at=at))
        await messages.deliver(tx, message, [(mailbox.id, Role.IN)])
        # The delivery is dated by its placement (now); the message arrived at ``at``.
        await tx.session.execute(sa.update(Delivery).where(Delivery.message_id == message.id).values(created_at=at))
    return message.id
