"""The rule that reconciles ops.audit with the registry's aliases (pure: rows in, missing facts out)."""

import datetime as dt

from lakeforge.registry import AuditGap, audit_gaps


def row(minute: int, alias: str, from_version, to_version, status: str, run_id: str = "r1", reason: str = "train: x"):
    return {"changed_at": dt.datetime(2026, 12, 1, 3, minute), "alias": alias, "from_version": from_version,
            "to_version": to_version, "status": status, "run_id": run_id, "reason": reason}


def test_agreeing_registry_and_audit_need_nothing_and_old_rows_count_as_done():
    audit = [row(0, "champion", None, 1, "done"), row(1, "challenger", None, 2, "intended", "r2"),
             row(2, "challenger", None, 2, "done", "r2"), row(3, "champion", 1, 3, "done", "r3")]
    assert audit_gaps({"champion": 3, "challenger": 2}, audit) == []


def test_an_intent_whose_alias_moved_is_completed():
    audit = [row(0, "champion", None, 1, "done"), row(1, "champion", 1, 2, "intended", "r2", "train: gate")]
    assert audit_gaps({"champion": 2}, audit) == [AuditGap(
        "champion", 1, 2, "registry has @champion -> v2, ops.audit said v1; the intent of run r2 (-> v2, train: gate) "
                          "was completed")]


def test_an_intent_whose_alias_never_moved_is_abandoned():
    audit = [row(0, "champion", None, 1, "done"), row(1, "champion", 1, 2, "intended", "r2", "promote: p")]
    assert audit_gaps({"champion": 1}, audit) == [AuditGap(
        "champion", 1, 1, "registry has @champion -> v1, ops.audit said v1; the intent of run r2 (-> v2, promote: p) "
                          "was abandoned")]


def test_a_reconciled_row_closes_earlier_intents_and_outside_changes_are_named():
    audit = [row(0, "champion", 1, 2, "intended", "r2"), row(1, "champion", None, 2, "reconciled", "r3")]
    assert audit_gaps({"champion": 2}, audit) == []
    assert audit_gaps({"champion": 5}, audit) == [AuditGap(
        "champion", 2, 5, "registry has @champion -> v5, ops.audit said v2; changed outside lakeforge "
                          "(no intent recorded)")]
    assert audit_gaps({}, audit) == [AuditGap(
        "champion", 2, None, "registry has no @champion, ops.audit said v2; changed outside lakeforge "
                             "(no intent recorded)")]
