"""Point-in-time recovery's pure parts: what the archive's state means, how pgBackRest is asked and answered,
which restores name a time, and the first point of recoverability."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli.backups import _point_in_time
from controller.clients.pgbackrest import Repository, parse_info, restore_arguments
from controller.clients.s3 import S3Server
from controller.errors import PermanentError
from controller.loop import backups as decide
from controller.loop.backups import ArchiverState, RunRecord
from schemas.backups import BackupPhase, BackupTrigger, RestoreSpec
from schemas.base import RuleViolation
from schemas.platform import PointInTimeArchive
from schemas.project import BackupTarget
from schemas.status import WalArchiveStatus

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def working(**changes: object) -> ArchiverState:
    status = WalArchiveStatus(last_archived_wal="000000010000000000000009", last_archived_at=NOW, base_backups=1,
                              oldest_base_backup_at=NOW - timedelta(days=1))  # fmt: skip
    return ArchiverState(**{"reachable": True, "mode": "on", "archived": 9, "status": status, **changes})  # type: ignore[arg-type]


def test_working_archiving_is_no_trouble() -> None:
    assert decide.archiving_trouble(working()) is None


@pytest.mark.parametrize(
    ("state", "reason", "says"),
    [
        (working(reachable=False, error="refused"), "ArchivingUnknown", "refused"),
        (working(mode="off"), "ArchivingOff", "archive_mode"),
        (working(status=WalArchiveStatus(last_archived_wal="00000001000000000000000A", last_archived_at=NOW,
                                         last_failed_wal="00000001000000000000000B",
                                         last_failed_at=NOW + timedelta(seconds=5), base_backups=1)),
         "ArchivingStalled", "00000001000000000000000B failed to archive"),
        (working(status=WalArchiveStatus(last_failed_wal="000000010000000000000001", last_failed_at=NOW)),
         "ArchivingStalled", "none has been archived yet"),
        (working(info_error="pgBackRest info failed: ERROR: [039]"), "ArchiveUnreadable", "[039]"),
        (working(status=WalArchiveStatus(last_archived_at=NOW, base_backups=0)), "NoBaseBackup", "pgbackrest backup"),
    ],
)  # fmt: skip
def test_archiving_trouble_names_what_is_wrong(state: ArchiverState, reason: str, says: str) -> None:
    found = decide.archiving_trouble(state)
    assert found is not None and found[0] == reason and says in found[1], found


def test_a_failure_followed_by_an_archived_wal_is_over() -> None:
    status = WalArchiveStatus(last_archived_wal="00000001000000000000000C", last_archived_at=NOW,
                              last_failed_wal="00000001000000000000000B", last_failed_at=NOW - timedelta(seconds=30),
                              base_backups=2)  # fmt: skip
    assert decide.archiving_trouble(working(status=status)) is None


def test_info_is_read_for_the_stanza_and_its_good_backups_only() -> None:
    raw = json.dumps([
        {"name": "other", "backup": [{"timestamp": {"start": 1, "stop": 2}}]},
        {"name": "codeb", "archive": [{"max": "000000010000000000000003"}, {"max": "000000020000000000000001"}],
         "backup": [{"timestamp": {"start": 1796358849, "stop": 1796358859}},
                    {"timestamp": {"start": 1796358000, "stop": 1796358100}, "error": True},
                    {"timestamp": {"start": 1796400000, "stop": 1796400010}},
                    {"timestamp": {"stop": "not a number"}}, "not an object"]},
    ]).encode()  # fmt: skip
    found = parse_info(raw, "codeb")
    assert found.base_backups == 2 and found.newest_wal == "000000020000000000000001"
    assert found.oldest_backup_at == datetime.fromtimestamp(1796358859, UTC)
    assert found.newest_backup_at == datetime.fromtimestamp(1796400010, UTC)
    assert parse_info(b"[]", "codeb").base_backups == 0


def test_restore_arguments_recover_to_the_moment_in_utc_and_archive_nothing() -> None:
    moment = datetime(2026, 12, 4, 19, 30, 1, 250000, tzinfo=UTC) + timedelta(hours=0)
    args = restore_arguments(moment.astimezone(), Path("/side/data"))
    assert "--target=2026-12-04 19:30:01.250000+00" in args and "--type=time" in args
    assert "--archive-mode=off" in args and "--target-action=promote" in args and "--pg1-path=/side/data" in args


def test_the_repository_needs_tls_and_keeps_its_secret_out_of_argv(tmp_path: Path) -> None:
    plain = Repository(S3Server("store:9000", "root", "s3cret"), "codeb-backups", PointInTimeArchive())
    with pytest.raises(PermanentError) as refused:
        plain.environment(tmp_path)
    assert refused.value.reason == "ArchiveStoreNotTls"
    ca = "-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n"
    secure = Repository(S3Server("store.internal:9000", "root", "s3cret", True), "codeb-backups",
                        PointInTimeArchive(stanza="main", repo_path="/pitr"))  # fmt: skip
    secure.server.ca_pem = ca  # a PEM the client would parse; only its copy to a file is checked here
    env = secure.environment(tmp_path)
    assert env["PGBACKREST_REPO1_S3_ENDPOINT"] == "store.internal" and env["PGBACKREST_REPO1_STORAGE_PORT"] == "9000"
    assert env["PGBACKREST_STANZA"] == "main" and env["PGBACKREST_REPO1_PATH"] == "/pitr"
    assert env["PGBACKREST_REPO1_S3_KEY_SECRET"] == "s3cret"
    assert Path(env["PGBACKREST_REPO1_STORAGE_CA_FILE"]).read_text() == ca


def test_a_restore_names_a_backup_or_a_time_not_both() -> None:
    RestoreSpec(project="shop", backup="shop-database-1")
    RestoreSpec(project="shop", target_time=NOW)
    for spec in ({"project": "shop"}, {"project": "shop", "backup": "b", "targetTime": NOW.isoformat()}):
        with pytest.raises((RuleViolation, ValueError)):
            RestoreSpec.model_validate(spec)


def _args(to: str, into: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(project="shop", to=to, into=into)


def test_codeb_restore_goes_to_the_moment_only_with_walarchiving_into_itself() -> None:
    archiving = {"backup": {"walArchiving": True}}
    backups = [{"metadata": {"name": "shop-database-20261204-0300"}}]
    moment = _point_in_time(_args("2026-12-04T09:30:00Z"), archiving, backups)
    assert moment == datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
    assert _point_in_time(_args("2026-12-04T09:30:00"), archiving, backups) == moment  # UTC unless said
    assert _point_in_time(_args("2026-12-04T09:30:00Z"), {"backup": {}}, backups) is None  # dumps only
    assert _point_in_time(_args("2026-12-04T09:30:00Z", into="staging"), archiving, backups) is None
    assert _point_in_time(_args("shop-database-20261204-0300"), archiving, backups) is None  # a Backup named


def test_a_base_backup_older_than_every_dump_is_the_first_point_of_recoverability() -> None:
    dumped = RunRecord(name="shop-database-1", target=BackupTarget.database, trigger=BackupTrigger.Scheduled,
                       phase=BackupPhase.Succeeded, created_at=NOW, started_at=NOW)  # fmt: skip
    older = WalArchiveStatus(base_backups=1, oldest_base_backup_at=NOW - timedelta(days=2))
    assert decide.summary([dumped], None, older).first_recoverability_point == NOW - timedelta(days=2)
    assert decide.summary([dumped], None, None).first_recoverability_point == NOW
    assert decide.summary([], None, older).first_recoverability_point == NOW - timedelta(days=2)
