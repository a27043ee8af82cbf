"""``redaction.redact`` skips its six patterns when a line holds none of what they need (``=``,
``%3D``, a quote, « auth », « cookie », « bearer »): the same answer as trying them all, on lines
with and without secrets and on random lines made of the characters the patterns look for."""

from __future__ import annotations

import random

from monsisra import redaction

LINES = [
    "from 127.0.0.1 <secretariat@autre-operateur.localhost>: 250 2.0.0 <m.0@x> reçu (140640 bytes, 1 recipient(s))",
    "GET /api/v1/events?access_token=abc.def HTTP/1.1",
    "POST /login password=hunter2&user=alice",
    "code%3Dabc%26state%3Dxyz",
    'body {"password": "s3cret", "user": "alice"}',
    "headers: Authorization: Bearer eyJhbGciOi.abc.def",
    "proxy-authorization=Basic YWxhZGRpbjpvcGVu",
    "Set-Cookie: monsisra_session=abc; Path=/",
    "bearer abc123==",
    "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
    "auth plain AGFsaWNl",
    "nothing to see here, just a line: 42",
    "",
]


def test_quick_look_gives_the_answer_of_every_pattern():
    for line in LINES:
        assert redaction.redact(line) == redaction._redact_all(line), line
    assert "hunter2" not in redaction.redact(LINES[2]) and "s3cret" not in redaction.redact(LINES[4])
    alphabet = ["a", "B", " ", "=", "%3d", "%3D", '"', "'", ":", "&", "?", ";", "token", "password", "Auth",
                "AUTH PLAIN ", "Cookie", "bearer ", "authorization", "x", "1", "{", "(", ",", "\n", "%5F"]
    rng = random.Random(18)
    for _ in range(5000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        assert redaction.redact(line) == redaction._redact_all(line), line
