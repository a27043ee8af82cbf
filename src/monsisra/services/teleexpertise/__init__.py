"""Tele-expertise (issue 14): requests to declared experts, their lifecycle, the expert's report,
billing (RQD / TE2) and an expert service's statistics. See the modules for each part."""

from monsisra.services import patients
from monsisra.services.teleexpertise.billing import export_csv, lines, remind_overdue, stats
from monsisra.services.teleexpertise.experts import experts_near, practice_commune
from monsisra.services.teleexpertise.lifecycle import act
from monsisra.services.teleexpertise.requests import NewTeleexpertise, create, expert_card, get, list_requests
from monsisra.services.teleexpertise.service_card import declare_expert, service_card
from monsisra.store.models import MailboxAccess
from monsisra.store.teleexpertise import Teleexpertise

__all__ = ["NewTeleexpertise", "act", "create", "declare_expert", "expert_card", "experts_near", "export_csv",
           "get", "lines", "list_requests", "practice_commune", "remind_overdue", "service_card", "stats"]

# Both sides of a request see its patient (the identity; the record stays for the care team).
patients.register_link("teleexpertise", lambda a: sa_select_patients(a))


def sa_select_patients(account_id: int):
    import sqlalchemy as sa

    boxes = sa.select(MailboxAccess.mailbox_id).where(MailboxAccess.account_id == account_id)
    return sa.select(Teleexpertise.patient_id).where(sa.or_(Teleexpertise.requester_mailbox_id.in_(boxes),
                                                            Teleexpertise.expert_mailbox_id.in_(boxes)))
