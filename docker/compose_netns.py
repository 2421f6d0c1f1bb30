"""Derive docker/compose.netns.yaml from docker/compose.yaml, for a Docker daemon without a bridge.

docker/compose.yaml is the cluster a user runs with Compose v2 on an ordinary Docker: services reach
each other by name on the project's bridge network. Where the daemon has no bridge (dockerd
--bridge=none --iptables=false, as on the CI machines) and only Compose v1 installs, the same
cluster runs from this derived file: every service joins one private network namespace, that of
the `mlflow` container (network_mode: none, so it has only a loopback interface), and reaches the
others at 127.0.0.1. Nothing can leave that namespace and no host port is used.

The derivation is mechanical, so the two files cannot drift apart:
  * top-level `name` and `x-*` keys go (Compose v1 rejects them; YAML anchors are already merged);
  * `ports`, `build` and `deploy` go (no published ports; the image is built beforehand);
  * `deploy.replicas: N` becomes N services `<name>-1` ... `<name>-N`;
  * service names in commands and environment values become 127.0.0.1;
  * listeners bound to 0.0.0.0 bind 127.0.0.1; Ray nodes get `--node-ip-address=127.0.0.1`, their
    service name as `--node-name` (all share one address), and the Ray nodes after the first a
    dashboard-agent port of their own (one namespace, one port each);
  * Ray workers advertise `--num-cpus=${RAY_WORKER_CPUS:-1}`: on one host they share its cores.

    python3 docker/compose_netns.py            # rewrite docker/compose.netns.yaml
    python3 docker/compose_netns.py --check    # exit 1 when it is out of date
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "compose.yaml"
TARGET = HERE / "compose.netns.yaml"
NETNS_HOLDER = "mlflow"
LOOPBACK = "127.0.0.1"
DASHBOARD_AGENT_PORT = 52365  # Ray's default --dashboard-agent-listen-port
WORKER_CPUS = "--num-cpus=${RAY_WORKER_CPUS:-1}"
DROPPED_KEYS = ("ports", "build", "deploy")

HEADER = """\
# GENERATED from docker/compose.yaml by docker/compose_netns.py: do not edit by hand.
# The same cluster for a Docker daemon without a bridge network and Compose v1 (docker-compose 1.29):
# every service shares the private network namespace of `mlflow` and reaches the others at
# 127.0.0.1; no host port is published. docker/smoke.sh runs it:
#   docker-compose -p dslsmoke -f docker/compose.netns.yaml up -d
# tests/test_docker_manifests.py checks that it matches docker/compose.yaml.
"""


def _rename_hosts(text: str, hosts: list[str]) -> str:
    """Replace each service host name used as `host:port` (or `host:*`) by 127.0.0.1."""
    for host in sorted(hosts, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?=:[\d*])", LOOPBACK, text)
    return text


def _command(cmd: str | list[str]) -> list[str]:
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _is_ray_start(cmd: list[str]) -> bool:
    return cmd[:2] == ["ray", "start"]


def _loopback_listeners(cmd: list[str]) -> list[str]:
    """`--host 0.0.0.0`, `--dashboard-host=0.0.0.0` -> 127.0.0.1."""
    out = [LOOPBACK if tok == "0.0.0.0" else tok for tok in cmd]
    return [re.sub(r"^(--[\w-]*host)=0\.0\.0\.0$", rf"\1={LOOPBACK}", tok) for tok in out]


def derive(compose: dict) -> dict:
    """The host-less variant of a parsed docker/compose.yaml (anchors already merged by the loader)."""
    services_in = compose["services"]
    hosts = list(services_in)
    services: dict[str, dict] = {}
    ray_nodes = 0
    for name, svc in services_in.items():
        replicas = int((svc.get("deploy") or {}).get("replicas", 1))
        names = [name] if replicas == 1 else [f"{name}-{i}" for i in range(1, replicas + 1)]
        for new_name in names:
            out = {k: copy.deepcopy(v) for k, v in svc.items() if k not in DROPPED_KEYS}
            out["network_mode"] = "none" if name == NETNS_HOLDER else f"service:{NETNS_HOLDER}"
            if "environment" in out:
                out["environment"] = {k: _rename_hosts(str(v), hosts) for k, v in out["environment"].items()}
            if "command" in out:
                cmd = _loopback_listeners([_rename_hosts(tok, hosts) for tok in _command(out["command"])])
                if _is_ray_start(cmd):
                    cmd += [f"--node-ip-address={LOOPBACK}", f"--node-name={new_name}"]
                    if ray_nodes:
                        cmd.append(f"--dashboard-agent-listen-port={DASHBOARD_AGENT_PORT + ray_nodes}")
                    if "--head" not in cmd:
                        cmd.append(WORKER_CPUS)
                    ray_nodes += 1
                out["command"] = cmd
            services[new_name] = out
    result: dict = {"services": services}
    if compose.get("volumes"):
        result["volumes"] = copy.deepcopy(compose["volumes"])
    return result


def render(compose_path: Path = SOURCE) -> str:
    compose = yaml.safe_load(compose_path.read_text())
    return HEADER + yaml.safe_dump(derive(compose), sort_keys=False, default_flow_style=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docker/compose.netns.yaml is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET}: out of date with {SOURCE}; run python3 docker/compose_netns.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
