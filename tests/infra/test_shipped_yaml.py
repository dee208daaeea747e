"""The shipped infrastructure names only what exists: every YAML parses; every job command in
ray_cluster.yaml, infra/k8s, the Makefile, the Dockerfile and the infra READMEs is a real
command whose config file and overrides the real loaders accept; versions and pins come from
pyproject.toml; the clusters fit the shipped training configs; no credentials are written down.
(Loading configs/*.yaml, configs/train and configs/preprocess is tested beside their loaders.)"""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from jobs.cli import COMMANDS
from jobs.demo_config import load_demo_config
from jobs.train_config import load_train_config
from pipelines.preprocess_config import load_preprocess_config

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PYPROJECT["version"]
PINS = {
    re.sub(r"\[.*\]", "", name).lower(): version
    for name, version in (d.split("==") for d in PYPROJECT["dependencies"] if "==" in d)
}
SHIPPED_YAML = sorted(
    [*ROOT.glob("configs/**/*.yaml"), ROOT / "ray_cluster.yaml", *ROOT.glob("infra/**/*.yaml")]
)
K8S = sorted((ROOT / "infra" / "k8s").glob("*.yaml"))
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
READMES = [ROOT / "infra" / "README.md", ROOT / "infra" / "local" / "README.md"]
LOADERS = {
    "preprocess": load_preprocess_config,
    "train": load_train_config,
    "demo": load_demo_config,
}
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)
# a command at the start of a line or after a shell operator, the console script maybe by path
# (scripts/demo.sh runs `clipsr demo` with its arguments)
JOB = re.compile(
    r"(?:^|&&|\|\||;|\(|\bexec|--)\s*"
    r"(?:python -m jobs\.(\w+)|(?:[\w./-]*/)?clipsr (\w+)|bash scripts/(demo)\.sh)(.*)"
)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def ray_cluster() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def entrypoints() -> dict[str, str]:
    return {
        f"{rel(path)}:{doc['metadata']['name']}": doc["spec"]["entrypoint"]
        for path in K8S
        for doc in docs(path)
        if doc["kind"] == "RayJob"
    }


def shell_lines(path: Path) -> list[str]:
    """Command lines: Makefile recipes, Dockerfile RUN/CMD, fenced code blocks of a README,
    with backslash continuations joined."""
    text = path.read_text()
    if path.suffix == ".md":
        blocks = re.findall(r"```\w*\n(.*?)```", text, re.S)
        lines = [ln for block in blocks for ln in block.split("\n")]
    elif path.name == "Makefile":
        lines = [ln[1:] for ln in text.replace("\\\n\t", " ").split("\n") if ln.startswith("\t")]
    else:  # Dockerfile
        text = text.replace("\\\n", " ")
        lines = [ln for ln in text.split("\n") if ln.startswith(("RUN ", "CMD "))]
    return [ln for ln in "\n".join(lines).replace("\\\n", " ").split("\n") if ln.strip()]


