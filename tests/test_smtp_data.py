"""The byte-level MIME cut (``domain/mail/split.py``) builds the same tree as the library's parser.

Every sample of ``tests/fixtures`` (copies of the shared samples, hostile ones included) and a set of
generated messages are parsed both ways: the message trees (headers, payload strings) and the
parsed results are equal, and the shapes the cut does not handle go to the full parser.
"""

from __future__ import annotations

import base64
import email
import os
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from monsisra.domain.mail import mime, split

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = sorted(p.name for p in FIXTURES.glob("*.eml"))
# The samples the cut must take itself (the others: attached reports, no boundary, deep nesting).
CUT_SAMPLES = {"lab_result.eml", "letter_with_xdm.eml", "patient_reply.eml", "bad_header_injection.eml",
               "bad_html_script.eml", "bad_traversal_filename.eml", "bad_zip_bomb_xdm.eml"}


def _shape(msg: Message) -> object:
    payload = msg.get_payload()
    inner = [_shape(p) for p in payload] if isinstance(payload, list) else payload
    return list(msg.raw_items()), msg.get_content_type(), inner


def _outcome(raw: bytes, fast: bool) -> object:
    try:
        return mime.parse(raw, "secretariat@autre-operateur.localhost", fast=fast)
    except mime.MailError as exc:
        return exc.reply


def assert_same(raw: bytes, *, cut: bool) -> None:
    """The cut gives the library's tree and ``mime.parse`` the same result both ways; ``cut`` says
    whether the fast path must take this message (else it must hand it to the full parser)."""
    tree = split.cut(raw, mime.READ_POLICY)
    assert (tree is not None) == cut
    if tree is not None:
        assert _shape(tree) == _shape(email.message_from_bytes(raw, policy=mime.READ_POLICY))
    assert _outcome(raw, fast=True) == _outcome(raw, fast=False)


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_parse_the_same(name):
    raw = (FIXTURES / name).read_bytes()
    assert_same(raw, cut=name in CUT_SAMPLES)
    assert_same(raw.replace(b"\r\n", b"\n"), cut=name in CUT_SAMPLES)
    assert_same(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), cut=name in CUT_SAMPLES)


def _pdf(seed: int) -> bytes:
    return b"%PDF-1.4\n" + os.urandom(20_000) + b"\n%%EOF " + str(seed).encode() + b"\n"


