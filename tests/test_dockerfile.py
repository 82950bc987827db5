"""The Dockerfile: what it says, checked on every machine (its HEALTHCHECK's command run against
a small HTTP server, its ENTRYPOINT parsed by `fmnist serve`'s own parser), and, where a container
engine works (Debian's podman), the image built and run: a non-root server answering
predictions, only the model's two files inside, the health check healthy, SIGTERM a clean exit.

The build here cannot pull python:3.11-slim (no registry but PyPI's and Debian's is reachable),
so it starts from a Debian bookworm base made with debootstrap (python3 3.11 and venv) and
imported into podman once; pip inside the build gets this machine's CA bundle and local wheel
folder (the CPU torch wheel). See `container_env` for the two settings podman needs here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from test_serve import png

from fmnist.cli import get_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MODEL_FILES = {"model.safetensors", "model.json"}


# ---- the Dockerfile as written -----------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) in order: comments dropped, continued lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def args_of(kind: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == kind]


def arg_default(name: str) -> str | None:
    for rest in args_of("ARG"):
        key, _, value = rest.partition("=")
        if key == name:
            return value
    return None


def pinned_torch() -> str:
    """The torch version the project pins everywhere (the Makefile's setup)."""
    m = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())
    assert m, "the Makefile pins no torch version"
    return m.group(1)


def test_the_base_is_python_slim_and_torch_the_cpu_build_the_project_pins() -> None:
    assert args_of("FROM") == ["${BASE}"] and arg_default("BASE") == "python:3.11-slim"
    assert arg_default("TORCH_INDEX") == CPU_INDEX
    runs = args_of("RUN")
    torch_runs = [r for r in runs if re.search(r"\btorch==", r)]
    assert len(torch_runs) == 1, "torch is installed by exactly one RUN"
    assert f'pip install --index-url "$TORCH_INDEX" torch=={pinned_torch()}' in torch_runs[0]
    # the package comes after torch, so that its requirements cannot pull another torch
    package = next(i for i, r in enumerate(runs) if "[serve]" in r)
    assert runs.index(torch_runs[0]) < package


def test_the_server_runs_as_a_user_without_privileges() -> None:
    steps = dockerfile()
    users = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "USER"]
    entry = next(i for i, (word, _) in enumerate(steps) if word == "ENTRYPOINT")
    assert users and users[-1][0] < entry, "a USER before the ENTRYPOINT"
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0")
    created = [rest for rest in args_of("RUN") if re.search(rf"useradd\b.*\b{re.escape(user)}$", rest)]
    assert created, f"the image creates the user {user}"
    uid = re.search(r"--uid (\d+)", created[0])
    assert uid is None or int(uid.group(1)) != 0


def test_only_the_model_files_and_the_package_reach_the_image() -> None:
    copies = [shlex.split(rest) for rest in args_of("COPY")]
    to_model = [c for c in copies if c[-1].rstrip("/") == "/model"]
    assert len(to_model) == 1
    assert sorted(Path(p).name for p in to_model[0][:-1] if not p.startswith("--")) == sorted(MODEL_FILES)
    others = [p for c in copies if c not in to_model for p in c[:-1]]
    assert not [p for p in others if "model" in p or "runs" in p], others
    # and the build context: everything excluded, then only these let back in
    lines = [x.strip() for x in DOCKERIGNORE.read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0] == "*"
    assert {x[1:] for x in lines if x.startswith("!")} == {
        "pyproject.toml", "README.md", "src/", *(f"model/{f}" for f in MODEL_FILES)
    }  # fmt: skip


def test_the_entrypoint_is_fmnist_serve_in_exec_form_with_flags_it_takes() -> None:
    entry = json.loads(args_of("ENTRYPOINT")[0])  # exec form: the signal reaches fmnist itself
    assert entry[:3] == ["fmnist", "serve", "/model"]
    parsed = get_parser().parse_args(entry[1:])  # exits on a flag `fmnist serve` does not have
    assert (parsed.checkpoint, parsed.host) == ("/model", "0.0.0.0")
    assert args_of("EXPOSE") == [str(parsed.port)]
    assert args_of("STOPSIGNAL") == ["SIGTERM"]