def job_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, args) of every `python -m jobs.X` / `clipsr X` shipped in infra."""
    sources = [(where, line) for where, line in entrypoints().items()]
    for path in [ROOT / "Makefile", DOCKERFILE, *READMES]:
        sources += [(rel(path), line) for line in shell_lines(path)]
    for value in ray_commands():
        sources.append(("ray_cluster.yaml", value))
    found = []
    for where, line in sources:
        line = re.sub(r"\s#.*", "", line)  # a shell comment
        for module, command, script, rest in JOB.findall(line.replace('"', " ").replace("'", " ")):
            args = []
            for token in shlex.split(rest):
                if token in ("&&", "||", ";", "|", ")", "]") or token.startswith((">", "2>")):
                    break
                if not token.startswith("$"):  # a Makefile/shell variable such as $(ARGS)
                    args.append(token.rstrip(","))
            found.append((where, module or command or script, args))
    return found


def ray_commands() -> list[str]:
    cfg = ray_cluster()
    keys = [k for k in cfg if k.endswith("_commands")]
    return [c for k in keys for c in cfg[k]]


def test_there_are_jobs_to_check():
    commands = {(where.split(":")[0], command) for where, command, _ in job_commands()}
    assert ("infra/k8s/rayjob-preprocess.yaml", "preprocess") in commands
    assert ("infra/k8s/rayjob-train.yaml", "train") in commands
    assert ("Makefile", "demo") in commands and ("infra/README.md", "train") in commands


@pytest.mark.parametrize("path", SHIPPED_YAML, ids=rel)
def test_every_shipped_yaml_parses(path):
    assert docs(path), f"{rel(path)}: empty"
    assert all(isinstance(d, dict) for d in docs(path))


@pytest.mark.parametrize("where,command,args", job_commands(), ids=lambda v: str(v)[:60])
def test_every_job_command_exists_and_its_config_loads(where, command, args):
    assert command in COMMANDS, f"{where}: '{command}' is not a clipsr command ({list(COMMANDS)})"
    module = importlib.import_module(COMMANDS[command][0])
    assert callable(module.main)
    if command not in LOADERS:
        if args and hasattr(module, "build_parser"):
            module.build_parser().parse_args(args)
        return
    flags = [a for a in args if a.startswith("-")]
    if hasattr(module, "build_parser"):
        module.build_parser().parse_args(args)  # the flags exist
    else:
        allowed = {"demo": ["--check"]}.get(command, [])
        assert not set(flags) - set(allowed), f"{where}: clipsr {command} has no {flags}"
    positional = [a for a in args if not a.startswith("-")]
    config = None if command == "demo" and (not positional or "=" in positional[0]) else "?"
    if config:
        assert positional, f"{where}: clipsr {command} needs a config file"
        config = positional.pop(0)
        assert (ROOT / config).is_file(), f"{where}: no such config {config}"
    # every override is a known key of the right type
    LOADERS[command](config and ROOT / config, positional)


def test_every_config_path_mentioned_exists():
    texts = [p.read_text() for p in [*K8S, ROOT / "ray_cluster.yaml", ROOT / "Makefile"]]
    texts += [DOCKERFILE.read_text(), *(p.read_text() for p in READMES)]
    mentioned = set(re.findall(r"configs/[\w./-]+\.yaml", "\n".join(texts)))
    assert mentioned
    assert not [m for m in mentioned if not (ROOT / m).is_file()]


def test_makefile_targets_call_existing_scripts():
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", text, re.M))
    for target in ("services-up", "services-down", "services-status", "test", "demo"):
        assert target in targets
    scripts = re.findall(r"bash ([\w/.-]+\.sh)", text)
    assert scripts and all((ROOT / s).is_file() for s in scripts)


def test_ray_cluster_passes_rays_own_schema_and_syncs_existing_files():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = ray_cluster()
    validate_config(prepare_config(cfg))
    assert cfg["provider"]["type"] == "aws" and cfg["head_node_type"] in cfg["available_node_types"]
    for remote, local in cfg["file_mounts"].items():
        assert (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist"
    assert "pip install -e ~/clipsr" in cfg["setup_commands"]  # the synced tree, as submitted
    assert cfg["docker"]["image"].endswith(f"/clipsr:{VERSION}")


def test_ray_cluster_autoscales_cpu_and_fits_the_gpu_training_configs():
    nodes = ray_cluster()["available_node_types"]
    cpu = [n for n in nodes.values() if not n["resources"].get("GPU") and n["resources"]["CPU"]]
    assert cpu and all(n["min_workers"] == 0 and n["max_workers"] > 1 for n in cpu)
    for path in sorted(ROOT.glob("configs/train/base-*.yaml")):
        run = load_train_config(path).run
        assert run.use_gpu
        fits = [
            n
            for n in nodes.values()
            if n["resources"].get("GPU", 0) >= run.gpus_per_worker
            and n["resources"].get("CPU", 0) >= run.cpus_per_worker
            and n.get("max_workers", 0) >= run.num_workers
            and n.get("min_workers", 0) == 0
        ]
        assert fits, f"no GPU node type of ray_cluster.yaml fits {rel(path)}'s workers"


def containers(job: dict) -> list[tuple[dict, dict]]:
    """(pod spec, container) of the head and of every worker group, with the group."""
    spec = job["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [(g, c) for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("path", K8S, ids=rel)
def test_k8s_manifests_use_the_image_pins_and_secrets(path):
    config_maps = {d["metadata"]["name"] for p in K8S for d in docs(p) if d["kind"] == "ConfigMap"}
    for doc in docs(path):
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc["data"] if SECRET_NAME.search(k)], "secrets in a ConfigMap"
            continue
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        assert doc["spec"]["rayClusterSpec"]["rayVersion"] == PINS["ray"]
        for group, container in containers(doc):
            assert container["image"] == f"clipsr:{VERSION}"
            for item in container.get("env", []):
                if SECRET_NAME.search(item["name"]):
                    assert "value" not in item and "secretKeyRef" in item["valueFrom"], item
            for ref in container.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in config_maps
            volumes = {v["name"] for v in group["template"]["spec"].get("volumes", [])}
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes


def test_train_job_fits_its_gpu_group_and_mounts_its_files():
    job = next(d for p in K8S for d in docs(p) if d["metadata"]["name"] == "clipsr-train")
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:3] == ["python", "-m", "jobs.train"]
    cfg = load_train_config(ROOT / args[3], args[4:])
    gpu_groups = [
        g
        for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        if all(
            int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= cfg.run.gpus_per_worker
            and float(c["resources"]["limits"]["cpu"]) >= cfg.run.cpus_per_worker
            for c in g["template"]["spec"]["containers"]
        )
    ]
    assert gpu_groups and max(g["maxReplicas"] for g in gpu_groups) >= cfg.run.num_workers
    # local files the job reads (the driver checks them before Ray starts) are mounted everywhere
    for path in [a.split("=", 1)[1] for a in args[4:] if "=/" in a]:
        for _, container in containers(job):
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert any(path.startswith(m + "/") for m in mounts), (container["name"], path)


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerfile_installs_only_pyprojects_pins():
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", text, re.M)
    sources = [s for line in copies for s in line.split()]
    assert {"pyproject.toml", "clipsr", "jobs", "pipelines", "configs"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not any(fnmatch.fnmatch(source, pat) for pat in dockerignore()), source
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", text), "installs the project itself"
    for name, version in re.findall(r"([A-Za-z][\w.-]*)(?:\[[\w,]+\])?==(\d[\w.]*)", text):
        assert PINS.get(name.lower()) == version, f"{name}=={version} is not pyproject's pin"
    base = re.search(r"^FROM python:(\d+\.\d+)", text, re.M).group(1)
    assert f">={base}" in PYPROJECT["requires-python"]
    assert re.search(r"^USER (?!root|0\b)", text, re.M), "runs as a non-root user"


def test_no_credentials_in_the_cluster_launcher_config():
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY", text)
    for node in ray_cluster()["available_node_types"].values():
        assert "IamInstanceProfile" in node["node_config"]  # S3 through the instance profile
