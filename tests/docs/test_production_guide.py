"""docs/production.md: its nginx site is the example file, and its alert rules use only
metrics that jobd exports (and pass promtool where it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobd.models import ClaimedJob, JobStatus
from jobd.runtime.execution import Failed
from jobd.runtime.metrics import Metrics
from jobd.store.backend import BackendMetrics, Gauge, WriterStats
from tests.docs.conftest import DOCS, code_blocks

GUIDE = DOCS / "production.md"
ALERTS = DOCS / "examples" / "prometheus" / "jobd-alerts.yml"


def exported_series() -> set[str]:
    """Every sample name /metrics can carry (``_total``, ``_bucket`` ... included)."""
    m = Metrics()
    job = ClaimedJob(id="job_1", tenant_id="acme", type="noop", payload="{}", attempt=1,
                     max_attempts=5, timeout_seconds=None, due_at=1.0, claimed_at=2.0)
    m.job_created("acme", "noop")
    m.attempt_recorded(job, Failed("boom"), JobStatus.FATAL, 0.1)
    m.delivery_attempted("succeeded", 0.02)
    m.request_rate_limited("acme")
    text = m.render(BackendMetrics(jobs={}, dlq_size=0, writer=WriterStats(),
                                   gauges=[Gauge("jobd_db_bytes", "", 1, (("file", "main"),))]))
    return {sample.name for family in text_string_to_metric_families(text.decode())
            for sample in family.samples}


def test_the_guide_shows_the_nginx_example_as_it_is() -> None:
    site = (DOCS / "examples" / "nginx" / "jobd.conf").read_text(encoding="utf-8")
    assert site in code_blocks(GUIDE, "nginx")


def test_every_metric_the_alert_rules_use_is_exported() -> None:
    used = set(re.findall(r"\b(jobd_[a-z_]+)", ALERTS.read_text(encoding="utf-8")))
    assert used, "no jobd metric in the alert rules"
    assert not used - exported_series(), f"not exported by jobd: {sorted(used - exported_series())}"


def test_every_alert_of_the_rules_file_is_in_the_guides_table() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(encoding="utf-8"), re.M))
    table = set(re.findall(r"^\| `(Jobd\w+)` \|", GUIDE.read_text(encoding="utf-8"), re.M))
    assert alerts and alerts == table


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_alert_rules_pass_promtool() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
