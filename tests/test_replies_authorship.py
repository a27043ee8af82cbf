"""Mail replies that keep their meaning (« Répondre à tous », category and thread kept, compose
titles) and who did it in shared mailboxes (author line, never a login; « lu par » for the
owner), with fresh accounts on both engines."""

from __future__ import annotations

import html

import sqlalchemy as sa

from monsisra.domain.model import Access
from monsisra.services import mailboxes
from monsisra.store.models import Account
from tests.support import unique
from tests.test_web import web_login


async def _account_id(core, username):
    async with core.read() as s:
        return await s.scalar(sa.select(Account.id).where(Account.username == username))


def _box(client):
    return next(b["id"] for b in client.get("/api/v1/mailboxes").json() if b["access"] == "owner")


def _send(client, box, to, cc=(), **kw):
    r = client.post("/api/v1/messages", json={"from_mailbox": box, "to": list(to), "cc": list(cc), "subject": "Sujet",
                                              "body": "Corps", **kw})
    assert r.status_code == 201, r.text
    return r.json()


def test_reply_keeps_category_and_thread(server, make_user):
    (a, a_addr, _), (b, b_addr, _) = [make_user("Anne", unique("Rep")), make_user("Bob", unique("Rep"))]
    ca, cb = server.login(a, "secret-pass"), server.login(b, "secret-pass")
    a_box, b_box = _box(ca), _box(cb)
    support = _send(ca, a_box, [b_addr], category="support")
    reply = _send(cb, b_box, [a_addr], in_reply_to=support["id"])
    assert reply["category"] == "support" and reply["thread"]["id"] == support["thread"]["id"]
    result = _send(ca, a_box, [b_addr], category="result")
    answer = _send(cb, b_box, [a_addr], in_reply_to=result["id"])
    assert answer["category"] == "letter" and answer["thread"]["id"] == result["thread"]["id"]
    chosen = _send(cb, b_box, [a_addr], in_reply_to=support["id"], category="teleexpertise")
    assert chosen["category"] == "teleexpertise"


def test_compose_titles_and_reply_all(server, make_user):
    users = [make_user(n, unique("Tous")) for n in ("Anne", "Bob", "Carl", "Dora")]
    (a, a_addr, _), (b, b_addr, _), (_c, c_addr, _), (_d, d_addr, _) = users
    ca = server.login(a, "secret-pass")
    sent = _send(ca, _box(ca), [b_addr, c_addr], cc=[d_addr], category="support")
    cb = server.login(b, "secret-pass")
    b_box = _box(cb)
    with web_login(server, b, "secret-pass") as web:
        page = html.unescape(web.get(f"/ecrire?repondre_tous={b_box}:{sent['id']}").text)
        assert "<h1 id=\"compose-title\">Répondre à tous</h1>" in page
        _, _, cc_part = page.partition('name="cc"')
        for address in (a_addr, c_addr):
            assert f'name="to" value="{address}"' in page
        assert f'name="to" value="{b_addr}"' not in page  # not to oneself
        assert f'value="{d_addr}"' in cc_part or f'name="cc" value="{d_addr}"' in page
        assert 'name="category" value="support"' in page
        assert "<h1 id=\"compose-title\">Répondre</h1>" in web.get(f"/ecrire?repondre={b_box}:{sent['id']}").text
        assert "<h1 id=\"compose-title\">Transférer</h1>" in web.get(f"/ecrire?transferer={b_box}:{sent['id']}").text
        reading = web.get(f"/boite?bal={b_box}&dossier=all&ouvrir={sent['id']}").text
        assert "Répondre à tous" in reading


def test_author_line_and_read_by_in_shared_mailboxes(server, make_user):
    doc, doc_addr, doc_box = make_user("Alain", unique("Doc"), civility="Dr", national_id="8" + "4" * 11)
    sec, _, _ = make_user("Sophie", unique("Sec"))
    member, _, _ = make_user("Bruno", unique("Mem"), civility="Dr", national_id="8" + "5" * 11)
    other, other_addr, _ = make_user("Olga", unique("Oth"))
    svc = server.call(mailboxes.create_service_mailbox, server.core, local=unique("avis"), display_name="Avis Test")
    server.call(mailboxes.grant, server.core, doc_box, server.call(_account_id, server.core, sec), Access.DELEGATE)
    server.call(mailboxes.grant, server.core, svc.id, server.call(_account_id, server.core, member), Access.MEMBER)
    cs, cm, co = (server.login(u, "secret-pass") for u in (sec, member, other))
    # Written by the delegate in the doctor's mailbox, and by a member from the service mailbox.
    by_sec = _send(cs, doc_box, [other_addr])
    by_member = _send(cm, svc.id, [other_addr])
    o_box = _box(co)
    seen_sec = co.get(f"/api/v1/mailboxes/{o_box}/messages/{by_sec['id']}").json()
    seen_member = co.get(f"/api/v1/mailboxes/{o_box}/messages/{by_member['id']}").json()
    assert seen_sec["author"].startswith("Sophie ")
    assert ", secrétariat, pour le Dr " in seen_sec["author"] and sec not in seen_sec["author"]
    assert seen_member["author"].startswith("Dr Bruno ") and seen_member["author"].endswith(" pour Avis Test")
    # A read in the delegated mailbox: the owner sees who read it.
    letter = _send(co, o_box, [doc_addr])
    assert cs.get(f"/api/v1/mailboxes/{doc_box}/messages/{letter['id']}").status_code == 200
    cd = server.login(doc, "secret-pass")
    owner_view = cd.get(f"/api/v1/mailboxes/{doc_box}/messages/{letter['id']}").json()
    assert owner_view["read_by"]["name"].startswith("Sophie ") and owner_view["read_by"]["at"]
    with web_login(server, doc, "secret-pass") as web:
        page = web.get(f"/boite?bal={doc_box}&dossier=all&ouvrir={letter['id']}").text
        assert "Lu par Sophie " in html.unescape(page)
