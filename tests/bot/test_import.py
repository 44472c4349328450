"""`dpor-bot subscriptions import`: large files, idempotence, and all-or-nothing refusal of bad files."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select

from storage.models import AuditEvent, Subscription
from tests.processes import dpor_bot, ok, query, refused

HEADER = "id,name,alias"


def guid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def count(url: str, table: type) -> int:
    return query(url, select(func.count()).select_from(table))[0][0]


def test_ten_thousand_rows_import_once_then_change_nothing(database_url: str, tmp_path: Path) -> None:
    rows = [f"{guid(n)},Subscription {n},{f'sub-{n}' if n % 2 else ''}" for n in range(10_000)]
    path = write_csv(tmp_path / "subs.csv", rows)

    started = time.perf_counter()
    first = dpor_bot("subscriptions", "import", str(path), url=database_url, cwd=tmp_path)
    elapsed = time.perf_counter() - started
    print(f"\nimport of 10,000 new subscriptions ({database_url.split(':')[0]}): {elapsed:.2f}s")
    assert ok(first) == "added 10000, updated 0, unchanged 0\n"
    assert count(database_url, Subscription) == 10_000
    assert count(database_url, AuditEvent) == 10_000

    started = time.perf_counter()
    second = dpor_bot("subscriptions", "import", str(path), url=database_url, cwd=tmp_path)
    print(f"re-import of the same file: {time.perf_counter() - started:.2f}s")
    assert ok(second) == "added 0, updated 0, unchanged 10000\n"
    assert count(database_url, Subscription) == 10_000
    assert count(database_url, AuditEvent) == 10_000, "an unchanged row must not be audited again"

    sample = query(
        database_url,
        select(Subscription.id, Subscription.name, Subscription.alias).where(
            Subscription.id.in_([guid(0), guid(9_999)])
        ),
    )
    assert sorted(sample) == [
        (guid(0), "Subscription 0", None),
        (guid(9_999), "Subscription 9999", "sub-9999"),
    ]


def test_one_bad_row_refuses_the_whole_file(database_url: str, tmp_path: Path) -> None:
    lines = [f"{guid(n)},Subscription {n},sub-{n}" for n in range(1, 6)]
    lines[3] = "0000-not-a-guid,Broken,broken"  # line 5 of the file, after the header
    path = write_csv(tmp_path / "bad.csv", lines)

    line = refused(dpor_bot("subscriptions", "import", str(path), url=database_url, cwd=tmp_path))
    assert line.startswith(f"error: {path}, line 5: ")
    assert "0000-not-a-guid" in line
    assert count(database_url, Subscription) == 0
    assert count(database_url, AuditEvent) == 0


def test_a_changed_alias_or_name_is_updated(database_url: str, tmp_path: Path) -> None:
    lines = [f"{guid(n)},Subscription {n},sub-{n}" for n in range(1, 5)]
    path = write_csv(tmp_path / "subs.csv", lines)
    assert ok(dpor_bot("subscriptions", "import", str(path), url=database_url, cwd=tmp_path)) == (
        "added 4, updated 0, unchanged 0\n"
    )

    lines[0] = f"{guid(1)},Subscription 1,prod-eu"
    lines[1] = f"{guid(2)},Subscription 2,"
    lines[2] = f"{guid(3)},Renamed 3,sub-3"
    write_csv(path, [*lines, f"{guid(5)},Subscription 5,sub-1"])  # sub-1 is free now: it moved
    assert ok(dpor_bot("subscriptions", "import", str(path), url=database_url, cwd=tmp_path)) == (
        "added 1, updated 3, unchanged 1\n"
    )
    rows = query(database_url, select(Subscription.id, Subscription.name, Subscription.alias))
    assert sorted(rows) == [
        (guid(1), "Subscription 1", "prod-eu"),
        (guid(2), "Subscription 2", None),
        (guid(3), "Renamed 3", "sub-3"),
        (guid(4), "Subscription 4", "sub-4"),
        (guid(5), "Subscription 5", "sub-1"),
    ]
    updated = query(
        database_url,
        select(AuditEvent.subscription_id).where(AuditEvent.seq > 4).order_by(AuditEvent.seq),
    )
    assert sorted(r[0] for r in updated) == [guid(1), guid(2), guid(3), guid(5)]


def test_an_alias_taken_in_the_database_refuses_the_file(database_url: str, tmp_path: Path) -> None:
    ok(
        dpor_bot(
            "subscriptions",
            "add",
            guid(1),
            "--name",
            "One",
            "--alias",
            "prod",
            url=database_url,
            cwd=tmp_path,
        )
    )
    path = write_csv(tmp_path / "subs.csv", [f"{guid(2)},Two,dev", f"{guid(3)},Three,prod"])

    line = refused(dpor_bot("subscriptions", "import", str(path), url=database_url, cwd=tmp_path))
    assert "prod" in line and guid(1) in line
    assert count(database_url, Subscription) == 1


def test_malformed_files_are_refused_naming_the_line(sqlite_url: str, tmp_path: Path) -> None:
    cases = {
        "name,id,alias\n": "line 1: expected the header row id,name,alias",
        "": "line 1: expected the header row id,name,alias",
        f"{HEADER}\n{guid(1)},One,one\n{guid(2)}\n": "line 3: expected 3 fields, found 1",
        f"{HEADER}\n{guid(1)},One,one\n{guid(1)},Again,\n": (
            f"line 3: subscription {guid(1)} is already on line 2"
        ),
        f"{HEADER}\n{guid(1)},One,same\n\n{guid(2)},Two,same\n": (
            "line 4: alias same is already given on line 2"
        ),
        f"{HEADER}\n{guid(1)}, ,one\n": "line 2: The subscription name is empty.",
        f"{HEADER}\n{guid(1)},One,two words\n": "line 2: An alias is one word",
    }
    for n, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"case{n}.csv"
        path.write_text(text, encoding="utf-8")
        line = refused(dpor_bot("subscriptions", "import", path.name, url=sqlite_url, cwd=tmp_path))
        assert line.startswith(f"error: {path.name}, {expected}"), (text, line)
    assert count(sqlite_url, Subscription) == 0

    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n{guid(1)},Caf\xe9,\n".encode("latin-1"))
    assert "not a UTF-8 CSV file" in refused(
        dpor_bot("subscriptions", "import", path.name, url=sqlite_url, cwd=tmp_path)
    )


def test_a_spreadsheet_export_with_a_byte_order_mark_and_no_alias_column(
    sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    path.write_text(f'\ufeffId,Name\r\n{guid(1)},"Prod, EU"\r\n', encoding="utf-8")
    assert ok(dpor_bot("subscriptions", "import", path.name, url=sqlite_url, cwd=tmp_path)) == (
        "added 1, updated 0, unchanged 0\n"
    )
    assert query(sqlite_url, select(Subscription.name, Subscription.alias)) == [("Prod, EU", None)]
