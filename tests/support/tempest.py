"""Run Tempest's volume API suite against a blockyard server and read back each test's result.

A workspace (etc/tempest.conf, etc/accounts.yaml, .stestr.conf) is written into a directory of
the caller's; `tempest run --subunit` runs there and its subunit v2 stream is parsed into one
`Outcome` per test. The configuration is the one real Cinder 29 passes the reference list with
(tests/tempest_reference/), with the deployment facts (`backend_names`, `storage_protocol`,
`vendor_name`) taken from what the service reports in `scheduler-stats/get_pools`.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import subunit
import tempest
import testtools

HERE = Path(__file__).resolve().parents[1] / "tempest_reference"
CONF_TEMPLATE = HERE / "tempest.conf"
ACCOUNTS = HERE / "accounts.yaml"
PASS_LIST = HERE / "pass_on_real_cinder_29.txt"
#: tests left out of the run, with why (they fail on real Cinder too and leak resources)
EXCLUDE_LIST = HERE / "exclude.txt"
#: Tempest's command line (what its `tempest` console script runs), with this interpreter
TEMPEST = [sys.executable, "-m", "tempest.cmd.main"]
VOLUME_TESTS = Path(tempest.__file__).parent / "api" / "volume"
#: how much of a traceback a failing item shows (Tempest's own text, tail kept)
EXCERPT = 6000
#: `setUpClass (tempest.api.volume.x.Class)`: how a class whose set-up failed is reported
_CLASS_FIXTURE = re.compile(r"^(setUpClass|tearDownClass) \((?P<cls>[\w.]+)\)$")


def reference_tests() -> list[str]:
    """The tests real Cinder 29 passes with this configuration (tests/tempest_reference/)."""
    return [line.strip() for line in PASS_LIST.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def deployment_facts(pools: list[dict[str, Any]]) -> dict[str, str]:
    """`[volume]` options Tempest compares with the service's own stats, from `get_pools`."""
    caps = [p["capabilities"] for p in pools]
    names = sorted({c["volume_backend_name"] for c in caps})
    return {"backend_names": ",".join(names),
            "storage_protocol": caps[0]["storage_protocol"],
            "vendor_name": caps[0]["vendor_name"]}


def write_workspace(root: Path, *, identity_uri: str, facts: dict[str, str],
                    admin: dict[str, str] | None = None) -> Path:
    """etc/tempest.conf + etc/accounts.yaml + .stestr.conf under `root`; returns the conf path.

    With `admin` (username, password, project_name of a Keystone admin), Tempest makes its
    own projects and users for every test class (dynamic credentials, with the roles each
    test asks for) instead of using the pre-provisioned accounts.
    """
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    conf = configparser.ConfigParser()
    conf.optionxform = str  # type: ignore[assignment,method-assign]
    conf.read(CONF_TEMPLATE)
    conf["identity"]["uri_v3"] = identity_uri
    if admin is None:
        shutil.copy(ACCOUNTS, etc / "accounts.yaml")
        conf["auth"]["test_accounts_file"] = str(etc / "accounts.yaml")
    else:
        del conf["auth"]["test_accounts_file"]
        conf["auth"].update({
            "use_dynamic_credentials": "true",
            "admin_username": admin["username"],
            "admin_password": admin["password"],
            "admin_project_name": admin["project_name"],
            "admin_domain_name": "Default",
        })
        conf["identity"]["admin_role"] = "admin"
    conf["DEFAULT"]["log_dir"] = str(root / "logs")
    conf["oslo_concurrency"] = {"lock_path": str(root / "locks")}
    for key, value in facts.items():
        conf["volume"][key] = value
    (root / "logs").mkdir(exist_ok=True)
    (root / "locks").mkdir(exist_ok=True)
    path = etc / "tempest.conf"
    with path.open("w") as f:
        conf.write(f)
    # discover only the volume tests (ids stay `tempest.api.volume....`): far fewer imports
    # than Tempest's own test_discover, in the lister and in every worker
    (root / ".stestr.conf").write_text(
        f"[DEFAULT]\ntest_path={VOLUME_TESTS}\ntop_dir={VOLUME_TESTS.parents[2]}\n"
        "group_regex=([^\\.]*\\.)*\n")
    return path