class _Health(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).paths.append(self.path)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"paths": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def healthcheck_command(port: int) -> list[str]:
    """The HEALTHCHECK's command (exec form, no shell and no curl: a slim image has neither
    need nor curl), pointed at `port` instead of the server's own."""
    rest = args_of("HEALTHCHECK")[0]
    command = json.loads(rest[rest.index("CMD ") + 4 :])
    assert command[0] in ("python3", "python") and "curl" not in " ".join(command)
    served = str(get_parser().parse_args(json.loads(args_of("ENTRYPOINT")[0])[1:]).port)
    assert f"http://127.0.0.1:{served}/" in command[-1], "it probes the port the server listens on"
    return [sys.executable, *command[1:-1], command[-1].replace(f"127.0.0.1:{served}", f"127.0.0.1:{port}")]


def test_the_healthcheck_passes_on_a_200_from_healthz_and_fails_otherwise(health_server) -> None:
    port, handler = health_server
    assert subprocess.run(healthcheck_command(port), timeout=30).returncode == 0
    assert handler.paths == ["/healthz"]
    handler.status = 503
    assert subprocess.run(healthcheck_command(port), capture_output=True, timeout=30).returncode != 0
    with socket.socket() as s:  # nothing listening
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert subprocess.run(healthcheck_command(closed), capture_output=True, timeout=30).returncode != 0


# ---- the image, built and run ------------------------------------------------------------------

BASE_IMAGE = "localhost/fmnist-test-base:bookworm"


