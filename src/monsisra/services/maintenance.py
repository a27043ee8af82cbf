"""Housekeeping: expired tokens, stale throttling rows, the bins (messages deleted more than 30
days ago), uploads never attached to a message (hourly); and the frequent sweep of what falls due
(tele-expertises past their expected answer time: one reminder each)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from monsisra.domain.clock import utcnow
from monsisra.services import messages, sessions
from monsisra.services.core import Core
from monsisra.store.models import Attachment, LoginThrottle, MessageAttachment, Token

log = logging.getLogger(__name__)
ORPHAN_AFTER = timedelta(hours=24)


@dataclass
class PurgeReport:
    tokens: int = 0
    throttles: int = 0
    uploads: int = 0
    blobs: int = 0
    trashed: int = 0  # deliveries removed from bins after 30 days
    messages: int = 0  # messages no mailbox held any more
    partial_uploads: int = 0
    sessions: int = 0  # dead sockets' rows, long-expired devices and reset links


async def purge(core: Core) -> PurgeReport:
    """Delete what nobody can use any more; a blob goes only when no attachment row names it."""
    now = utcnow()
    report = PurgeReport()
    report.partial_uploads = await asyncio.to_thread(core.blobs.sweep_tmp)
    report.sessions = await sessions.purge(core)
    async with core.write() as tx:
        s = tx.session
        # The bins first: the attachments of the messages they free are orphans just below.
        report.trashed, report.messages = await messages.purge_trash(tx, now)
        report.tokens = (await s.execute(sa.delete(Token).where(Token.expires_at < now - timedelta(days=7)))).rowcount
        report.throttles = (await s.execute(sa.delete(LoginThrottle).where(
            LoginThrottle.window_start < now - timedelta(seconds=core.settings.login_window_seconds * 2),
            sa.or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now)))).rowcount
        orphans = (await s.execute(
            sa.select(Attachment.id, Attachment.sha256)
            .where(Attachment.created_at < now - ORPHAN_AFTER,
                   ~sa.exists().where(MessageAttachment.attachment_id == Attachment.id))
            .limit(10_000))).all()
        if orphans:
            await s.execute(sa.delete(Attachment).where(Attachment.id.in_([o.id for o in orphans])))
        digests = {o.sha256 for o in orphans}
        still_used = set(await s.scalars(sa.select(Attachment.sha256).where(Attachment.sha256.in_(digests)))) \
            if digests else set()
        report.uploads = len(orphans)
    if core.db.is_sqlite:
        # Keep the planner's statistics current (SQLite has no autovacuum/analyze daemon).
        # analysis_limit bounds the work per index, so this stays quick on a large store.
        async with core.write() as tx:
            await tx.session.execute(sa.text("PRAGMA analysis_limit=1000"))
            await tx.session.execute(sa.text("ANALYZE"))
    from monsisra.services.signin import purge_expired  # identity: logins under way, codes, tokens

    await purge_expired(core)
    # Files go after the commit: a crash in between leaves an unreferenced file, never a dangling row.
    for digest in digests - still_used:
        if await _unreferenced_elsewhere(core, digest):
            with contextlib.suppress(FileNotFoundError):
                core.blobs.path(digest).unlink()
                report.blobs += 1
    return report


async def _unreferenced_elsewhere(core: Core, digest: str) -> bool:
    """Other tables (raw inbound mail…) may name blobs too; they register a checker here."""
    for checker in BLOB_REFERENCES:
        if await checker(core, digest):
            return False
    return True


BLOB_REFERENCES: list = []


async def sweep(core: Core) -> dict[str, int]:
    """What falls due by the clock, every few minutes: the overdue tele-expertise reminders."""
    from monsisra.services import teleexpertise

    return {"teleexpertise_reminders": await teleexpertise.remind_overdue(core)}


async def run_periodically(core: Core, every_seconds: float = 3600, sweep_seconds: float = 300) -> None:
    loop = asyncio.get_running_loop()
    next_purge = loop.time()
    while True:
        if loop.time() >= next_purge:
            next_purge = loop.time() + every_seconds
            try:
                report = await purge(core)
                if report.tokens or report.uploads or report.trashed or report.partial_uploads:
                    log.info("purge: %s", report)
            except Exception:
                log.exception("purge failed")
        try:
            done = await sweep(core)
            if any(done.values()):
                log.info("sweep: %s", done)
        except Exception:  # the loop must survive one bad pass
            log.exception("sweep failed")
        await asyncio.sleep(min(sweep_seconds, every_seconds))
