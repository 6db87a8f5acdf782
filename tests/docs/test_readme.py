"""The README's webhook verification snippet and its configuration table, against the code."""

from __future__ import annotations

import re
import time
import tomllib
from typing import Any

import pytest

from jobd.config import Config
from jobd.credentials import new_webhook_secret
from jobd.signing import signature_headers
from tests.docs.conftest import ROOT, code_blocks

README = ROOT / "README.md"
BODY = b'{"jobId":"job_P81S5-p-jSSC3lH20byrw-","status":"succeeded","attempts":1}'


def readme_verifiers() -> dict[str, Any]:
    blocks = [b for b in code_blocks(README, "python") if "def verify_x_signature" in b]
    assert len(blocks) == 1, "the README has one webhook verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    return namespace


def test_the_readme_snippet_accepts_what_jobd_signs_and_nothing_else() -> None:
    ns = readme_verifiers()
    secret, now = new_webhook_secret(), int(time.time())
    h = signature_headers(secret, "msg_1", now, BODY)

    assert ns["verify_x_signature"](secret, BODY, h["X-Signature"])
    assert ns["verify_standard_webhook"](secret, BODY, "msg_1", h["webhook-timestamp"],
                                         h["webhook-signature"])
    assert ns["verify_standard_webhook"](secret, BODY, "msg_1", h["webhook-timestamp"],
                                         "v1,bm90IGl0 " + h["webhook-signature"])

    tampered = BODY.replace(b"succeeded", b"fatal")
    other = new_webhook_secret()
    assert not ns["verify_x_signature"](secret, tampered, h["X-Signature"])
    assert not ns["verify_x_signature"](other, BODY, h["X-Signature"])
    assert not ns["verify_standard_webhook"](secret, tampered, "msg_1", h["webhook-timestamp"],
                                             h["webhook-signature"])
    assert not ns["verify_standard_webhook"](other, BODY, "msg_1", h["webhook-timestamp"],
                                             h["webhook-signature"])
    assert not ns["verify_standard_webhook"](secret, BODY, "msg_2", h["webhook-timestamp"],
                                             h["webhook-signature"])
    assert not ns["verify_standard_webhook"](secret, BODY, "msg_1", "not-a-time",
                                             h["webhook-signature"])


@pytest.mark.parametrize("age_s", [-301, 301, 3600])
def test_the_readme_snippet_refuses_a_timestamp_more_than_five_minutes_away(age_s: int) -> None:
    ns = readme_verifiers()
    secret = new_webhook_secret()
    then = int(time.time()) - age_s
    h = signature_headers(secret, "msg_1", then, BODY)
    assert not ns["verify_standard_webhook"](secret, BODY, "msg_1", str(then),
                                             h["webhook-signature"])


# the configuration table ------------------------------------------------------------------


def readme_config_table() -> dict[str, str]:
    """``{"section.key": default as written}`` from the README's configuration table."""
    section = README.read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_<>]+)` \| (.*?) \|", section, re.M)
    assert rows, "no table in the README's Configuration section"
    return dict(rows)


def model_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for section, field in Config.model_fields.items():
        model = field.annotation
        if section == "handlers":
            defaults["handlers.<name>"] = None
            continue
        for name, info in model.model_fields.items():  # type: ignore[union-attr]
            defaults[f"{section}.{info.alias or name}"] = info.default
    return defaults


def test_the_readme_configuration_table_lists_every_key_and_only_those() -> None:
    assert set(readme_config_table()) == set(model_defaults())


def test_the_readme_configuration_table_gives_each_key_its_default() -> None:
    table = readme_config_table()
    for key, default in model_defaults().items():
        written = table[key]
        if default is None:
            assert written == "none", f"{key}: the README says {written}"
            continue
        value = tomllib.loads(f"v = {written.strip('`')}")["v"]
        expected = list(default) if isinstance(default, tuple) else default
        assert value == expected, f"{key}: the README says {written}, the code {default!r}"