@dataclass
class Outcome:
    """One test as subunit reported it: status is success, fail, skip, xfail, ..."""

    test_id: str
    status: str
    details: str = ""
    seconds: float = 0.0


@dataclass
class Run:
    """The results of one `tempest run`, by test id (without Tempest's `[id-...]` tags)."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    #: `setUpClass`/`tearDownClass` failures, by the class's dotted path
    class_errors: dict[str, Outcome] = field(default_factory=dict)
    returncode: int = 0
    seconds: float = 0.0
    stderr: str = ""

    def counts(self) -> dict[str, int]:
        """passed/failed/skipped over the tests themselves."""
        return _tally(self.outcomes.values())

    def class_counts(self) -> dict[str, int]:
        """The same over setUpClass/tearDownClass (a skipped class reports its set-up only)."""
        return _tally(self.class_errors.values())

    def outcome(self, test_id: str) -> Outcome | None:
        """This test's result, or its class's set-up failure when it never ran."""
        if test_id in self.outcomes:
            return self.outcomes[test_id]
        cls = test_id.rsplit(".", 1)[0]
        err = self.class_errors.get(cls)
        if err is not None and err.test_id.startswith("setUpClass"):
            return err
        return None


def _tally(outcomes: Iterable[Outcome]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "skipped": 0}
    for o in outcomes:
        out[{"success": "passed", "skip": "skipped"}.get(o.status, "failed")] += 1
    return out


def plain_id(test_id: str) -> str:
    """`tempest.x.Class.test_y[id-...,smoke]` → `tempest.x.Class.test_y`."""
    return test_id.split("[", 1)[0]


def parse_subunit(stream: Iterable[bytes] | Any) -> Run:
    """Read a subunit v2 byte stream (a binary file) into a `Run`."""
    run = Run()

    def on_test(test: Any) -> None:
        details = test.get("details", {})
        text = "\n".join(b"".join(content.iter_bytes()).decode("utf-8", "replace")
                          for name, content in details.items()
                          if name in ("traceback", "reason"))
        start, stop = test.get("timestamps", (None, None))
        seconds = (stop - start).total_seconds() if start and stop else 0.0
        outcome = Outcome(plain_id(test["id"]), test["status"], text, seconds)
        fixture = _CLASS_FIXTURE.match(outcome.test_id)
        if fixture:
            run.class_errors[fixture["cls"]] = outcome
        elif outcome.status not in ("exists", "inprogress"):
            run.outcomes[outcome.test_id] = outcome

    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    try:
        subunit.ByteStreamToStreamResult(stream, non_subunit_name="stdout").run(result)
    finally:
        result.stopTestRun()
    return run


def run_tempest(workspace: Path, conf: Path, *, regex: str, concurrency: int = 2,
                timeout: float = 3600.0, exclude: Path | None = EXCLUDE_LIST) -> Run:
    """`tempest run --subunit` in `workspace`; the stream is kept there as results.subunit.
    `exclude`: a file of regexes of tests left out (None: none)."""
    stream_path = workspace / "results.subunit"
    env = dict(os.environ, TEMPEST_CONFIG_DIR=str(conf.parent), TEMPEST_CONFIG=conf.name)
    started = time.monotonic()
    with stream_path.open("wb") as out, (workspace / "tempest-run.stderr").open("wb") as err:
        proc = subprocess.run(
            [*TEMPEST, "run", "--config-file", str(conf), "--regex", regex,
             *(["--exclude-list", str(exclude)] if exclude else []),
             "--concurrency", str(concurrency), "--subunit"],
            cwd=workspace, env=env, stdout=out, stderr=err, timeout=timeout, check=False)
    with stream_path.open("rb") as f:
        run = parse_subunit(f)
    run.returncode = proc.returncode
    run.seconds = time.monotonic() - started
    run.stderr = (workspace / "tempest-run.stderr").read_text(errors="replace")
    return run


def print_report(config: Any, run: Run, *, label: str, facts: dict[str, str], workspace: Path,
                 server_log: Path, reference: list[str]) -> None:
    """The run's counts on the terminal, whatever pytest captures (`config`: pytest's)."""
    counts = run.counts()
    passed = sum(1 for t in reference
                 if (o := run.outcomes.get(t)) is not None and o.status == "success")
    fixtures = run.class_counts()
    not_run = [t for t in reference if run.outcome(t) is None]
    lines = [
        f"{label} ({', '.join(f'{k}={v}' for k, v in facts.items())}): "
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(+ {fixtures['skipped']} classes skipped, {fixtures['failed']} class set-ups/"
        f"tear-downs failed) in {run.seconds:.0f}s (tempest exit {run.returncode}); "
        f"reference list: {passed}/{len(reference)} passed",
        *(f"  {o.test_id}: {o.status}" for o in run.class_errors.values()
          if o.status not in ("success", "skip")),
        *(f"  reference test skipped: {t}: {last_line(o.details)}" for t in reference
          if (o := run.outcome(t)) is not None and o.status == "skip"),
        *(f"  reference test failed: {t}: {last_line(o.details)[:200]}" for t in reference
          if (o := run.outcome(t)) is not None and o.status not in ("skip", "success")),
        *(f"  reference test not run: {t}" for t in not_run[:10]),
        *([f"  ... and {len(not_run) - 10} more not run"] if len(not_run) > 10 else []),
        f"  workspace {workspace} (results.subunit, logs/tempest.log); server log "
        f"{server_log}",
    ]
    text = "\n".join(lines)
    worker_output = getattr(config, "workeroutput", None)
    if worker_output is not None:  # a pytest-xdist worker: the controller prints it (conftest)
        earlier = worker_output.get("tempest_report")
        worker_output["tempest_report"] = f"{earlier}\n{text}" if earlier else text
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + text, flush=True)


def require_success(run: Run, test_id: str) -> None:
    """Fail the calling pytest item unless `test_id` passed in `run` (not failed, skipped or
    missing), with Tempest's own traceback."""
    import pytest

    outcome = run.outcome(test_id)
    if outcome is None:
        pytest.fail(f"{test_id} did not run (tempest exit {run.returncode})\n"
                    f"{run.stderr[-2000:]}", pytrace=False)
    if outcome.status != "success":
        pytest.fail(f"{outcome.test_id}: {outcome.status}\n{excerpt(outcome.details)}",
                    pytrace=False)


