"""``jobd serve`` on PostgreSQL as a user switches to it: a SQLite config file with one
line added, ``[database] url``. The rest of the end-to-end suite runs on both backends
too; this module follows one user through the whole of it on that one file, and checks
what only such a file gives: the warning about the SQLite keys it still sets, and a
password that appears nowhere."""

from __future__ import annotations

import copy
import difflib
import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobd.cli.config import render_toml
from jobd.config import mask_password
from tests.conftest import Databases, postgres_only
from tests.e2e.receiver import Receiver, standard_signature, x_signature
from tests.support import JOBD, Client, Daemon, _env, cli, config_data, free_port, request, wait_for

pytestmark = postgres_only("jobd serve on the test PostgreSQL server")

IGNORED = "database.path, database.busy_timeout only apply to SQLite and are ignored"


class Switched:
    """A SQLite config (``sqlite.toml``) and the same file with ``[database] url`` added
    (``jobd.toml``); every CLI run's output kept, to look for the password in."""

    def __init__(self, tmp: Path, url: str, **sections: dict[str, Any]) -> None:
        self.tmp = tmp
        self.url = url
        self.port = free_port()
        sqlite = config_data(tmp, server={"port": self.port}, **sections)
        sqlite["database"] = {"path": str(tmp / "jobd.db"), "busy_timeout": 2.0}
        postgres = copy.deepcopy(sqlite)
        postgres["database"]["url"] = url
        self.sqlite_config = tmp / "sqlite.toml"
        self.sqlite_config.write_text(render_toml(sqlite))
        self.config = tmp / "jobd.toml"
        self.config.write_text(render_toml(postgres))
        self.daemon = Daemon(self.config, self.port, tmp / "jobd.log")
        self.outputs: list[str] = []

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = cli(self.config, *args, check=check)
        self.outputs += [done.stdout, done.stderr]
        return done

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)


@pytest.fixture
def url(tmp_path: Path, database: Databases) -> str:
    """The test's PostgreSQL database (a URL with the server's password)."""
    return str(database(tmp_path)["url"])