def podman(*args: str, env: dict[str, str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {shlex.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def container_env(tmp_path: Path) -> dict[str, str]:
    """podman's settings for this machine, in a containers.conf of the test's own: runc (crun
    refuses this kernel's hybrid cgroup layout: "cgroups in hybrid mode not supported, drop all
    controllers from cgroupv2"), and open-file and process limits below the host's (podman's
    defaults are above them, and raising a limit needs CAP_SYS_RESOURCE: "setrlimit
    `RLIMIT_NOFILE`: Operation not permitted")."""
    conf = tmp_path / "containers.conf"
    runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
                    f"[engine]\n{runtime}")  # fmt: skip
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def base_image(env: dict[str, str], tmp_path: Path) -> str:
    """A local stand-in for python:3.11-slim: the real one where it is present, else Debian
    bookworm's python3 (3.11) from debootstrap, imported once and kept."""
    for image in ("docker.io/library/python:3.11-slim", BASE_IMAGE):
        if podman("image", "exists", image, env=env, check=False).returncode == 0:
            return image
    if shutil.which("debootstrap") is None:
        pytest.skip("no python:3.11-slim here, no registry to pull it from, and no debootstrap "
                    "to make a stand-in (apt-get install debootstrap)")  # fmt: skip
    rootfs = tmp_path / "rootfs"
    made = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                           "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"debootstrap could not make a base image: {made.stdout[-500:]}{made.stderr[-500:]}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    tar.wait()
    assert imported.returncode == 0, imported.stderr
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


def pip_for_build(tmp_path: Path) -> tuple[list[str], list[str]]:
    """Volumes and build arguments that give pip inside the build what it has on this machine:
    its CA bundle (a proxy here re-signs TLS) and its local wheel folders. Where one of those
    holds the CPU torch wheel, PyPI stands in for PyTorch's index (unreachable here): pip still
    takes the local `+cpu` wheel, which sorts above PyPI's release of the same version."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                            text=True).stdout  # fmt: skip
    settings = dict(re.findall(r"^\S*?\.?(cert|find-links)='([^']*)'$", listed, re.M))
    volumes, config = [], ["[global]"]
    if settings.get("cert") and Path(settings["cert"]).is_file():
        volumes += ["-v", f"{settings['cert']}:/etc/fmnist-build-ca.crt:ro"]
        config.append("cert = /etc/fmnist-build-ca.crt")
    folders = [Path(p) for p in settings.get("find-links", "").split() if Path(p).is_dir()]
    for i, folder in enumerate(folders):
        volumes += ["-v", f"{folder}:/tmp/fmnist-build-wheels-{i}:ro"]
    if folders:
        config.append("find-links = " + " ".join(f"/tmp/fmnist-build-wheels-{i}" for i in range(len(folders))))
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text("\n".join(config) + "\n")
    volumes += ["-v", f"{pip_conf}:/etc/pip.conf:ro"]
    cpu_wheel = any(f.glob(f"torch-{pinned_torch()}+cpu-*.whl") for f in folders)
    return volumes, (["--build-arg", "TORCH_INDEX=https://pypi.org/simple"] if cpu_wheel else [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def engine(tmp_path: Path) -> dict[str, str]:
    """podman's environment, or a skip saying why no container runs here."""
    if shutil.which("podman") is None:
        pytest.skip("no container engine: podman is not installed (apt-get install podman runc)")
    env = container_env(tmp_path)
    probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", env=env, check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman does not work here: {probe.stderr.strip()[-300:]}")
    return env


@pytest.mark.slow
def test_the_image_builds_serves_as_a_plain_user_and_stops_cleanly(
    engine: dict[str, str], tmp_path: Path, make_checkpoint
) -> None:
    env = engine
    base = base_image(env, tmp_path)
    # the build context as a user would have it: a model/ folder holding a whole run's files,
    # a run folder and a venv beside the package; only what .dockerignore lets in may arrive
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run = make_checkpoint("mlp")
    shutil.copytree(run, context / "model")
    (context / "model" / "resume.pt").write_bytes(b"not for the image")
    for stray in ("runs/old/model.safetensors", ".venv/bin/python3", "model/notes.txt"):
        (context / stray).parent.mkdir(parents=True, exist_ok=True)
        (context / stray).write_text("not for the image")
    volumes, build_args = pip_for_build(tmp_path)
    # one tag, kept: the next build reuses its layers (torch's above all)
    tag = "localhost/fmnist-serve-test:latest"
    # docker format: podman keeps HEALTHCHECK only in it (the OCI format has no such field)
    podman("build", "--format", "docker", "-t", tag, "--build-arg", f"BASE={base}", *build_args, *volumes,
           str(context), env=env, timeout=1800)  # fmt: skip
    name = f"fmnist-test-{tmp_path.name.lower()}"
    try:
        # (find cannot read root's folders as the image's user: what it can read is enough)
        listed = podman("run", "--rm", "--health-interval", "disable", "--entrypoint", "sh", tag, "-c",
                        "id -u; ls -A /model; find / -xdev \\( -name resume.pt -o -name notes.txt -o -path /src \\) "
                        "-print 2>/dev/null; true", env=env).stdout.split()  # fmt: skip
        assert listed[0] != "0", "the server's user is root"
        assert sorted(listed[1:]) == sorted(MODEL_FILES), listed
        info = json.loads(podman("image", "inspect", tag, env=env).stdout)[0]
        assert info["Config"]["StopSignal"] == "SIGTERM"

        port = free_port()
        # no health-check timer (podman runs it with systemd, absent here): run it by hand below
        podman("run", "-d", "--name", name, "--health-interval", "disable",
               "-p", f"127.0.0.1:{port}:8000", tag, env=env)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = podman("inspect", name, "--format", "{{.State.Status}}", env=env).stdout.strip()
            assert state == "running", podman("logs", name, env=env, check=False).stderr[-3000:]
            assert time.monotonic() < deadline, "the container's server was not ready in 300 s"
            time.sleep(1)
        answer = httpx.post(url + "/v1/predict", content=png(), headers={"Content-Type": "image/png"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"]
        assert podman("healthcheck", "run", name, env=env, check=False).returncode == 0
        user = podman("top", name, "user", env=env).stdout.split()[1:]
        assert user and "root" not in user, user

        podman("stop", "-t", "60", name, env=env, timeout=120)
        code = podman("inspect", name, "--format", "{{.State.ExitCode}}", env=env).stdout.strip()
        assert code == "0", "SIGTERM should drain and exit 0:\n" + podman("logs", name, env=env).stderr[-3000:]
    finally:
        podman("rm", "-f", name, env=env, check=False)
