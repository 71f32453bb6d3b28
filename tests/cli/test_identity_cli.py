"""``coffre person`` and ``coffre reconcile`` on the demo territory (loaded once per
module by the real console script, copied for each test). The commands run in-process
through Click's runner on the real application and data folder (a process start costs
seconds; one test runs the console script itself)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coffre.cli import app
from coffre.services.demo import CLAIRE_MARTIN_INS

COFFRE = str(Path(sys.executable).with_name("coffre"))
ENV = {"COLUMNS": "250", "NO_COLOR": "1", "COFFRE_STORAGE_FSYNC": "false"}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    #: an exception that escaped the command (not a clean exit)
    crash: BaseException | None = None


Run = Callable[..., Result]


def _process(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COFFRE, *args, "--data", str(data)], capture_output=True, text=True,
                          env=dict(os.environ, **ENV), timeout=300)


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("demo") / "data"
    out = _process(data, "demo")
    assert out.returncode == 0, out.stderr
    return data


@pytest.fixture
def data(demo_template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(demo_template, copy)
    return copy


@pytest.fixture
def coffre(data: Path) -> Run:
    runner = CliRunner()

    def run(*args: str) -> Result:
        result = runner.invoke(app, [*args, "--data", str(data)], env=ENV)
        crash = None if result.exception is None or isinstance(result.exception, SystemExit) else result.exception
        return Result(result.exit_code, result.stdout, result.stderr, crash)

    return run


def ok(out: Result) -> str:
    assert out.returncode == 0 and out.crash is None, out.stdout + out.stderr + repr(out.crash)
    return out.stdout


def as_json(out: Result):  # type: ignore[no-untyped-def]
    return json.loads(ok(out))


def assert_clean_error(out: Result, *words: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert out.crash is None and "Traceback" not in text, text + repr(out.crash)
    for word in words:
        assert word.lower() in " ".join(text.lower().split()), f"{word!r} not in:\n{text}"


def person_of(coffre: Run, identity: str) -> dict:
    [found] = as_json(coffre("person", "search", "--identity", identity, "--json"))
    return found


def test_demo_identities(coffre: Run) -> None:
    claire = person_of(coffre, "chu-nord:CN100234")
    assert claire["ins"] == CLAIRE_MARTIN_INS
    assert sorted((i["facility"], i["patient_id"]) for i in claire["identities"]) == [
        ("chu-nord", "CN100234"), ("clinique-sud", "CS-77812")]
    pierre, sophie = person_of(coffre, "chu-nord:100200"), person_of(coffre, "imagerie-est:100200")
    assert pierre["id"] != sophie["id"]
    [candidate] = as_json(coffre("reconcile", "list", "--json"))
    assert candidate["identity"]["patient_id"] == "IE-6120" and candidate["score"] == 100
    assert [i["patient_id"] for i in candidate["person"]["identities"]] == ["CS-10001"]
    table = ok(coffre("reconcile", "list"))
    assert "imagerie-est:IE-6120" in table and "BERNARD^LUC" in table
    listed = as_json(coffre("person", "list", "--json"))
    assert len(listed) == 6
    assert "CN100234" in ok(coffre("person", "list", "--facility", "chu-nord"))


def test_search_show_history(coffre: Run) -> None:
    found = as_json(coffre("person", "search", "--name", "martin", "--birth-date", "19680412", "--json"))
    assert [len(p["identities"]) for p in found] == [2]
    pid = str(found[0]["id"])
    assert as_json(coffre("person", "search", "--ins", CLAIRE_MARTIN_INS, "--json"))[0]["id"] == found[0]["id"]
    shown = ok(coffre("person", "show", pid))
    assert "CS-77812" in shown and CLAIRE_MARTIN_INS in shown
    history = as_json(coffre("person", "history", pid, "--json"))
    assert [e["action"] for e in history] == ["create", "link"]
    assert history[1]["evidence"]["rule"] == "ins" and history[1]["actor"] == "system:demo"
    assert "qualified INS match" in ok(coffre("person", "history", pid))
    assert "no person" in ok(coffre("person", "search", "--name", "NOBODY"))


def test_reconcile_link_then_unlink(coffre: Run) -> None:
    [candidate] = as_json(coffre("reconcile", "list", "--json"))
    target = candidate["person"]["id"]
    out = ok(coffre("reconcile", "link", str(candidate["id"]), "--reason", "same patient, checked"))
    assert f"is with person {target}" in out
    assert person_of(coffre, "imagerie-est:IE-6120")["id"] == target
    assert "no open candidate" in ok(coffre("reconcile", "list"))
    assert len(as_json(coffre("reconcile", "list", "--status", "linked", "--json"))) == 1
    assert_clean_error(coffre("reconcile", "reject", str(candidate["id"]), "--reason", "r"), "already linked")
    out = ok(coffre("person", "unlink", "--identity", "imagerie-est:IE-6120", "--reason", "undo"))
    assert "new person" in out
    assert person_of(coffre, "imagerie-est:IE-6120")["id"] != target


def test_reconcile_reject(coffre: Run) -> None:
    [candidate] = as_json(coffre("reconcile", "list", "--json"))
    ok(coffre("reconcile", "reject", str(candidate["id"]), "--reason", "different people"))
    assert as_json(coffre("reconcile", "list", "--json")) == []
    [rejected] = as_json(coffre("reconcile", "list", "--status", "rejected", "--json"))
    assert rejected["decided_by"] == "system:cli"


def test_link_merge_split(coffre: Run, data: Path) -> None:
    pierre = person_of(coffre, "chu-nord:100200")["id"]
    emma = person_of(coffre, "imagerie-est:IE-5521")["id"]
    ok(coffre("person", "link", "--identity", "imagerie-est:IE-5521", "--to", str(pierre), "--reason", "test"))
    assert person_of(coffre, "imagerie-est:IE-5521")["id"] == pierre
    ok(coffre("person", "link", "--identity", "imagerie-est:IE-5521", "--to", str(emma), "--reason", "undo"))
    sophie = person_of(coffre, "imagerie-est:100200")["id"]
    assert f"person {sophie} merged into person {pierre}" in ok(
        coffre("person", "merge", str(pierre), str(sophie), "--reason", "test merge"))
    merged = as_json(coffre("person", "show", str(sophie), "--json"))[0]
    assert merged["merged_into"] == pierre and merged["identities"] == []
    out = ok(coffre("person", "split", str(sophie), "--reason", "undo merge"))
    assert "1 identities restored" in out
    assert person_of(coffre, "imagerie-est:100200")["id"] == sophie
    # every change is audited with its reason
    with sqlite3.connect(data / "index.sqlite3") as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit_event WHERE action IN "
            "('identity-link','person-merge','person-split') ORDER BY id")]
        reasons = [json.loads(r[0])["reason"] for r in conn.execute(
            "SELECT detail FROM audit_event WHERE action = 'person-merge'")]
    assert actions == ["identity-link", "identity-link", "person-merge", "person-split"]
    assert reasons == ["test merge"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("person", "show", "999999"), ["person not found"]),
        (("person", "show", str(10**30)), ["person not found"]),
        (("person", "history", "999999"), ["person not found"]),
        (("person", "show", "abc"), ["invalid"]),
        (("person", "search"), ["give a name"]),
        (("person", "search", "--ins", "268047512345600"), ["valid key"]),
        (("person", "search", "--birth-date", "1968"), ["YYYYMMDD"]),
        (("person", "search", "--name", "X" * 300), ["longer than"]),
        (("person", "search", "--identity", "nowhere:X"), ["no facility"]),
        (("person", "link", "--identity", "no-colon", "--to", "1", "--reason", "r"), ["FACILITY:PATIENTID"]),
        (("person", "link", "--identity", "chu-nord:NOPE", "--to", "1", "--reason", "r"), ["not found"]),
        (("person", "link", "--identity", "chu-nord:100200", "--to", "999999", "--reason", "r"), ["not found"]),
        (("person", "link", "--identity", "chu-nord:100200", "--to", "1", "--reason", "  "), ["reason"]),
        (("person", "link", "--identity", "chu-nord:100200", "--to", "1"), ["--reason"]),
        (("person", "unlink", "--identity", "chu-nord:100200", "--reason", "r"), ["only one"]),
        (("person", "merge", "1", "1", "--reason", "r"), ["itself"]),
        (("person", "merge", "1", "999999", "--reason", "r"), ["not found"]),
        (("person", "split", "1", "--reason", "r"), ["not merged"]),
        (("reconcile", "link", "999999", "--reason", "r"), ["candidate not found"]),
        (("reconcile", "list", "--status", "maybe"), ["status"]),
        (("reconcile", "list", "--limit", "0"), ["limit"]),
    ],
)
def test_errors_are_clean(coffre: Run, args: tuple[str, ...], words: list[str]) -> None:
    assert_clean_error(coffre(*args), *words)


def test_the_console_script_runs_the_commands(data: Path) -> None:
    out = _process(data, "person", "search", "--ins", CLAIRE_MARTIN_INS, "--json")
    assert out.returncode == 0, out.stderr
    [claire] = json.loads(out.stdout)
    assert {i["patient_id"] for i in claire["identities"]} == {"CN100234", "CS-77812"}
    missing = _process(data, "person", "show", "999999")
    assert missing.returncode == 1 and "person not found" in missing.stderr and "Traceback" not in missing.stderr