@pytest.fixture
def switched(tmp_path: Path, url: str) -> Iterator[Switched]:
    made = Switched(tmp_path, url, webhooks={"retry_delays": [0.05]})
    yield made
    made.daemon.stop()


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password  # the test server's superuser has one (TCP connections need it)
    return password


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, text = request("GET", base + "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def created(response: tuple[int, dict[str, str], Any]) -> str:
    status, _, body = response
    assert status == 201, body
    return str(body["jobId"])


def test_a_sqlite_config_with_only_the_url_added_runs_everything_on_postgresql(
        switched: Switched, receiver: Receiver) -> None:
    env = switched
    added = [line for line in difflib.ndiff(env.sqlite_config.read_text().splitlines(),
                                            env.config.read_text().splitlines())
             if line[:1] in "+-"]
    assert added == [f"+ url = \"{env.url}\""]

    creds = env.cli_json("tenants", "create", "acme")
    env.daemon.start()
    client = Client(env.daemon.base, "acme", creds["apiKey"])
    assert request("GET", env.daemon.base + "/healthz")[::2] == (200, {"status": "ok"})
    assert not list(env.tmp.glob("jobd.db*"))  # nothing of SQLite's: path is ignored

    # a job runs, and its webhook arrives signed
    hook = receiver.script("/hook", [200])
    job_id = created(client.submit("noop", {"n": 1}, key="k1", webhookUrl=hook))
    assert client.wait_status(job_id, "succeeded")["attempts"] == 1
    [seen] = receiver.wait_hits("/hook", 1)
    assert (seen.json["jobId"], seen.json["status"], seen.json["payload"]) == (
        job_id, "succeeded", {"n": 1})
    assert seen.headers["X-Signature"] == x_signature(creds["webhookSecret"], seen.body)
    assert seen.headers["webhook-signature"] == standard_signature(creds["webhookSecret"], seen)

    # the tenant cancels one waiting job, the operator another
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    mine, theirs = (created(client.submit("noop", key=key, runAt=later)) for key in ("c1", "c2"))
    status, _, body = request("DELETE", f"{env.daemon.base}/jobs/{mine}", headers=client.auth)
    assert (status, body["status"]) == (200, "cancelled")
    assert env.cli_json("jobs", "cancel", theirs)["status"] == "cancelled"
    assert client.job(theirs)["status"] == "cancelled"

    # a webhook that fails past its retries is dead-lettered; dlq retry delivers it
    down = receiver.script("/down", [500])
    failed = created(client.submit("noop", key="k2", webhookUrl=down))
    [dead] = wait_for(lambda: env.cli_json("dlq", "list"), what="a dead-lettered delivery")
    assert (dead["jobId"], dead["attempts"]) == (failed, 2)
    receiver.script("/down", [200])
    assert env.cli_json("dlq", "retry", dead["deliveryId"])["retried"] == 1
    hits = receiver.wait_hits("/down", 3)
    assert hits[2].headers["webhook-id"] == dead["deliveryId"]
    assert hits[2].headers["X-Signature"] == x_signature(creds["webhookSecret"], hits[2].body)
    wait_for(lambda: client.job(failed)["webhook"]["status"] == "succeeded",
             what="the retried delivery to succeed")
    assert env.cli_json("dlq", "list") == []

    # what an operator reads: /metrics, stats
    samples = scrape(env.daemon.base)
    assert samples[("jobd_jobs", (("status", "succeeded"),))] == 2
    assert samples[("jobd_jobs", (("status", "cancelled"),))] == 2
    assert samples[("jobd_dlq_size", ())] == 0
    assert samples[("jobd_db_pool_connections_max", ())] == 10  # database.pool_size
    stats = env.cli_json("stats")
    assert (stats["byStatus"]["succeeded"], stats["byStatus"]["cancelled"]) == (2, 2)

    assert env.daemon.terminate() == 0
    log = env.daemon.log()
    assert log.count(IGNORED) == 1
    assert mask_password(env.url) in log
    password = password_of(env.url)
    assert not [text for text in [log, *env.outputs] if password in text]


def test_the_sqlite_keys_warn_once_and_a_url_alone_not_at_all(
        switched: Switched, tmp_path: Path, database: Databases) -> None:
    switched.daemon.start()
    assert switched.daemon.terminate() == 0
    warned = [line for line in switched.daemon.log().splitlines()
              if "WARNING" in line and "database." in line]
    assert len(warned) == 1
    assert f"{IGNORED}: database.url selects PostgreSQL ({mask_password(switched.url)})" in warned[0]

    alone = tmp_path / "alone"
    alone.mkdir()
    port = free_port()
    data = config_data(alone, server={"port": port})
    assert data["database"] == database(alone)  # {"url": ...} and nothing else
    (alone / "jobd.toml").write_text(render_toml(data))
    daemon = Daemon(alone / "jobd.toml", port, alone / "jobd.log")
    try:
        daemon.start()
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    assert "only apply to SQLite" not in daemon.log()
    assert "listening on" in daemon.log()


def test_a_wrong_password_is_one_line_without_it(tmp_path: Path, url: str) -> None:
    parts = urlsplit(url)
    wrong = "wrong-" + password_of(url)
    bad_url = urlunsplit(parts._replace(netloc=parts.netloc.replace(password_of(url), wrong)))
    env = Switched(tmp_path, bad_url)
    outputs = []
    for args in (("stats",), ("tenants", "create", "acme"), ("migrate",)):
        done = env.cli(*args, check=False)
        assert done.returncode == 1, (args, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert re.match(r"error: cannot (connect to|migrate) PostgreSQL at ", line), line
        outputs.append(line)
    serve = subprocess.run([*JOBD, "serve", "--config", str(env.config)], capture_output=True,
                           text=True, env=_env(), timeout=30)
    assert serve.returncode == 1
    assert "Traceback" not in serve.stderr
    assert "password authentication failed" in serve.stderr
    for text in [*outputs, serve.stdout, serve.stderr]:
        assert wrong not in text and password_of(url) not in text
        assert mask_password(bad_url) in text or text == serve.stdout
