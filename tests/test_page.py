"""The run page (``report.html``): written by the driver and by the page
command, checked in a real browser (headless Chromium, skipped with the
reason when it is not installed), cheap for large runs, safe with hostile
names and logs."""

from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from lsst.ctrl.bps import WmsStates
from lsst.ctrl.bps.parsl.records import JobRow
from lsst.ctrl.bps.parsl.report import page
from lsst.ctrl.bps.parsl.store.runstore import FAILED, SUCCEEDED, RunStore, db_path
from synthetic import job, make_config, run, workflow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOCAL2 = {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}}
SECRET = "s3cr3t-value-of-the-environment"
HOSTILE = "<script>alert('x')</script>&amp;\u202e"


class _Dom(html.parser.HTMLParser):
    """Collect the counts of the label table, the timeline bars and a few
    markers from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[tuple[str, str], int] = {}
        self.bars: dict[str, int] = {}
        self.scripts = 0
        self.root: dict[str, str | None] = {}
        self.local_times = 0
        self.failures: list[str] = []
        self._row: str | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.root = values
        elif tag == "script":
            self.scripts += 1
        elif tag == "tr":
            self._row = values.get("data-label") or ("*" if values.get("id") == "totals" else None)
        elif tag == "td" and self._row is not None and values.get("data-state"):
            self._cell = values["data-state"]
        elif tag == "rect" and values.get("class"):
            self.bars[values["class"]] = self.bars.get(values["class"], 0) + 1
        elif tag == "time" and values.get("data-local") == "1":
            self.local_times += 1
        elif tag == "div" and values.get("class") == "failure":
            self.failures.append(values.get("data-job") or "")

    def handle_data(self, data: str) -> None:
        if self._cell is not None and self._row is not None:
            self.counts[(self._row, self._cell)] = int(data)
            self._cell = None


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _mixed_run(submit: Path, tmp_path: Path) -> None:
    """A real run on the local site: 3 successes, a job that fails once then
    succeeds, a failure (hostile stderr) and the job it prunes."""
    flag = tmp_path / "flaky.flag"
    jobs = [
        job("ok1", "sleep 0.2", label="ok"),
        job("ok2", "sleep 0.3", label="ok"),
        job("ok3", "true", label="ok", environment={"PAGE_SECRET": SECRET}),
        job("flaky", f"test -e {flag} || {{ touch {flag}; exit 5; }}", label="flaky", number_of_retries=1),
        job("bad", f"echo 'first line'; echo \"{HOSTILE}\" >&2; exit 3", label="bad<b>"),
        job("child", "true", label="child"),
    ]
    gw = workflow(jobs, [("ok1", "bad"), ("bad", "child")])
    run(gw, submit, make_config(site=LOCAL2), expect_fail=True)


def test_run_page_in_a_real_browser(tmp_path):
    """The driver writes ``<submit>/report.html`` at the end of the run; the
    page command writes it again for the run id; Chromium runs its script
    and shows the right count per label and state, one bar per attempt, the
    failure with its stderr tail escaped, and the retry."""
    submit = tmp_path / "submit"
    _mixed_run(submit, tmp_path)
    written_by_driver = submit / page.PAGE_NAME
    assert written_by_driver.exists()
    assert written_by_driver.stat().st_mode & 0o777 == 0o644 & ~_umask()

    store = RunStore(db_path(str(submit)), readonly=True)
    run_id = store.meta()["run_id"]
    store.close()
    out = tmp_path / "page" / "run.html"
    out.parent.mkdir()
    assert page.main([run_id, "-o", str(out)]) == 0
    text = out.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "\u202e" not in text
    store = RunStore(db_path(str(submit)), readonly=True)
    assert any(SECRET in script for script in store.envs())
    store.close()
    assert SECRET not in text and "export " not in text

    if CHROMIUM is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install chromium): the browser check did not run"
        )
    dumped = _chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = _Dom()
    dom.feed(dumped.stdout)
    assert dom.root.get("data-script") == "ran", "the page's script did not run"
    assert dom.local_times >= 4
    s, f, p = WmsStates.SUCCEEDED.name, WmsStates.FAILED.name, WmsStates.PRUNED.name
    expected = {
        ("ok", s): 3,
        ("ok", f): 0,
        ("ok", "TOTAL"): 3,
        ("flaky", s): 1,
        ("flaky", f): 0,
        ("bad<b>", f): 1,
        ("bad<b>", s): 0,
        ("child", p): 1,
        ("*", s): 4,
        ("*", f): 1,
        ("*", p): 1,
        ("*", "TOTAL"): 6,
    }
    assert {key: dom.counts.get(key) for key in expected} == expected
    assert dom.bars == {"ok": 4, "retry": 1, "fail": 1}
    assert dom.failures == ["bad"]
    assert dom.scripts == 1
    assert "exit code 3" in dumped.stdout and "first line" not in dumped.stdout
    assert "Retries and infrastructure losses (1)" in dumped.stdout and "exit code 5" in dumped.stdout

    screenshot = tmp_path / "run_page.png"
    shot = _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,1600", out.as_uri())
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _synthetic_store(submit: Path, n: int, failing_every: int = 50) -> None:
    """A finished run of ``n`` jobs in 4 labels on 8 hosts, written straight
    into a real store (no jobs run: only the page's cost is measured)."""
    submit.mkdir(parents=True)
    meta = {"run_id": "big", "run_name": "big", "submit_path": str(submit), "created": time.time() - 3600}
    jobs = (
        JobRow(i, f"job{i}", f"label{i % 4}", 0, False, "true", request_cpus=1, request_memory=100, retries=1)
        for i in range(n)
    )
    store = RunStore.create(db_path(str(submit)), meta, jobs, [])
    store.begin_session("submit", 1, "host0")
    t0 = time.time() - 3000
    for i in range(n):
        host = f"host{i % 8}"
        start = t0 + i * 0.2
        if i % failing_every == 0:
            store.record_attempt(i, 1, FAILED, 1, None, 100, "local", None, start, start + 1, host)
            store.record_attempt(i, 2, SUCCEEDED, 0, None, 200, "local", None, start + 1, start + 3, host)
            store.set_state(i, SUCCEEDED, 2, 0, None, start + 1, start + 3, host)
        elif i % failing_every == 1:
            store.record_attempt(i, 1, FAILED, 2, None, 100, "local", None, start, start + 1, host)
            store.set_state(i, FAILED, 1, 2, None, start, start + 1, host)
        else:
            store.record_attempt(i, 1, SUCCEEDED, 0, None, 100, "local", None, start, start + 2.5, host)
            store.set_state(i, SUCCEEDED, 1, 0, None, start, start + 2.5, host)
    store.end_session("failed")
    store.close()


@pytest.mark.parametrize("n", [4000, 10000])
def test_page_of_a_large_run_is_cheap(tmp_path, n):
    """Writing the page of a 10,000-job run takes well under a second
    (0.5 s is the aim on a quiet machine; the bound here is generous), and
    above 5,000 attempts the timeline is aggregated and the page says so."""
    submit = tmp_path / "submit"
    _synthetic_store(submit, n)
    best = min(_timed(lambda: page.write_page(str(submit))) for _ in range(3))
    text = (submit / page.PAGE_NAME).read_text()
    print(f"page of {n} jobs: {best:.3f} s, {len(text) / 1e6:.2f} MB")
    assert best < 2.0
    attempts = n + n // 50
    if attempts > page.MAX_DRAWN_ATTEMPTS:
        assert 'data-mode="aggregated"' in text and f"{attempts} attempts: more than" in text
        assert text.count("<rect") == 0
    else:
        assert text.count("<rect class=") == attempts
    assert f"Failures ({n // 50})" in text
    assert f"Retries and infrastructure losses ({n // 50})" in text


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def test_page_command_errors_are_one_line(tmp_path, capsys):
    """The page command names a run it cannot find, in one line."""
    assert page.main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err


def test_page_of_a_live_run_and_the_drivers_rewrites(tmp_path, monkeypatch):
    """While a driver runs in another process, the page command shows the
    run RUNNING with its two running jobs in flight and a reload switch;
    the driver rewrites its own page only when due and at the end."""
    import json
    import sys

    from cli import cli_environment, wait_for
    from lsst.ctrl.bps.parsl.control.running import running_job_ids

    env = cli_environment(tmp_path, monkeypatch)
    submit = tmp_path / "submit"
    spec = {
        "jobs": [{"name": "slow1", "script": "sleep 3"}, {"name": "slow2", "script": "sleep 3"}],
        "site": LOCAL2["local"],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    driver = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "synthetic_driver.py"),
            str(submit),
            str(tmp_path / "spec.json"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: len(running_job_ids(str(submit / "parsl" / "running"))) == 2,
            what="two running jobs",
            proc=driver,
        )

        def live_page() -> str | None:
            text = Path(page.write_page(str(submit), str(tmp_path / "live.html"))).read_text()
            return text if text.count('<rect class="run"') == 2 else None

        live = wait_for(live_page, what="a page with the two running jobs", proc=driver)
    finally:
        out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 0, out
    assert ">RUNNING</span>" in live and 'id="autorefresh"' in live
    assert "in flight" in live and "data-state='RUNNING'>2<" in live
    assert (submit / page.PAGE_NAME).exists()

    (submit / page.PAGE_NAME).unlink()
    writer = page.PageWriter(str(submit), interval=0.5)
    writer.update()
    assert not (submit / page.PAGE_NAME).exists(), "written before it was due"
    time.sleep(0.6)
    writer.update()
    assert (submit / page.PAGE_NAME).exists(), "not written when due"
    (submit / page.PAGE_NAME).unlink()
    writer.update()
    assert not (submit / page.PAGE_NAME).exists(), "written again within the interval"
    writer.update(final=True)
    assert ">SUCCEEDED</span>" in (submit / page.PAGE_NAME).read_text()


def test_a_page_that_cannot_be_written_costs_one_warning(tmp_path, caplog):
    """The driver's page writer never raises: a page it cannot write (here
    the page's path is a directory) is one warning, once."""
    submit = tmp_path / "submit"
    _synthetic_store(submit, 10)
    (submit / page.PAGE_NAME).mkdir()
    writer = page.PageWriter(str(submit), interval=0.0)
    with caplog.at_level("WARNING", logger="lsst.ctrl.bps.parsl.report.page"):
        writer.update(final=True)
        writer.update(final=True)
    assert [r.getMessage() for r in caplog.records if "run page" in r.getMessage()][0].startswith(
        f"run page {submit / page.PAGE_NAME} not written"
    )
    assert len(caplog.records) == 1
    assert not list(submit.glob("*.tmp"))
