"""IMAP (issue 16) through Python's imaplib against a real server: folders as the web views,
FETCH, flags and moves seen through the API, IDLE, CONDSTORE/QRESYNC, bad input and access."""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
import socket

import pytest

from tests.imap_support import DOMAIN, imap, mailbox_id, new_account, raw_command, tls_context, uid_of
from tests.support import unique

ALICE = f"alice.martin@{DOMAIN}"


def send_to_alice(mail_server, subject: str, body: str = "Bonjour,\nvoici le courrier.") -> dict:
    bruno = mail_server.login("bruno.petit")
    r = bruno.post("/api/v1/messages", json={"from_mailbox": mailbox_id(bruno, f"bruno.petit@{DOMAIN}"),
                                             "to": [ALICE], "subject": subject, "body": body, "category": "letter"})
    assert r.status_code == 201, r.text
    return r.json()


def find_uid(c: imaplib.IMAP4, subject: str) -> int:
    c.noop()
    typ, data = c.uid("SEARCH", None, "SUBJECT", f'"{subject}"')
    assert typ == "OK", data
    uids = data[0].split()
    assert len(uids) == 1, data
    return int(uids[0])


def api_items(api, view: str) -> list[dict]:
    r = api.get(f"/api/v1/mailboxes/{mailbox_id(api, ALICE)}/messages", params={"view": view, "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_list_select_fetch(mail_server):
    c = imap(mail_server)
    typ, listing = c.list()
    assert typ == "OK"
    text = b"\n".join(listing)
    assert b'"INBOX"' in text
    assert b'(\\HasNoChildren \\Sent) "/" "Envoy&AOk-s"' in text
    assert b'\\Archive) "/" "Archiv&AOk-s"' in text
    assert b'\\Flagged) "/" "Favoris"' in text
    assert b'"Cat&AOk-gories/Courriers"' in text
    typ, special = c._simple_command("LIST", '(SPECIAL-USE) "" "*"')
    assert typ == "OK"
    specials = c._untagged_response(typ, special, "LIST")[1]
    assert all(b"\\" in s.split(b")")[0] for s in specials) and len(specials) == 5
    typ, count = c.select("INBOX")
    assert typ == "OK"
    api = mail_server.login("alice.martin")
    counts = api.get(f"/api/v1/mailboxes/{mailbox_id(api, ALICE)}/counts").json()
    assert int(count[0]) == counts["views"]["inbox"]["total"]
    subject = unique("Lettre IMAP ")
    send_to_alice(mail_server, subject, "Première ligne\nDeuxième ligne")
    uid = find_uid(c, subject)
    typ, data = c.uid("FETCH", str(uid), "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[])")
    assert typ == "OK", data
    head, raw = data[0]
    assert b"FLAGS ()" in data[1]  # not read: PEEK leaves it unread
    size = int(re.search(rb"RFC822.SIZE (\d+)", head).group(1))
    assert size == len(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == subject
    assert "Deuxième ligne" in msg.get_body().get_content()
    assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8")' in head
    # A partial fetch and a header subset.
    typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[]<0.10>)")
    assert data[0][1].startswith(b"Subject: ") and data[1][1] == raw[:10]
    # BODY[] without PEEK sets \Seen: the web page sees it read.
    typ, data = c.uid("FETCH", str(uid), "(BODY[TEXT])")
    assert b"\\Seen" in data[0][0] or any(b"\\Seen" in d for d in data if isinstance(d, bytes))
    assert any(i["subject"] == subject and i["state"]["read"] for i in api_items(api, "inbox"))
    c.logout()


def test_store_flags_visible_through_api(mail_server):
    subject = unique("Favori IMAP ")
    send_to_alice(mail_server, subject)
    c = imap(mail_server)
    c.select("INBOX")
    uid = find_uid(c, subject)
    typ, data = c.uid("STORE", str(uid), "+FLAGS", "(\\Flagged $Todo \\Seen)")
    assert typ == "OK"
    assert b"\\Flagged" in data[0] and b"$Todo" in data[0]
    api = mail_server.login("alice.martin")
    fav = [i for i in api_items(api, "favorites") if i["subject"] == subject]
    assert fav and fav[0]["state"]["todo"] and fav[0]["state"]["read"]
    # And back through the API: IMAP sees the change at the next NOOP.
    box = mailbox_id(api, ALICE)
    r = api.patch(f"/api/v1/mailboxes/{box}/messages/{fav[0]['id']}", json={"favorite": False})
    assert r.status_code == 200, r.text
    typ, data = c.noop()
    typ, data = c.uid("FETCH", str(uid), "(FLAGS)")
    assert b"\\Flagged" not in data[0] and b"$Todo" in data[0]
    c.logout()


def select_status(c: imaplib.IMAP4, folder: str) -> dict[str, int]:
    typ, _ = c.select(folder, readonly=True)
    assert typ == "OK"
    out = {}
    for key in ("UIDNEXT", "HIGHESTMODSEQ"):
        data = c.response(key)[1]
        out[key] = int(data[-1])
    return out


def test_a_message_flagged_late_is_new_in_favoris(mail_server):
    """Favoris has a uid space of its own: a message flagged long after it arrived (from the
    web page) gets a uid at or above the UIDNEXT a client noted, CONDSTORE reports it, and
    flagged again after leaving Favoris it is new once more; INBOX keeps its uid."""
    subject = unique("Favori tardif ")
    send_to_alice(mail_server, subject)
    c = imap(mail_server)
    c.enable("CONDSTORE")
    c.select("INBOX")
    inbox_uid = find_uid(c, subject)
    before = select_status(c, "Favoris")
    api = mail_server.login("alice.martin")
    box = mailbox_id(api, ALICE)
    message = next(i for i in api_items(api, "inbox") if i["subject"] == subject)
    assert api.patch(f"/api/v1/mailboxes/{box}/messages/{message['id']}", json={"favorite": True}).status_code == 200
    after = select_status(c, "Favoris")
    fav_uid = find_uid(c, subject)
    assert fav_uid >= before["UIDNEXT"] and after["UIDNEXT"] > fav_uid
    typ, data = c.uid("FETCH", f"{before['UIDNEXT']}:*", f"(FLAGS) (CHANGEDSINCE {before['HIGHESTMODSEQ']})")
    assert typ == "OK" and any(f"UID {fav_uid} ".encode() in d or f"UID {fav_uid})".encode() in d
                               for d in data if isinstance(d, bytes)), data
    # Off and on again: a newer uid in Favoris; INBOX never changed.
    assert api.patch(f"/api/v1/mailboxes/{box}/messages/{message['id']}", json={"favorite": False}).status_code == 200
    assert api.patch(f"/api/v1/mailboxes/{box}/messages/{message['id']}", json={"favorite": True}).status_code == 200
    select_status(c, "Favoris")
    assert find_uid(c, subject) > fav_uid
    c.select("INBOX", readonly=True)
    assert find_uid(c, subject) == inbox_uid
    c.logout()


def test_uid_move_to_archives(mail_server):
    subject = unique("Archive IMAP ")
    send_to_alice(mail_server, subject)
    c = imap(mail_server)
    c.select("INBOX")
    uid = find_uid(c, subject)
    typ, data = c.uid("MOVE", str(uid), "Archiv&AOk-s")
    assert typ == "OK", data
    copyuid = [d for d in c.untagged_responses.get("OK", []) if b"COPYUID" in d]
    assert copyuid, c.untagged_responses
    new_uid = int(re.search(rb"COPYUID \d+ \d+ (\d+)\]", copyuid[-1]).group(1))
    assert new_uid > uid  # a new uid in the archive, above all it has shown
    typ, data = c.uid("SEARCH", None, "SUBJECT", f'"{subject}"')
    assert data == [b""]
    api = mail_server.login("alice.martin")
    assert any(i["subject"] == subject for i in api_items(api, "archived"))
    assert not any(i["subject"] == subject for i in api_items(api, "inbox"))
    c.select("Archiv&AOk-s")
    assert find_uid(c, subject) == new_uid
    # Back to INBOX; a move to Envoyés is refused with nothing changed.
    typ, data = c.uid("MOVE", str(new_uid), "Envoy&AOk-s")
    assert typ == "NO" and b"CANNOT" in data[0]
    typ, data = c.uid("MOVE", str(new_uid), "INBOX")
    assert typ == "OK"
    assert any(i["subject"] == subject for i in api_items(api, "inbox"))
    c.logout()


def test_idle_sees_a_new_message(mail_server):
    c = imap(mail_server)
    c.select("INBOX")
    c.send(b"I1 IDLE\r\n")
    assert c.readline().startswith(b"+")
    subject = unique("Pendant IDLE ")
    send_to_alice(mail_server, subject)
    c.sock.settimeout(30)
    seen = []
    for _ in range(20):
        line = c.readline()
        seen.append(line)
        if line.endswith(b"EXISTS\r\n"):
            break
    assert seen[-1].endswith(b"EXISTS\r\n"), seen
    c.send(b"DONE\r\n")
    while not (line := c.readline()).startswith(b"I1 "):
        pass
    assert line.startswith(b"I1 OK")
    c.uid("SEARCH", None, "ALL")
    assert find_uid(c, subject)
    c.logout()


def test_condstore_and_qresync(mail_server):
    subject = unique("Qresync ")
    send_to_alice(mail_server, subject)
    c = imap(mail_server)
    typ, data = c._simple_command("ENABLE", "QRESYNC")
    assert typ == "OK"
    typ, data = c.select("INBOX")
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(c.untagged_responses.get("OK", []))).group(1))
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(c.untagged_responses.get("OK", []))).group(1))
    uid = find_uid(c, subject)
    api = mail_server.login("alice.martin")
    box = mailbox_id(api, ALICE)
    item = next(i for i in api_items(api, "inbox") if i["subject"] == subject)
    api.patch(f"/api/v1/mailboxes/{box}/messages/{item['id']}", json={"todo": True})
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {highest})")
    changed = [d for d in data if isinstance(d, bytes) and b"MODSEQ" in d]
    assert any(uid_of(d) == uid and b"$Todo" in d for d in changed), data
    # Archived from the web page: a client resyncing INBOX learns the uid vanished.
    api.patch(f"/api/v1/mailboxes/{box}/messages/{item['id']}", json={"archived": True})
    c.close()
    lines = raw_command(c, f"R1 SELECT INBOX (QRESYNC ({validity} {highest}))".encode())
    assert lines[-1].startswith(b"R1 OK"), lines
    vanished = [ln for ln in lines if ln.startswith(b"* VANISHED (EARLIER)")]
    assert vanished and _in_uidset(uid, vanished[0].split()[-1].decode()), lines
    # STORE UNCHANGEDSINCE refuses a message changed since.
    other = next(ln for ln in lines if b"EXISTS" in ln)
    assert other
    out = raw_command(c, b"R2 UID STORE 1:* (UNCHANGEDSINCE 1) +FLAGS.SILENT (\\Seen)")
    assert out[-1].startswith(b"R2 OK [MODIFIED "), out
    c.logout()