def last_line(text: str) -> str:
    """The last non-blank line (an exception's message, a skip reason)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no reason given)"


def excerpt(traceback: str) -> str:
    """Tempest's traceback without the frames of its test framework (testtools), and with
    its tail kept when it is long."""
    kept: list[str] = []
    skipping = False
    for line in traceback.splitlines():
        if line.startswith("  File "):
            skipping = "/testtools/" in line
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)[-EXCERPT:]


def report(run: Run) -> str:
    """The reference tests' results as markdown, grouped by Tempest module, failures first
    with the last line of their reason."""
    by_module: dict[str, list[str]] = {}
    for test_id in reference_tests():
        outcome = run.outcome(test_id)
        module, cls, method = test_id.removeprefix("tempest.api.volume.").rsplit(".", 2)
        name = f"{cls}.{method}"
        if outcome is None:
            line = f"- NOT RUN {name}"
        elif outcome.status == "success":
            line = f"- pass {name}"
        else:
            reason = last_line(outcome.details)[:300]
            line = f"- **{outcome.status.upper()}** {name}: `{reason}`"
        by_module.setdefault(module, []).append(line)
    out: list[str] = []
    for module, lines in sorted(by_module.items()):
        out.append(f"\n### {module}\n")
        out.extend(sorted(lines, key=lambda ln: ln.startswith("- pass")))
    return "\n".join(out)


if __name__ == "__main__":
    # python -m tests.support.tempest WORKSPACE/results.subunit: the reference list's results
    with open(sys.argv[1], "rb") as stream:
        parsed = parse_subunit(stream)
    counts = parsed.counts()
    passed = sum(1 for t in reference_tests()
                 if (o := parsed.outcome(t)) is not None and o.status == "success")
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; "
          f"reference list: {passed}/{len(reference_tests())} passed")
    print(report(parsed))
