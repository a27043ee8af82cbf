"""Visio on a tele-expertise through the HTTP API and the live socket, on SQLite and PostgreSQL:
« Lancer une visio » rings the requester and the expert side (every member of an expert service,
then only the member who took it in charge), anyone on neither side gets 404, and the call is
written on the request's exchange (start, end, participants, duration) and on the patient record."""

from __future__ import annotations

import json
import time

from tests.test_realtime import next_event
from tests.test_teleexpertise import expert_service, fresh_ins, payload, problem, requester
from tests.test_video import _ws


def _events_until(ws, last: str, count: int, timeout: float = 10.0) -> list[dict]:
    """Every event up to and including the ``count``-th of type ``last`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    out: list[dict] = []
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"not {count} {last!r} events within {timeout}s: {[e['type'] for e in out]}"
        out.append(json.loads(ws.recv(timeout=remaining)))
        if sum(e["type"] == last for e in out) == count:
            return out


def test_teleexpertise_call_rings_both_sides_refuses_outsiders_and_is_recorded(server, make_user):
    address, _box, (m1, m2) = expert_service(server, make_user)
    r, _ = requester(server, make_user)
    outsider, _ = requester(server, make_user)
    created = r.post("/api/v1/teleexpertises", json=payload(address, fresh_ins()))
    assert created.status_code == 201, created.text
    te = created.json()

    # Not yet taken in charge: every member of the expert service is rung.
    with _ws(server, m1) as w1, _ws(server, m2) as w2:
        for w in (w1, w2):
            next_event(w, "hello")
        started = r.post(f"/api/v1/teleexpertises/{te['id']}/calls")
        assert started.status_code == 201, started.text
        call = started.json()
        assert {"id", "ice_servers"} <= call.keys() and isinstance(call["ice_servers"], list)
        for w in (w1, w2):
            ring = next_event(w, "call.ring")
            assert ring["call_id"] == call["id"] and ring["context"] == "teleexpertise"
            assert ring["context_id"] == te["id"] and "Faure".upper() in ring["title"]

    # Anyone on neither side: 404 everywhere, nothing revealed, nothing written.
    assert "introuvable" in problem(outsider.post(f"/api/v1/teleexpertises/{te['id']}/calls"), 404)["detail"]
    for verb in ("join", "decline", "leave", "end"):  # the same answer as for a call that does not exist
        assert problem(outsider.post(f"/api/v1/calls/{call['id']}/{verb}"), 404)["detail"] == "visio introuvable"
    assert problem(outsider.get(f"/api/v1/calls/{call['id']}"), 404)["detail"] == "visio introuvable"
    assert problem(outsider.post("/api/v1/calls/99999999/join"), 404)["detail"] == "visio introuvable"
    problem(outsider.post(f"/api/v1/calls/{call['id']}/signal", json={"to": "x" * 30, "kind": "candidate",
                                                                     "candidate": None}), 404)
    problem(r.post("/api/v1/teleexpertises/99999999/calls"), 404)
    assert r.post(f"/api/v1/teleexpertises/{te['id']}/calls").json()["id"] == call["id"]  # the same call

    # Both sides join; the requester leaves, the expert ends: recorded on the exchange.
    jr = r.post(f"/api/v1/calls/{call['id']}/join")
    assert jr.status_code == 200, jr.text
    j2 = m2.post(f"/api/v1/calls/{call['id']}/join").json()
    assert [m["peer"] for m in j2["members"]] == [jr.json()["peer"]]
    r.post(f"/api/v1/calls/{call['id']}/leave")
    assert m2.post(f"/api/v1/calls/{call['id']}/end").json() == {"id": call["id"], "ended": True}
    steps = [s for s in r.get(f"/api/v1/teleexpertises/{te['id']}").json()["steps"] if s["action"] == "visio"]
    assert len(steps) == 2 and steps[0]["body"].endswith("a lancé une visio.")
    end = steps[1]["body"]
    assert end.startswith("Visio terminée — durée") and "Requérante" in end and "Expert1" in end
    assert "Expert0" not in end  # rung, did not join

    # On the patient record (for the care team), with who took part and how long.
    pid = te["patient"]["id"]
    assert r.put(f"/api/v1/patients/{pid}/care-team/me").status_code == 200
    items = r.get(f"/api/v1/patients/{pid}/record").json()["items"]
    entry = next(i for i in items if i["kind"] == "call" and i["id"] == call["id"])
    assert entry["title"].startswith("Visio : Téléexpertise") and "Durée" in entry["summary"]
    assert len(entry["participants"]) == 2

    # Taken in charge by m2: a new call rings m2 only, not m1 (m1 still hears the request's updates
    # at the call's start and end, around the ring: its absence is read in order, not waited for).
    assert m2.post(f"/api/v1/teleexpertises/{te['id']}/assign").status_code == 200
    with _ws(server, m1) as w1, _ws(server, m2) as w2:
        for w in (w1, w2):
            next_event(w, "hello")
        again = r.post(f"/api/v1/teleexpertises/{te['id']}/calls").json()
        assert again["id"] != call["id"]
        assert next_event(w2, "call.ring")["call_id"] == again["id"]
        r.post(f"/api/v1/calls/{again['id']}/end")
        seen = _events_until(w1, "teleexpertise.updated", 2)  # the call's start and end steps
        assert not [e for e in seen if e["type"] == "call.ring"], seen

    # The kind filter of the record knows calls.
    kinds = {i["kind"] for i in r.get(f"/api/v1/patients/{pid}/record", params={"kind": "call"}).json()["items"]}
    assert kinds == {"call"}

    # A request that has ended takes no new call (409 in French); nothing is started.
    assert r.post(f"/api/v1/teleexpertises/{te['id']}/cancel").status_code == 200
    refused = problem(r.post(f"/api/v1/teleexpertises/{te['id']}/calls"), 409)
    assert "annulée" in refused["detail"]
    steps = [s for s in r.get(f"/api/v1/teleexpertises/{te['id']}").json()["steps"] if s["action"] == "visio"]
    assert len(steps) == 4  # the two calls' starts and ends, no more
