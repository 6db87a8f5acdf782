"""The README's quick start, pasted into bash as written, against a real ``jobd serve``.

Only the ports (8080, 9000) and the path of the ``jobd`` command change, so that the
test runs in a temporary directory beside other tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.conftest import ROOT
from tests.support import free_port, request, wait_for

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"


def quick_start_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block for lang, block in re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)
            if lang == "sh"]


def healthy(base: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "jobd serve exited"
    try:
        return request("GET", base + "/healthz")[0] == 200
    except OSError:
        return False


def test_the_quick_start_works_when_pasted(tmp_path: Path) -> None:
    serve, *pasted = quick_start_blocks()
    assert serve.strip() == "JOBD_WEBHOOKS_ALLOW_PRIVATE_NETWORKS=true make run"
    api_port, hook_port = free_port(), free_port()
    jobd = f"{sys.executable} -m jobd.cli.main"

    def adapt(block: str) -> str:
        return (block.replace("localhost:8080", f"localhost:{api_port}")
                .replace("127.0.0.1:9000", f"127.0.0.1:{hook_port}")
                .replace('("127.0.0.1", 9000)', f'("127.0.0.1", {hook_port})')
                .replace(".venv/bin/jobd", jobd))

    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBD_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    serve_env = {**env, "JOBD_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
                 "JOBD_SERVER_PORT": str(api_port)}
    with (tmp_path / "jobd.log").open("wb") as log:
        daemon = subprocess.Popen([*jobd.split(), "serve"], cwd=tmp_path, env=serve_env,
                                  stdout=log, stderr=log)
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{api_port}", daemon), timeout_s=60,
                 what="jobd serve to be ready")
        receiver, key, job, read = (adapt(b) for b in pasted)
        wait_webhook = ('for i in $(seq 400); do grep -q "\\"jobId\\":\\"$JOB\\"" out.txt '
                        "&& break; sleep 0.05; done\n")
        receiver_up = (f"until curl -s -o /dev/null -d '{{}}' 127.0.0.1:{hook_port}/; "
                       "do sleep 0.05; done\n")  # a paste is slower than a script
        script = ("set -e\nexec > out.txt 2>&1\ntrap 'kill %1 2>/dev/null' EXIT\n" + receiver
                  + receiver_up + key + job + wait_webhook + read)
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, timeout=120)
        out = (tmp_path / "out.txt").read_text()
        assert done.returncode == 0, out
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    job_ids = re.findall(r"job_[A-Za-z0-9_-]{22}", out)
    assert job_ids, out
    assert "X-Signature: sha256=" in out and "webhook-signature: v1," in out, out
    assert f'"jobId":"{job_ids[0]}"' in out and '"status":"succeeded"' in out, out
