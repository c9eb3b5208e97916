"""deploy/swarm/: what the Swarm test cannot show on its own, checked without Docker.

The stack file and HAProxy's configuration name each other (the service the balancer resolves, the port,
the health route), every TINYLLM_* variable is a real server setting, and the stop grace period covers the
server's drain. scripts/swarm-test.sh (CI's Docker stage) deploys them for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from server.config import Settings  # noqa: E402

SWARM = Path(__file__).resolve().parents[1] / "deploy" / "swarm"


@pytest.fixture(scope="module")
def stack() -> dict:
    return yaml.safe_load((SWARM / "stack.yaml").read_text())


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"{duration!r}: write durations in seconds, as '30s'"
    return float(m[1])


def test_env_names_are_server_settings(stack):
    for name in stack["services"]["server"]["environment"]:
        assert name.startswith("TINYLLM_") and name[8:].lower() in Settings.model_fields, f"{name}: no such setting"


def test_stop_grace_period_covers_the_drain(stack):
    server = stack["services"]["server"]
    grace = float(server["environment"]["TINYLLM_SHUTDOWN_GRACE"])
    assert seconds(server["stop_grace_period"]) >= grace + 5, "the server needs its grace period and time to exit"


def test_replicas_are_found_by_dns_and_updated_start_first(stack):
    server, balancer = stack["services"]["server"], stack["services"]["balancer"]
    # no virtual IP and no routing mesh: both are IPVS, which the kernel may lack
    assert server["deploy"]["endpoint_mode"] == balancer["deploy"]["endpoint_mode"] == "dnsrr"
    assert all(port["mode"] == "host" for port in balancer["ports"])
    assert server["deploy"]["update_config"]["order"] == "start-first"
    assert server["deploy"]["update_config"]["failure_action"] == "rollback"
    assert "/health" in " ".join(server["healthcheck"]["test"])
    assert server["networks"] == balancer["networks"]


def test_haproxy_resolves_the_server_service_and_checks_health(stack):
    cfg = (SWARM / "haproxy.cfg").read_text()
    (target,) = re.findall(r"^\s*server-template \S+ \d+ tasks\.(\S+):(\d+)\s*$", cfg, re.M)
    assert target == ("server", str(Settings.model_fields["port"].default)), "tasks.<the stack's server service>:8000"
    assert "server" in stack["services"]
    assert re.search(r"^\s*option httpchk GET /health\s*$", cfg, re.M)
    assert re.search(r"^\s*nameserver \S+ 127\.0\.0\.11:53\s*$", cfg, re.M), "Docker's embedded DNS"
    (bind,) = re.findall(r"^\s*bind :(\d+)\s*$", cfg, re.M)
    assert [str(port["target"]) for port in stack["services"]["balancer"]["ports"]] == [bind]
    assert stack["configs"]["haproxy"]["file"] == "./haproxy.cfg"
    retry_on = re.search(r"^\s*retry-on (.+)$", cfg, re.M)[1].split()
    assert {"conn-failure", "empty-response", "503"} <= set(retry_on)