def _uidset(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition(":")
        out.update(range(int(a), int(b or a) + 1))
    return out


def test_qresync_vanished_is_exactly_what_was_removed_since(mail_server):
    """The expunge history: a client resyncing with the modseq it noted is told exactly the uids
    removed after it (archived from the web page, moved to the bin over IMAP, unflagged out of
    Favoris) — not those removed before, nor the uids of other folders; FETCH (VANISHED) too.
    Older than the pruned floor, the answer is every uid it cannot show."""
    username, address, box = new_account(mail_server)
    bruno = mail_server.login("bruno.petit")
    subjects = [unique(f"Historique {n} ") for n in range(4)]
    for subject in subjects:
        r = bruno.post("/api/v1/messages", json={"from_mailbox": mailbox_id(bruno, f"bruno.petit@{DOMAIN}"),
                                                 "to": [address], "subject": subject, "body": "Bonjour.",
                                                 "category": "letter"})
        assert r.status_code == 201, r.text
    api = mail_server.login(username, "secret-pass-16")
    ids = {i["subject"]: i["id"] for i in api.get(f"/api/v1/mailboxes/{box}/messages",
                                                   params={"view": "inbox"}).json()["items"]}
    c = imap(mail_server, username, "secret-pass-16")
    assert c._simple_command("ENABLE", "QRESYNC")[0] == "OK"
    c.select("INBOX")
    uids = [find_uid(c, s) for s in subjects]
    # Removed before the client's modseq: not reported again.
    assert api.patch(f"/api/v1/mailboxes/{box}/messages/{ids[subjects[0]]}", json={"archived": True}).status_code == 200
    c.close()
    c.select("INBOX")
    ok = b" ".join(c.untagged_responses.get("OK", []))
    validity = int(re.search(rb"UIDVALIDITY (\d+)", ok).group(1))
    noted = int(re.search(rb"HIGHESTMODSEQ (\d+)", ok).group(1))
    # Removed after it: archived from the web page, and moved to the bin over IMAP.
    assert api.patch(f"/api/v1/mailboxes/{box}/messages/{ids[subjects[1]]}", json={"archived": True}).status_code == 200
    assert c.uid("STORE", str(uids[2]), "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert c.expunge()[0] == "OK"
    c.close()
    lines = raw_command(c, f"R1 SELECT INBOX (QRESYNC ({validity} {noted}))".encode())
    assert lines[-1].startswith(b"R1 OK"), lines
    vanished = [ln for ln in lines if ln.startswith(b"* VANISHED (EARLIER)")]
    assert len(vanished) == 1 and _uidset(vanished[0].split()[-1].decode()) == {uids[1], uids[2]}, lines
    out = raw_command(c, f"R2 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {noted} VANISHED)".encode())
    vanished = [ln for ln in out if ln.startswith(b"* VANISHED (EARLIER)")]
    assert len(vanished) == 1 and _uidset(vanished[0].split()[-1].decode()) == {uids[1], uids[2]}, out
    # Favoris: flagged then unflagged from the web page, its uid there vanishes from Favoris
    # only; INBOX still shows the message under its own uid.
    flag = f"/api/v1/mailboxes/{box}/messages/{ids[subjects[3]]}"
    assert api.patch(flag, json={"favorite": True}).status_code == 200
    c.select("Favoris")
    fav_uid = find_uid(c, subjects[3])
    fav_noted = int(c.response("HIGHESTMODSEQ")[1][-1])
    assert api.patch(flag, json={"favorite": False}).status_code == 200
    lines = raw_command(c, f"R4 SELECT Favoris (QRESYNC ({validity} {fav_noted}))".encode())
    vanished = [ln for ln in lines if ln.startswith(b"* VANISHED (EARLIER)")]
    assert len(vanished) == 1 and _uidset(vanished[0].split()[-1].decode()) == {fav_uid}, lines
    lines = raw_command(c, f"R5 SELECT INBOX (QRESYNC ({validity} {fav_noted}))".encode())
    assert not [ln for ln in lines if ln.startswith(b"* VANISHED")], lines
    # The history pruned past the client's modseq: every uid the folder cannot show.
    mail_server.call(_raise_floor, mail_server, box, noted + 1)
    lines = raw_command(c, f"R6 SELECT INBOX (QRESYNC ({validity} {noted}))".encode())
    vanished = [ln for ln in lines if ln.startswith(b"* VANISHED (EARLIER)")]
    assert vanished and {uids[0], uids[1], uids[2]} <= _uidset(vanished[0].split()[-1].decode()), lines
    c.logout()


async def _raise_floor(server, mailbox: int, modseq: int) -> None:
    from monsisra.store.reach import ImapVanishedFloor

    async with server.core.write() as tx:
        tx.session.add(ImapVanishedFloor(mailbox_id=mailbox, modseq=modseq))


def _in_uidset(uid: int, text: str) -> bool:
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        if int(lo) <= uid <= int(hi or lo):
            return True
    return False


def test_bad_commands_get_bad_and_the_connection_goes_on(mail_server):
    c = imap(mail_server)
    c.select("INBOX")
    for line in (b"B1 FROBNICATE", b"B2 FETCH 1 (BODY[", b"B3 FETCH x FLAGS", b'B4 SELECT "INBOX',
                 b"B5 STORE 1 +FLAGS", b"B6 UID FOO 1", b"B7 FETCH 1 (NOPE)", b"B8 SEARCH NOTAKEY",
                 b"B9 FETCH 1:99999999 FLAGS", b"B10 LOGIN a b c", b"B11 " + b"(" * 200):
        out = raw_command(c, line)
        assert out[-1].startswith(line.split(b" ")[0] + b" BAD"), (line, out)
    c.send(b"\xff\xfe\r\n")
    assert c.readline().startswith(b"* BAD")
    # A literal in a command (LITERAL+ and synchronising).
    out = raw_command(c, b'L1 STATUS {5+}\r\nINBOX (MESSAGES)')
    assert out[-1].startswith(b"L1 OK"), out
    assert c.noop()[0] == "OK"
    typ, _ = c.select('"Dossier inconnu"')
    assert typ == "NO"
    c.logout()


def test_no_login_before_tls(mail_server):
    c = imaplib.IMAP4("127.0.0.1", mail_server.settings.imap_port, timeout=30)
    assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        c.login("alice.martin", "demo")
    out = raw_command(c, b"A1 AUTHENTICATE PLAIN AGFsaWNlLm1hcnRpbgBkZW1v")
    assert b"PRIVACYREQUIRED" in out[-1]
    c.starttls(tls_context(mail_server))
    assert c.login("alice.martin", "demo")[0] == "OK"
    c.logout()


def test_wrong_passwords_are_throttled(mail_server):
    username, _address, _ = new_account(mail_server)
    for _ in range(mail_server.settings.login_max_failures):
        c = imap(mail_server, None)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.login(username, "wrong-password")
        c.logout()
    c = imap(mail_server, None)
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        c.login(username, "secret-pass-16")  # even the right one, while locked
    c.logout()


def test_mailbox_of_another_account_is_invisible(mail_server):
    c = imap(mail_server, "bruno.petit")
    typ, listing = c.list()
    assert b"alice.martin" not in b"\n".join(listing)
    typ, data = c.select('"alice.martin@monsisra.localhost/R&AOk-ception"')
    assert typ == "NO"
    typ, data = c.status('"alice.martin@monsisra.localhost/R&AOk-ception"', "(MESSAGES)")
    assert typ == "NO"
    c.logout()
    # Sophie, Dr Martin's secretary (delegate), sees Dr Martin's mailbox as a folder tree.
    c = imap(mail_server, "sophie.blanc")
    typ, listing = c.list()
    assert b'"alice.martin@monsisra.localhost/R&AOk-ception"' in b"\n".join(listing)
    typ, data = c.select('"alice.martin@monsisra.localhost/R&AOk-ception"')
    assert typ == "OK" and int(data[0]) > 0
    c.logout()


def test_starttls_port_and_auth_plain(mail_server):
    c = imap(mail_server, None, implicit=False)
    typ, _ = c.authenticate("PLAIN", lambda _: b"\0alice.martin\0demo")
    assert typ == "OK"
    assert c.select("Envoy&AOk-s", readonly=True)[0] == "OK"
    c.logout()


def test_connection_closed_mid_literal_does_not_hurt(mail_server):
    with socket.create_connection(("127.0.0.1", mail_server.settings.imaps_port), timeout=30) as raw:
        tls = tls_context(mail_server).wrap_socket(raw, server_hostname="127.0.0.1")
        tls.recv(1000)
        tls.sendall(b"A1 LOGIN {100}\r\n")
        assert tls.recv(1000).startswith(b"+")
        tls.close()
    c = imap(mail_server)
    assert c.noop()[0] == "OK"
    c.logout()


def test_deleted_then_expunge_puts_it_in_the_bin(mail_server):
    subject = unique("Corbeille IMAP ")
    send_to_alice(mail_server, subject)
    c = imap(mail_server)
    c.select("INBOX")
    uid = find_uid(c, subject)
    typ, data = c.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
    assert typ == "OK" and b"\\Deleted" in data[0]
    api = mail_server.login("alice.martin")
    assert any(i["subject"] == subject for i in api_items(api, "inbox"))  # not before EXPUNGE
    typ, data = c.expunge()
    assert typ == "OK" and data and data[0] is not None
    assert any(i["subject"] == subject for i in api_items(api, "trash"))
    c.select("Corbeille")
    assert find_uid(c, subject) > uid
    c.logout()


def test_imap_changes_reach_the_web_page_live(mail_server):
    """What the web page listens to (the account's WebSocket) hears IMAP flags and moves at once."""
    from websockets.sync.client import connect

    from tests.test_realtime import next_event, token_of, ws_url

    subject = unique("En direct IMAP ")
    sent = send_to_alice(mail_server, subject)
    api = mail_server.login("alice.martin")
    c = imap(mail_server)
    c.select("INBOX")
    uid = find_uid(c, subject)
    with connect(ws_url(mail_server.base_url), additional_headers={"Authorization": f"Bearer {token_of(api)}"}) as ws:
        assert next_event(ws, "hello")
        c.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")
        event = next_event(ws, "message.flags")
        assert event["message_id"] == sent["id"] and event["flags"] == {"favorite": True}
        c.uid("MOVE", str(uid), "Archiv&AOk-s")
        event = next_event(ws, "message.flags")
        assert event["message_id"] == sent["id"] and event["flags"] == {"archived": True}
    c.logout()


def test_many_connections_at_once_are_not_taken_for_an_attack(mail_server):
    """A client opening ten connections at once logs in ten times: none is throttled."""
    from concurrent.futures import ThreadPoolExecutor

    username, _address, _ = new_account(mail_server)

    def one(_: int) -> str:
        c = imap(mail_server, None)
        try:
            return c.login(username, "secret-pass-16")[0]
        finally:
            c.logout()

    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(one, range(10))) == ["OK"] * 10


def _appended_uid(data: list) -> int:
    m = re.search(rb"APPENDUID \d+ (\d+)\]", b" ".join(d for d in data if isinstance(d, bytes)))
    assert m, data
    return int(m.group(1))


def test_append_to_brouillons_makes_a_draft_and_to_envoyes_finds_the_sent_copy(mail_server):
    """APPEND: into Brouillons a draft the web page lists (a large one streamed to disk); into
    Envoyés the copy Thunderbird saves after sending through our submission answers the uid of
    the message already there (same Message-ID) instead of a second copy, and a message sent
    elsewhere becomes a copy nobody receives; any other folder, a message too big,
    CREATE/DELETE/RENAME: NO [CANNOT]/[TOOBIG] with a reason, nothing changes."""
    from email.message import EmailMessage

    from tests.imap_support import smtp

    username, address, box = new_account(mail_server)
    api = mail_server.login(username, "secret-pass-16")

    def subjects(view: str) -> list[str]:
        r = api.get(f"/api/v1/mailboxes/{box}/messages", params={"view": view, "limit": 50})
        assert r.status_code == 200, r.text
        return [i["subject"] for i in r.json()["items"]]

    draft = EmailMessage()
    draft["From"], draft["To"], draft["Subject"] = address, f"bruno.petit@{DOMAIN}", unique("Brouillon IMAP ")
    draft.set_content("Cher confrère,\nbrouillon écrit dans Thunderbird.\n")
    draft.add_attachment(b"%PDF-1.4\n" + b"0" * 300_000, maintype="application", subtype="pdf",
                         filename="compte-rendu.pdf")  # > 64 KB: the literal goes to a file
    c = imap(mail_server, username, "secret-pass-16")
    typ, data = c.append("Brouillons", "(\\Draft)", None, draft.as_bytes())
    assert typ == "OK", data
    uid = _appended_uid(data)
    assert subjects("drafts") == [draft["Subject"]]
    c.select("Brouillons", readonly=True)
    assert find_uid(c, draft["Subject"]) == uid
    saved = next(i for i in api.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "drafts"}).json()["items"])
    full = api.get(f"/api/v1/mailboxes/{box}/messages/{saved['id']}").json()
    assert [t["address"] for t in full["to"]] == [f"bruno.petit@{DOMAIN}"]
    assert [a["filename"] for a in full["attachments"]] == ["compte-rendu.pdf"]
    # Sent through the submission, then the client saves its copy in Envoyés: not twice.
    sent = EmailMessage()
    sent["From"], sent["To"], sent["Subject"] = address, f"bruno.petit@{DOMAIN}", unique("Envoi Thunderbird ")
    sent["Message-ID"] = f"<{unique('tb')}@client.test>"
    sent.set_content("Bonjour.\n")
    with smtp(mail_server, username, "secret-pass-16") as s:
        assert s.send_message(sent) == {}
    assert subjects("sent") == [sent["Subject"]]
    c.select("Envoy&AOk-s", readonly=True)
    sent_uid = find_uid(c, sent["Subject"])
    typ, data = c.append("Envoy&AOk-s", "(\\Seen)", None, sent.as_bytes())
    assert typ == "OK" and _appended_uid(data) == sent_uid, data
    assert subjects("sent") == [sent["Subject"]]
    # Sent elsewhere: a copy in Envoyés that nobody receives; from another address: refused.
    other = EmailMessage()
    other["From"], other["To"], other["Subject"] = address, f"bruno.petit@{DOMAIN}", unique("Envoye ailleurs ")
    other.set_content("Envoyé par un autre serveur.\n")
    typ, data = c.append("Envoy&AOk-s", "(\\Seen)", None, other.as_bytes())
    assert typ == "OK", data
    copy_uid = _appended_uid(data)
    assert copy_uid > sent_uid and sorted(subjects("sent")) == sorted([sent["Subject"], other["Subject"]])
    bruno = mail_server.login("bruno.petit")
    r = bruno.get(f"/api/v1/mailboxes/{mailbox_id(bruno, f'bruno.petit@{DOMAIN}')}/messages",
                  params={"view": "all", "limit": 100})
    assert other["Subject"] not in [i["subject"] for i in r.json()["items"]]
    assert sent["Subject"] in [i["subject"] for i in r.json()["items"]]
    foreign = EmailMessage()
    foreign["From"], foreign["To"], foreign["Subject"] = f"bruno.petit@{DOMAIN}", address, unique("Usurpe ")
    foreign.set_content("Pas de cette boîte.\n")
    typ, data = c.append("Envoy&AOk-s", None, None, foreign.as_bytes())
    assert typ == "NO", data
    # Other folders and folder management: refused with the reason, nothing changes.
    for folder in ("INBOX", "Archiv&AOk-s", "Favoris"):
        typ, data = c.append(folder, None, None, other.as_bytes())
        assert typ == "NO" and b"[CANNOT]" in data[0] and b"Brouillons" in data[0], (folder, data)
    for typ, data in (c.create("Perso"), c.delete("Archiv&AOk-s"), c.rename("Favoris", "Perso")):
        assert typ == "NO" and b"[CANNOT]" in data[0] and b"MonSisra" in data[0], data
    assert subjects("inbox") == [] and sorted(subjects("sent")) == sorted([sent["Subject"], other["Subject"]])
    assert subjects("drafts") == [draft["Subject"]]
    # Over the size limit: refused before the client sends it (synchronising literal).
    limit = mail_server.settings.max_message_bytes
    out = raw_command(c, f"R1 APPEND Brouillons {{{limit + 1}}}".encode())
    assert out[-1].startswith(b"R1 NO [TOOBIG]"), out
    assert c.noop()[0] == "OK"  # the connection goes on
    assert subjects("drafts") == [draft["Subject"]]
    c.logout()