def _letter(**extra: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Secrétariat Cardiologie <secretariat@autre-operateur.localhost>"
    msg["To"] = "Dr Alice MARTIN <alice.martin@monsisra.localhost>"
    msg["Subject"] = "Compte rendu de consultation — Mme Éloïse DUPONT"
    msg["Message-ID"] = "<cr.1@autre-operateur.localhost>"
    msg["Date"] = "Tue, 01 Dec 2026 08:30:00 +0100"
    for k, v in extra.items():
        msg[k.replace("_", "-")] = v
    return msg


def _crlf(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def test_mixed_with_pdf_crlf_and_lf():
    msg = _letter(X_MSS_NIL="BENCH")
    msg.set_content("Cher confrère,\nVeuillez trouver ci-joint le compte rendu.\n")
    msg.add_attachment(_pdf(1), maintype="application", subtype="pdf", filename="CR Éloïse.pdf")
    msg.add_attachment(_pdf(2), maintype="application", subtype="pdf", filename="annexe.pdf")
    assert_same(_crlf(msg), cut=True)
    assert_same(msg.as_bytes(), cut=True)
    parsed = mime.parse(_crlf(msg))
    assert [a.filename for a in parsed.attachments] == ["CR Éloïse.pdf", "annexe.pdf"]
    assert parsed.attachments[0].data.startswith(b"%PDF-1.4")


def test_nested_alternative_inside_mixed():
    msg = _letter()
    msg.set_content("Texte brut du courrier.\n")
    msg.add_alternative("<p>Texte <b>HTML</b> du courrier.</p>", subtype="html")
    msg.add_attachment(_pdf(3), maintype="application", subtype="pdf", filename="cr.pdf")
    assert msg.get_payload()[0].get_content_type() == "multipart/alternative"
    assert_same(_crlf(msg), cut=True)
    assert_same(msg.as_bytes(), cut=True)


def test_quoted_printable_and_8bit_bodies():
    for cte in ("quoted-printable", "8bit", "base64", "7bit"):
        msg = _letter()
        text = "Résultat : 3,5 mmol/l = normal.\n" + "Une très longue ligne " * 20 + "\n"
        if cte == "7bit":
            text = "Plain ASCII text.\nSecond line.\n"
        msg.set_content(text, cte=cte)
        raw = _crlf(msg) if cte != "8bit" else msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", cte_type="8bit"))
        assert_same(raw, cut=True)
        assert mime.parse(raw).text.startswith(text.split("\n")[0])


def test_encoded_word_headers():
    raw = (b"From: =?utf-8?q?Laboratoire_d=E2=80=99Aurillac?= <labo@autre-operateur.localhost>\r\n"
           b"To: alice.martin@monsisra.localhost\r\n"
           b"Subject: =?utf-8?b?" + base64.b64encode("Résultats d'analyse — urgent".encode()) + b"?=\r\n"
           b"  =?iso-8859-1?q?suite_=E9t=E9?=\r\n"
           b"Message-ID: <lab.7@autre-operateur.localhost>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"=_sep\"\r\n\r\n"
           b"preamble\r\n--=_sep\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\nH\xe9moglobine normale.\r\n"
           b"--=_sep\r\nContent-Type: application/pdf; name*=utf-8''r%C3%A9sultat.pdf\r\n"
           b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sultat.pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(_pdf(4)).replace(b"\n", b"\r\n") +
           b"--=_sep--\r\nepilogue\r\n")
    assert_same(raw, cut=True)
    parsed = mime.parse(raw)
    assert parsed.subject.startswith("Résultats d'analyse — urgent")
    assert parsed.text == "Hémoglobine normale."
    assert parsed.attachments[0].filename == "résultat.pdf"


def _handmade(parts: list[bytes], boundary: bytes = b"b1", close: bool = True, eol: bytes = b"\r\n") -> bytes:
    head = (b"From: secretariat@autre-operateur.localhost\nTo: alice.martin@monsisra.localhost\n"
            b"Subject: fait main\nContent-Type: multipart/mixed; boundary=" + boundary + b"\n\n")
    body = b"".join(b"--" + boundary + b"\n" + p + b"\n" for p in parts)
    if close:
        body += b"--" + boundary + b"--\n"
    return (head + body).replace(b"\n", eol)


def test_missing_closing_boundary():
    parts = [b"Content-Type: text/plain\n\nBonjour.", b"Content-Type: application/pdf\n"
             b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(_pdf(5)).rstrip(b"\n")]
    for eol in (b"\r\n", b"\n"):
        assert_same(_handmade(parts, close=False, eol=eol), cut=True)
        assert_same(_handmade(parts, close=False, eol=eol).rstrip(b"\r\n"), cut=True)
        assert_same(_handmade(parts, eol=eol), cut=True)


def test_boundary_like_text_inside_a_part():
    # Base64-like and quoted text that starts like the boundary but is not a delimiter line.
    body = (b"Content-Type: text/plain\n\n--b1x is not the boundary\n --b1 neither (indented)\n"
            b"--b1-- trailing text is not a close\nQUJDRA==--b1\n--b1 \t")
    parts = [body + b"x", b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
             b"LS1iMQ0KLS1iMS0tDQo=\nLS1iMQ=="]
    for eol in (b"\r\n", b"\n"):
        assert_same(_handmade(parts, eol=eol), cut=True)
    # Trailing spaces after a boundary are allowed (RFC 2046): that line is a delimiter.
    assert_same(_handmade([b"Content-Type: text/plain\n\nA\n--b1  \nContent-Type: text/plain\n\nB"]), cut=True)


def test_part_without_headers_and_mixed_line_ends():
    assert_same(_handmade([b"", b"Content-Type: text/plain\n\nA"]), cut=True)
    raw = _handmade([b"\nNo header at all.", b"Content-Type: text/html\n\n<p>Salut</p>"])
    assert_same(raw, cut=True)
    assert_same(raw.replace(b"\r\n", b"\n", 3), cut=True)


def test_nested_same_boundary_prefix():
    inner = (b"Content-Type: multipart/alternative; boundary=b1-inner\n\n--b1-inner\n"
             b"Content-Type: text/plain\n\nTexte\n--b1-inner\nContent-Type: text/html\n\n<p>Texte</p>\n--b1-inner--")
    for eol in (b"\r\n", b"\n"):
        assert_same(_handmade([inner, b"Content-Type: text/plain\n\nfin"], eol=eol), cut=True)
        # The inner multipart not closed: it ends at the outer boundary.
        unclosed = inner.rsplit(b"\n", 1)[0]
        assert_same(_handmade([unclosed, b"Content-Type: text/plain\n\nfin"], eol=eol), cut=True)


@pytest.mark.parametrize("raw", [
    # A lone CR is a line end to the library.
    b"From: a@autre-operateur.localhost\r\nSubject: x\rY\r\n\r\nbody\r\n",
    # A Unix "From " line, a header with a space before its colon, no blank line after the headers.
    b"From a@b Tue Dec  1 08:00:00 2026\nFrom: a@autre-operateur.localhost\n\nbody\n",
    b"From: a@autre-operateur.localhost\nSubject : x\n\nbody\n",
    b"From: a@autre-operateur.localhost\nSubject: x\nthis is not a header\n\nbody\n",
    b"From: a@autre-operateur.localhost\nSubject: headers only\n",
    # Consecutive boundary lines, a close before any part, an unknown transfer encoding.
    b"From: a@autre-operateur.localhost\nContent-Type: multipart/mixed; boundary=z\n\n--z\n--z\n\nA\n--z--\n",
    b"From: a@autre-operateur.localhost\nContent-Type: multipart/mixed; boundary=z\n\n--z--\n",
    b"From: a@autre-operateur.localhost\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n`\nend\n",
    # An attached message and a report: the full parser's (original bytes kept, report read).
    _handmade([b"Content-Type: message/rfc822\n\nFrom: x@y.z\nSubject: inner\n\nhello"]),
])
def test_shapes_left_to_the_full_parser(raw):
    assert_same(raw, cut=False)


def test_mutated_messages_parse_the_same():
    """Seeded mutations of real-looking mail (truncated, a line dropped or doubled, a line end
    changed): whichever path takes each one, the result is the library's."""
    import random

    rng = random.Random(18)
    letter = _letter()
    letter.set_content("Texte.\n")
    letter.add_alternative("<p>Texte</p>", subtype="html")
    letter.add_attachment(b"%PDF-1.4\n" + bytes(range(256)) * 8, maintype="application", subtype="pdf",
                          filename="cr.pdf")
    bases = [_crlf(letter), (FIXTURES / "lab_result.eml").read_bytes(), (FIXTURES / "letter_with_xdm.eml").read_bytes()]
    taken = 0
    for _ in range(150):
        lines = rng.choice(bases).split(b"\n")
        at = rng.randrange(len(lines))
        kind = rng.randrange(4)
        if kind == 0:
            lines = lines[:at]
        elif kind == 1:
            del lines[at]
        elif kind == 2:
            lines.insert(at, lines[at])
        else:
            lines[at] = lines[at].rstrip(b"\r")
        raw = b"\n".join(lines)
        tree = split.cut(raw, mime.READ_POLICY)
        if tree is not None:
            taken += 1
            assert _shape(tree) == _shape(email.message_from_bytes(raw, policy=mime.READ_POLICY))
        assert _outcome(raw, fast=True) == _outcome(raw, fast=False)
    assert taken > 50  # most mutations stay in the cut's hands


@pytest.mark.parametrize("arg", [
    "<a@b.c>", "<a.b+c@x-y.example.fr> SIZE=123 BODY=8BITMIME", "<a@b.c>  SIZE=1 ", "<a@b.c> ",
    "<a@b.c>\tBODY=7BIT", "<A.B@Ex.FR>", "<a..b@c>", "<.a@b>", '<"q u"@b.c>', "<a@[1.2.3.4]>",
    "<@r:a@b.c>", "a@b.c", "<a@b.c>x", "<a(c)@b.c>", "<a@b..c>", "<" + "l" * 70 + "@b.c>",
])
def test_mail_and_rcpt_paths_read_as_the_library_reads_them(arg):
    from aiosmtpd.smtp import SMTP

    from monsisra.gateway.smtp import LimitedSMTP

    ours, lib = LimitedSMTP.__new__(LimitedSMTP), SMTP.__new__(SMTP)
    ours.local_part_limit = lib.local_part_limit = 64
    address, params = ours._getaddr(arg)
    expected, expected_params = SMTP._getaddr(lib, arg)
    assert address == expected
    # aiosmtpd uses the parameters as ``params.upper().split()`` and tests whether there are any.
    assert (params or "").upper().split() == (expected_params or "").upper().split()
    assert bool(params) == bool(expected_params)


def test_many_parts_go_to_the_full_parser():
    raw = _handmade([b"Content-Type: text/plain\n\nx"] * 150)
    assert_same(raw, cut=False)
    assert len(mime.parse(raw).attachments) == 0


def test_a_large_message_the_cut_leaves_is_not_fully_parsed_in_the_loop():
    """What the cut hands over (here an attached message) is parsed by the caller only up to
    ``full_up_to`` bytes; larger, the caller is told to parse it elsewhere (a helper process)."""
    inner = b"From: x@y.z\nSubject: inner\n\n" + b"Ligne du message transfere.\n" * 4000
    raw = _handmade([b"Content-Type: text/plain\n\nVoir piece jointe.",
                     b"Content-Type: message/rfc822\n\n" + inner])
    assert split.cut(raw, mime.READ_POLICY) is None
    with pytest.raises(mime.NeedsFullParser):
        mime.parse(raw, full_up_to=64 * 1024)
    parsed = mime.parse(raw, full_up_to=len(raw))
    assert [a.content_type for a in parsed.attachments] == ["message/rfc822"]
    # Ordinary mail of the same size is cut in the loop whatever the limit.
    letter = _letter()
    letter.set_content("Compte rendu.\n" * 8000)
    assert mime.parse(_crlf(letter), full_up_to=1024).subject == letter["Subject"]


def test_line_length_check_agrees_with_measuring_every_line():
    """``lines_within`` (DATA's check without splitting the message) answers as measuring each
    CRLF-separated line does: lines at, just under and just over the limit, anywhere in the
    message, bare CRs and LFs inside lines, near its ends."""
    import random

    from monsisra.gateway.smtp import lines_within

    def measured(content: bytes, longest: int) -> bool:
        return max(map(len, content.split(b"\r\n"))) <= longest

    rng = random.Random(1805)
    for longest in (1, 2, 3, 7, 998, 999):
        for _ in range(300):
            parts = [bytes(rng.choice(b"ab\r\n.") for _ in range(rng.choice(
                (0, 1, longest // 2, longest - 1, longest, longest + 1, longest + 2, 2 * longest,
                 rng.randrange(3 * longest + 3))))) for _ in range(rng.randrange(1, 12))]
            content = b"\r\n".join(parts)
            assert lines_within(content, longest) == measured(content, longest), (longest, content)
    letter = b"\r\n".join([b"Subject: x", b""] + [b"A" * 76] * 2000)
    assert lines_within(letter, 999)
    assert not lines_within(letter + b"\r\n" + b"B" * 1000, 999)
    assert lines_within(letter + b"\r\n" + b"B" * 999, 999)
    assert not lines_within(b"B" * 1000 + b"\r\n" + letter, 999)
    assert not lines_within(letter[:5000] + b"C" * 600 + b"\n" + b"C" * 600 + letter[5000:], 999)


@pytest.mark.parametrize("raw", [b"a\rb", b"a\r", b"\r", b"a\r\r\nb", b"\r\r\n", b"a\r\nb\r\nc\r", b"\n\r"])
def test_a_lone_cr_anywhere_leaves_the_message_to_the_full_parser(raw):
    message = b"From: a@autre-operateur.localhost\r\nSubject: x\r\n\r\n" + raw + b"\r\n"
    assert split.cut(message, mime.READ_POLICY) is None
    assert split.cut(message.replace(b"\r", b""), mime.READ_POLICY) is not None


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
@pytest.mark.parametrize("body", [
    base64.encodebytes(os.urandom(3000)),  # clean
    base64.encodebytes(os.urandom(3001)).rstrip(b"=\n") + b"\n",  # padding missing
    b"QUJD\nR*EV\nGR0g=\n",  # a character outside the alphabet
    b"QUJDREVGR0g=\nmore after the padding\n",
    b"QUJ\xe9D\nREVG\n",  # an 8-bit byte
    b"", b"\n", b"=\n", b"A\n",
])
def test_base64_leaves_decode_as_the_library_decodes_them(body, eol):
    raw = _handmade([b"Content-Type: text/plain\n\nVoir piece jointe.",
                     b"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n"
                     b"Content-Disposition: attachment; filename=cr.pdf\n\n" + body], eol=eol)
    ours = split.cut(raw, mime.READ_POLICY)
    assert ours is not None
    theirs = email.message_from_bytes(raw, policy=mime.READ_POLICY)
    leaf, expected = ours.get_payload()[1], theirs.get_payload()[1]
    assert split.decoded_payload(leaf) == expected.get_payload(decode=True)
    assert [type(d) for d in leaf.defects] == [type(d) for d in expected.defects]
    leaf.set_payload("QUJD")  # a payload set later is decoded by the library, not from the cut's bytes
    assert split.decoded_payload(leaf) == b"ABC"
