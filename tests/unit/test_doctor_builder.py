"""ds01 doctor's check of the daemon's BuildKit entitlements, read from daemon.json as written."""

from __future__ import annotations

import json

from ds01.ops import doctornet as doctor
from ds01.ops.checks import FAIL, PASS, WARN


def test_builder_entitlements_must_both_be_off() -> None:
    off = {"builder": {"entitlements": {"network-host": False, "device": False}}}
    assert doctor.builder_check(json.dumps(off)).status == PASS
    for text, missing in ((None, "network-host, device"), ("{}", "network-host, device"),
                          (json.dumps({"builder": {"entitlements": {"network-host": False}}}), "device"),
                          (json.dumps({"builder": {"entitlements": {"network-host": True, "device": False}}}),
                           "network-host")):
        check = doctor.builder_check(text)
        assert check.status == WARN and f"BuildKit's {missing} entitlement" in check.detail, check
        assert check.fix is not None and '"network-host": false' in check.fix
    broken = doctor.builder_check("{not json")
    assert broken.status == FAIL and "cannot be read as JSON" in broken.detail
