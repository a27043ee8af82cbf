"""One rule for every text that enters (issue 11, item 6), through HTTP on both engines: one-line
fields refuse control characters and line breaks (U+0085, U+2028, U+2029 included) with a French
422, multi-line texts lose their controls, and no entry point answers 500 or stores a NUL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from monsisra.domain.text import TextRefused, check_line, clean_multiline, flatten_line
from monsisra.services import accounts
from monsisra.services.errors import Invalid
from monsisra.store.models import Account, Message

CONTROLS = ["\x00", "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029", "\r", "\n"]


def test_the_rule_itself():
    for c in CONTROLS:
        with pytest.raises(TextRefused):
            check_line(f"a{c}b", "objet")
        assert flatten_line(f"a{c}b") == "a b"
    assert check_line("a\tb", "objet") == "a b"
    assert clean_multiline("a\r\nb\rc\x00d\te\u2028f\x85g") == "a\nb\ncd\te\nf\ng"
    assert clean_multiline("plain text\n") == "plain text\n"


@pytest.mark.parametrize("char", CONTROLS)
def test_a_subject_with_a_control_character_is_refused(server, make_user, char):
    _u, _a, box = make_user()
    _u2, to, _b = make_user()
    with server.login(_u, "secret-pass") as c:
        r = c.post("/api/v1/messages", json={"from_mailbox": box, "to": [to], "subject": f"Bilan{char}sanguin",
                                             "body": "x"})
        assert r.status_code == 422 and "objet" in r.json()["detail"], r.text
        assert c.get(f"/api/v1/mailboxes/{box}/counts").json()["views"]["sent"]["total"] == 0


def test_a_body_loses_its_control_characters_and_keeps_its_lines(server, make_user):
    user, _a, box = make_user()
    _u2, to, _b = make_user()
    with server.login(user, "secret-pass") as c:
        r = c.post("/api/v1/messages", json={"from_mailbox": box, "to": [to], "subject": "Corps",
                                             "body": "ligne 1\r\nligne\x00 2\x1b[31m\rfin\ttab"})
        assert r.status_code == 201, r.text
        got = c.get(f"/api/v1/mailboxes/{box}/messages/{r.json()['id']}").json()
        assert got["body"] == "ligne 1\nligne 2[31m\nfin\ttab"


def test_nul_in_a_login_name_is_a_refusal_not_a_crash(server):
    with server.client() as anon:
        for name in ("alice\x00.martin", "\x00", "a\u2028b"):
            r = anon.post("/api/v1/auth/token", data={"username": name, "password": "demo"})
            assert r.status_code in (400, 401, 422, 429), r.text
            assert r.headers["content-type"].startswith("application/problem+json")


def test_names_of_new_accounts_and_card_fields_follow_the_rule(server, make_user):
    for field in ("first_name", "last_name", "civility", "profession", "specialty"):
        values = {"first_name": "Jean", "last_name": "Dupont", field: "Dr\x00Who"}
        new = accounts.NewAccount(username=f"ctl{field.replace('_', '')}", password="secret-pass", **values)
        with pytest.raises(Invalid):
            server.call(accounts.create_account, server.core, new)
    user, _a, _b = make_user()
    with server.login(user, "secret-pass") as c:
        r = c.patch("/api/v1/directory/me", json={"notification_email": "a\x00b@exemple.fr"})
        assert r.status_code == 422, r.text
        r = c.patch("/api/v1/directory/me", json={"competences": "Plaies\x00 chroniques\r\nDiabète"})
        assert r.status_code == 200, r.text
        assert c.get("/api/v1/directory/me").json()["competences"] == "Plaies chroniques\nDiabète"


def test_no_nul_reaches_the_store_whatever_the_path(server):
    """The column types are the last door: a value written past every service check is still
    made one line (String) or stripped of controls (Text)."""

    async def write_raw(core):
        async with core.write() as tx:
            account = Account(username="porte\x00derobee", password_hash=None, first_name="A\x00", last_name="B\u2028C")
            tx.session.add(account)
            await tx.session.flush()
            row = await tx.session.execute(
                sa.select(Account.username, Account.last_name).where(Account.id == account.id))
            await tx.session.execute(sa.delete(Account).where(Account.id == account.id))
            return tuple(row.one())

    assert server.call(write_raw, server.core) == ("porte derobee", "B C")
    assert Message.__table__.c.body.type.__class__.__name__ == "Prose"
