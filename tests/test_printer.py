"""Issue 16, item 3: the virtual printer. A real CUPS (``cupsd`` started here with a private
configuration on a free 127.0.0.1 port) with the MonSisra queue and backend installed by
``monsisra printer install``; ``lp -d MonSisra lettre.pdf`` makes a draft with the PDF attached
(``lettre.ps`` too, converted by Ghostscript) and the patient and recipients its text names as
suggestions; the watched folder does the same;
a job without a valid workstation token is refused and leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from monsisra.store.models import Attachment, Message
from monsisra.store.reach import PrintJob
from tests.reach_support import count_rows, make_pdf, make_pro
from tests.support import free_port

pytestmark = pytest.mark.postgres
MONSISRA = str(Path(sys.executable).with_name("monsisra"))
INS = "185056311300581"
LETTER = ["Dr Alice MARTIN - Médecine générale - Aurillac", "", "Cher confrère, Dr Bruno PETIT,",
          "Patient : DUPONT Jean-Pierre", "Né le 12/03/1950", "INS : 1 85 05 63 113 005 81",
          "Je vous adresse ce patient pour avis cardiologique."]


@pytest.fixture(scope="module")
def cups(tmp_path_factory):
    """A private cupsd: its own configuration, spool and backend directory (``ServerBin``)."""
    cupsd = shutil.which("cupsd") or shutil.which("cupsd", path="/usr/sbin")
    if cupsd is None or shutil.which("lp") is None:
        pytest.skip("CUPS is not installed (.ci/run installs cups cups-client cups-bsd)")
    if os.geteuid() != 0:
        pytest.skip("a private cupsd runs its 0700 backend as root: run the tests as root (CI does)")
    root = tmp_path_factory.mktemp("cups")
    root.chmod(0o755)
    for d in ("etc", "spool", "cache", "state", "log", "bin/backend"):
        (root / d).mkdir(parents=True)
        (root / d).chmod(0o755)
    for d in ("filter", "daemon", "cgi-bin", "notifier", "monitor", "driver"):
        if Path("/usr/lib/cups", d).exists():
            (root / "bin" / d).symlink_to(Path("/usr/lib/cups", d))
    port = free_port()
    (root / "etc/cupsd.conf").write_text(
        f"Listen 127.0.0.1:{port}\nLogLevel info\nWebInterface No\nBrowsing No\n"
        "<Location />\n  Order allow,deny\n  Allow 127.0.0.1\n</Location>\n"
        "<Location /admin>\n  Order allow,deny\n  Allow 127.0.0.1\n</Location>\n"
        "<Policy default>\n  <Limit All>\n    Order deny,allow\n  </Limit>\n</Policy>\n")
    (root / "etc/cups-files.conf").write_text(
        f"ServerRoot {root}/etc\nRequestRoot {root}/spool\nCacheDir {root}/cache\nStateDir {root}/state\n"
        f"ServerBin {root}/bin\nDataDir /usr/share/cups\nAccessLog {root}/log/access_log\n"
        f"ErrorLog {root}/log/error_log\nPageLog {root}/log/page_log\nUser lp\nGroup lp\nSystemGroup root\n")
    proc = subprocess.Popen([cupsd, "-f", "-c", str(root / "etc/cupsd.conf"), "-s", str(root / "etc/cups-files.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while subprocess.run(["lpstat", "-h", host, "-r"], capture_output=True, check=False).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log = root / "log/error_log"
            pytest.fail(f"cupsd did not start: {log.read_text() if log.exists() else ''}")
        time.sleep(0.1)
    yield {"host": host, "backend_dir": root / "bin/backend", "root": root}
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def printed_user(server):
    return make_pro(server, "Paul", "Imprimeur")


def make_postscript(lines: list[str]) -> bytes:
    """A one-page PostScript letter in Helvetica (ASCII lines)."""
    body = "".join(f"72 {720 - 16 * n} moveto ({line}) show\n" for n, line in enumerate(lines))
    return f"%!PS-Adobe-3.0\n/Helvetica findfont 12 scalefont setfont\n{body}showpage\n".encode()


def _jobs(server, username: str) -> list[dict]:
    with server.login(username, "secret-pass") as c:
        return c.get("/api/v1/me/print-jobs").json()


def _wait_for_job(server, username: str, known: int, cups: dict) -> dict:
    deadline = time.monotonic() + 60
    while True:
        jobs = _jobs(server, username)
        if len(jobs) > known:
            return jobs[0]
        if time.monotonic() > deadline:
            log = (cups["root"] / "log/error_log").read_text() if (cups["root"] / "log/error_log").exists() else ""
            pytest.fail(f"no draft from the printer within 60 s; CUPS log:\n{log[-3000:]}")
        time.sleep(0.2)


def test_lp_to_the_monsisra_queue_makes_a_draft_with_suggestions(server, cups, printed_user, tmp_path):
    username, _, mailbox_id = printed_user
    config = tmp_path / "etc" / "printer.json"
    done = subprocess.run(
        [MONSISRA, "printer", "install", "--server", server.base_url, "--user", username, "--password-stdin",
         "--name", "Cabinet poste 1", "--config", str(config), "--backend-dir", str(cups["backend_dir"]),
         "--cups-server", cups["host"]], input="secret-pass\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    backend = cups["backend_dir"] / "monsisra"
    assert stat.S_IMODE(backend.stat().st_mode) == 0o700
    # Without arguments the backend says what it is (CUPS discovery).
    assert subprocess.run([str(backend)], capture_output=True, text=True, check=True).stdout.startswith(
        "network monsisra ")
    with server.login(username, "secret-pass") as c:
        assert [w["name"] for w in c.get("/api/v1/me/workstations").json()] == ["Cabinet poste 1"]

    pdf = make_pdf(LETTER)
    letter = tmp_path / "lettre.pdf"
    letter.write_bytes(pdf)
    known = len(_jobs(server, username))
    lp = subprocess.run(["lp", "-h", cups["host"], "-d", "MonSisra", "-t", "Lettre au Dr Petit", str(letter)],
                        capture_output=True, text=True, timeout=60)
    assert lp.returncode == 0, lp.stderr
    job = _wait_for_job(server, username, known, cups)
    assert job["title"] == "Lettre au Dr Petit" and job["mailbox_id"] == mailbox_id
    patient = job["suggestions"]["patient"]
    assert patient == {"ins": INS, "family_name": "DUPONT", "given_names": "Jean-Pierre", "birth_date": "1950-03-12"}
    suggested = [r["address"] for r in job["suggestions"]["recipients"]]
    assert suggested[:2] == ["alice.martin@monsisra.localhost", "bruno.petit@monsisra.localhost"]

    with server.login(username, "secret-pass") as c:
        drafts = c.get(f"/api/v1/mailboxes/{mailbox_id}/messages", params={"view": "drafts"}).json()["items"]
        assert job["draft_id"] in [d["id"] for d in drafts]
        draft = c.get(f"/api/v1/mailboxes/{mailbox_id}/messages/{job['draft_id']}").json()
        assert draft["subject"] == "Lettre au Dr Petit" and draft["to"] == [] and draft["patient"] is None
        [attachment] = draft["attachments"]
        assert attachment["content_type"] == "application/pdf" and attachment["filename"] == "Lettre au Dr Petit.pdf"
        assert c.get(f"/api/v1/attachments/{attachment['id']}").content == pdf
        # The user confirms one recipient and the patient: the draft is addressed and linked.
        r = c.post(f"/api/v1/me/print-jobs/{job['id']}/confirm",
                   json={"recipients": ["bruno.petit@monsisra.localhost", "intrus@monsisra.localhost"],
                         "patient": True})
        assert r.status_code == 200, r.text
        confirmed = r.json()
        draft = c.get(f"/api/v1/mailboxes/{mailbox_id}/messages/{confirmed['draft_id']}").json()
        assert [t["address"] for t in draft["to"]] == ["bruno.petit@monsisra.localhost"]
        assert draft["patient"]["ins"] == INS and draft["attachments"][0]["id"] == attachment["id"]
        assert _jobs(server, username)[0]["draft_id"] == confirmed["draft_id"]
    # Someone else cannot confirm it.
    with server.login("claire.roux") as other:
        assert other.post(f"/api/v1/me/print-jobs/{job['id']}/confirm", json={}).status_code == 404

    # The watched folder: a PDF exported there becomes a draft too, and moves to envoyes/.
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "Compte rendu.pdf").write_bytes(make_pdf(["Compte rendu", "Patient : ROUX Claire"]))
    (folder / "notes.txt").write_text("pas un PDF")
    known = len(_jobs(server, username))
    done = subprocess.run([MONSISRA, "printer", "watch", str(folder), "--config", str(config), "--once"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (folder / "envoyes" / "Compte rendu.pdf").exists() and not (folder / "Compte rendu.pdf").exists()
    assert (folder / "notes.txt").exists()
    job = _jobs(server, username)[0]
    assert len(_jobs(server, username)) == known + 1 and job["title"] == "Compte rendu"
    assert job["suggestions"]["patient"]["family_name"] == "ROUX"

    # PostScript, what older programs print: the backend converts it with Ghostscript (ps2pdf)
    # and the draft holds a PDF whose text still suggests the recipients.
    if shutil.which("ps2pdf") is None:
        pytest.skip("Ghostscript is not installed (.ci/run installs ghostscript)")
    postscript = tmp_path / "lettre.ps"
    postscript.write_bytes(make_postscript(["Dr Alice MARTIN - Aurillac", "Cher confrere, Dr Bruno PETIT,",
                                            "Je vous adresse ce patient pour avis."]))
    known = len(_jobs(server, username))
    lp = subprocess.run(["lp", "-h", cups["host"], "-d", "MonSisra", "-t", "Lettre PostScript", str(postscript)],
                        capture_output=True, text=True, timeout=60)
    assert lp.returncode == 0, lp.stderr
    job = _wait_for_job(server, username, known, cups)
    assert job["title"] == "Lettre PostScript"
    assert "bruno.petit@monsisra.localhost" in [r["address"] for r in job["suggestions"]["recipients"]]
    with server.login(username, "secret-pass") as c:
        draft = c.get(f"/api/v1/mailboxes/{mailbox_id}/messages/{job['draft_id']}").json()
        [attachment] = draft["attachments"]
        assert attachment["content_type"] == "application/pdf" and attachment["filename"] == "Lettre PostScript.pdf"
        assert c.get(f"/api/v1/attachments/{attachment['id']}").content.startswith(b"%PDF-")


def test_a_job_without_a_valid_token_is_refused_and_leaves_nothing(server, printed_user):
    username, _, _ = printed_user
    pdf = make_pdf(["Patient : DUPONT Jean", "INS 185056311300581"])
    tables = (Attachment, Message, PrintJob)
    before = [server.call(count_rows, server.core, t) for t in tables]
    with server.login(username, "secret-pass") as c:
        token = c.post("/api/v1/me/workstations", json={"name": "Poste 2"}).json()["token"]
        web_token = c.headers["authorization"].split()[1]
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        for headers in ({}, {"Authorization": "Bearer mswk_faux"}, {"Authorization": f"Bearer {web_token}"},
                        {"Authorization": "Basic abc"}):
            r = anon.post("/api/v1/print-jobs", content=pdf, headers={"Content-Type": "application/pdf", **headers})
            assert r.status_code == 401, r.text
            assert r.headers["content-type"].startswith("application/problem+json") and r.json()["detail"]
        # A valid token, but not a PDF: refused, nothing kept.
        r = anon.post("/api/v1/print-jobs", content=b"%!PS-Adobe-3.0\nshowpage\n",
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 422 and "PDF" in r.json()["detail"]
        r = anon.post("/api/v1/print-jobs", content=b"%PDF-1.4 garbage",
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 422
    assert [server.call(count_rows, server.core, t) for t in tables] == before
    # A revoked workstation prints no more.
    with server.login(username, "secret-pass") as c:
        ws = next(w for w in c.get("/api/v1/me/workstations").json() if w["name"] == "Poste 2")
        assert c.delete(f"/api/v1/me/workstations/{ws['id']}").status_code == 204
        assert c.delete(f"/api/v1/me/workstations/{ws['id']}").status_code == 404
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.post("/api/v1/print-jobs", content=pdf, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
    assert [server.call(count_rows, server.core, t) for t in tables] == before


def test_the_compose_page_offers_the_suggestions_to_confirm(server, printed_user):
    from tests.reach_support import web_session

    username, _, mailbox_id = printed_user
    with server.login(username, "secret-pass") as c:
        token = c.post("/api/v1/me/workstations", json={"name": "Poste 3"}).json()["token"]
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.post("/api/v1/print-jobs", content=make_pdf(LETTER),
                      headers={"Authorization": f"Bearer {token}", "X-Print-Title": "Courrier%20%C3%A9crit"})
        assert r.status_code == 201, r.text
        job = r.json()
    assert job["subject"] == "Courrier écrit"
    assert job["url"].endswith(f"/ecrire?brouillon={mailbox_id}:{job['draft_id']}")
    with web_session(server, username, "secret-pass") as (web, csrf):
        page = web.get(f"/ecrire?brouillon={mailbox_id}:{job['draft_id']}")
        assert page.status_code == 200 and "suggestions à confirmer" in page.text
        assert "DUPONT Jean-Pierre" in page.text and "bruno.petit@monsisra.localhost" in page.text
        r = web.post(f"/impressions/{job['job_id']}/confirmer",
                     data={"csrf": csrf, "patient": "1", "recipients": "bruno.petit@monsisra.localhost"})
        assert r.status_code == 303
        page = web.get(r.headers["location"])
        assert 'data-address="bruno.petit@monsisra.localhost"' in page.text
        assert "INS 185056311300581" in page.text and "Courrier écrit.pdf" in page.text
