"""The docker runtime against a real daemon: parity with local, push/pull/reproduce, cleanup, secrets.

Needs a Docker daemon and the images built by `pfmbench images build phikon` (.ci/run
starts a private dockerd and builds them). Without a daemon these tests are skipped
with that reason, except under CI=true, where a missing daemon is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from waiting import wait_until

from harness import __version__, constants
from harness.errors import ServerError
from harness.images.build import docker_cli
from harness.images.docker import BASE_TAG, local_tag
from harness.images.lock import LockEntry, read_lock, read_manifest, write_lock
from harness.images.manifest import diff, manifest_hash
from harness.images.registry import image_identity, image_manifest
from harness.models.spec import get_spec
from harness.models.weights import ResolvedWeights
from harness.results.store import read_rows
from harness.runtime import docker_available
from harness.runtime.docker import DockerRuntime
from harness.runtime.owners import owner_labels

from conftest import free_port, pinned_model_dir

pytestmark = pytest.mark.docker

FAKE_TOKEN = "hf_pfmbenchFAKEtoken0123456789abcdef"
METRICS = ("mIoU", "mDice", "mIoU_nobg", "mDice_nobg", "pixel_accuracy", "per_class_iou", "mDice_ci_low", "mDice_ci_high")


@pytest.fixture(scope="module")
def client():
    ok, why = docker_available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the docker tests: {why}")
        pytest.skip(why)
    import docker

    c = docker.from_env()
    for tag in (BASE_TAG, local_tag("phikon")):
        try:
            c.images.get(tag)
        except docker.errors.ImageNotFound:
            pytest.fail(f"{tag} is not built: run 'pfmbench images build phikon' first (.ci/run does)")
    return c


def _our_containers(c) -> list:
    return c.containers.list(all=True, filters={"label": "org.pfmbench.model"})


@pytest.fixture
def no_leftover_containers(client):
    before = {x.id for x in _our_containers(client)}
    yield
    left = [x.name for x in _our_containers(client) if x.id not in before]
    assert not left, f"containers left behind: {left}"


def bench(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return _cli("bench", "--no-progress", *args, env=env, timeout=timeout)


def test_image_labels_are_the_spec(client):
    image = client.images.get(local_tag("phikon"))
    labels = image.labels
    spec = get_spec("phikon")
    assert labels["org.pfmbench.name"] == "phikon"
    assert labels["org.pfmbench.embed-dim"] == str(spec.embed_dim)
    assert int(image.attrs["Config"]["User"] or 0) == 10001


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on a free 127.0.0.1 port (127.0.0.0/8 is insecure-allowed by default)."""
    work = tmp_path_factory.mktemp("registry")
    port = free_port()
    cfg = work / "config.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {work / 'data'}}}\n"
                   f"  delete: {{enabled: true}}\nhttp: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import urllib.request

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return True
        except OSError:
            return False

    wait_until(answers, 30, "the test registry to answer")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)  # several GB of blobs


def _cli(*args: str, env: dict | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.timeout(1800)  # pushes and pulls the 7 GB image: 924 s of the docker tier on 2 cores
def test_publish_delete_pull_verify_reproduce(client, registry, tmp_path, no_leftover_containers, no_leftover_servers):
    """The release path against a real registry: publish writes the lock; a docker row and an --endpoint row are
    computed; every local copy of the image is deleted; reproduce needs --pull, pulls the digest, gives the same
    metrics; verify passes on the pulled image."""
    lock = tmp_path / "images.lock"
    env = {"PFMBENCH_IMAGES_LOCK": str(lock), "HF_TOKEN": FAKE_TOKEN}
    built_manifest = image_manifest(client.images.get(local_tag("phikon")))
    publish = _cli("images", "publish", "phikon", "--registry", registry, env=env)
    assert publish.returncode == 0, publish.stderr
    entry = read_lock(lock)["phikon"]
    assert (entry.registry, entry.image) == (registry, f"{registry}/pfmbench/phikon") and entry.base_digest != entry.digest
    assert entry.manifest == manifest_hash(built_manifest) and read_manifest("phikon", lock) == built_manifest
    assert f"phikon: {entry.ref}  manifest {entry.manifest}" in publish.stdout

    verify = _cli("images", "verify", "phikon", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.splitlines()[:4] == [
        "phikon: OK", f"  = digest {entry.digest} ({entry.image})",
        f"  = manifest {entry.manifest} ({len(built_manifest['debian'])} Debian and {len(built_manifest['python'])} Python packages)",
        "  = installed packages equal the recorded manifest"]

    common = ("-m", "phikon", "-d", "nuclei-sample", "--epochs", "2", "--seed", "3", "--results-dir", str(tmp_path / "res"))
    docker_run = bench(*common, "--runtime", "docker", env=env)
    assert docker_run.returncode == 0, docker_run.stderr
    local_run = bench(*common, "--runtime", "local", env=env)
    assert local_run.returncode == 0, local_run.stderr
    with DockerRuntime(get_spec("phikon"), ResolvedWeights.random()) as server:  # a server this bench did not start
        endpoint_run = bench(*common, "--endpoint", server.url, env={**env, "PFMBENCH_TRITON_TOKEN": server.token or ""})
    assert endpoint_run.returncode == 0, endpoint_run.stderr
    rows = {r["runtime"]: r for r in read_rows(tmp_path / "res")}
    for m in METRICS:
        assert rows["docker"][m] == rows["local"][m] == rows["endpoint"][m], m
    assert rows["docker"]["image_digest"] == entry.ref
    assert rows["endpoint"]["image_digest"] == entry.ref  # the server reported its manifest; the lock names its image
    assert rows["docker"]["run_key"] != rows["local"]["run_key"]  # the image digest is part of the key
    for out in (publish.stdout + publish.stderr, docker_run.stdout + docker_run.stderr):
        assert FAKE_TOKEN not in out

    # Delete every local copy of the image, then reproduce the rows: only with --pull, which pulls the digest.
    client.images.remove(client.images.get(local_tag("phikon")).id, force=True)
    assert client.images.list(name=entry.image) == []
    reproduce = ("reproduce", rows["docker"]["row_id"], "--results-dir", str(tmp_path / "res"))
    refused = _cli(*reproduce, env=env)
    assert refused.returncode == 1 and f"the row's image {entry.ref} is not here (fix: add --pull" in refused.stderr
    repro = _cli(*reproduce, "--pull", env=env)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "identical metrics" in repro.stdout and f"pulling {entry.ref}" in repro.stdout
    client.images.get(local_tag("phikon"))  # tagged again after the pull
    again = _cli("images", "verify", "phikon", env=env)
    assert again.returncode == 0 and again.stdout.startswith("phikon: OK"), again.stdout
    from_endpoint = _cli("reproduce", rows["endpoint"]["row_id"], "--results-dir", str(tmp_path / "res"), "--pull", env=env)
    assert from_endpoint.returncode == 0, from_endpoint.stdout + from_endpoint.stderr
    assert "runtime docker" in from_endpoint.stdout and "identical metrics" in from_endpoint.stdout


def test_verify_names_what_a_changed_image_changed(client, tmp_path, no_leftover_containers):
    """A layer added over the phikon image removes one package: the digest, and the installed packages against the
    recorded manifest, are reported, package by package."""
    from harness.images.verify import verify

    lock = tmp_path / "images.lock"
    image = client.images.get(local_tag("phikon"))
    recorded = image_manifest(image)
    digest = "sha256:" + "0" * 64
    write_lock({"phikon": LockEntry(registry="r.example", image="r.example/pfmbench/phikon", digest=digest, base_digest=digest,
                                    manifest=manifest_hash(recorded))}, {"phikon": recorded}, lock)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {image.id}\nUSER root\nRUN rm -rf /opt/venv/lib/python3.11/site-packages/filelock*\nUSER 10001\n")
    tag = "pfmbench-test/changed:latest"
    build = subprocess.run([docker_cli(), "build", "--network", "none", "-q", "-t", tag, str(ctx)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    try:
        result = verify("phikon", lock=lock, image=tag)
    finally:
        client.images.remove(tag, force=True)
    assert not result.ok
    assert result.differences == [
        f"digest: the lock pins {digest}; the local image has none (built here: never pushed or pulled)",
        "installed packages differ from the manifest the image recorded:",
        f"  python filelock: {recorded['python']['filelock']['version']} in the recorded manifest, missing from the running image",
    ]


def test_a_rebuild_records_the_same_manifest_and_leaves_no_build_tree(client, no_leftover_containers):
    """The model layers rebuilt from scratch (same base, same inputs, network off) give the same content manifest."""
    before = client.images.get(local_tag("phikon"))
    rebuild = _cli("images", "build", "phikon", "--skip-base", "--no-cache")
    assert rebuild.returncode == 0, rebuild.stderr
    after = client.images.get(local_tag("phikon"))
    assert after.id != before.id  # really rebuilt
    assert manifest_hash(image_manifest(after)) == manifest_hash(image_manifest(before))
    listing = client.containers.run(after.id, ["sh", "-c", "ls -A /app; ls -d /app/build /app/*.egg-info /app/harness 2>&1 | wc -l"],
                                    remove=True, network_disabled=True, labels=owner_labels()).decode().split()
    assert listing[:-1] == ["manifest.json", "models"]  # no build/, no harness source, no egg-info
    assert listing[-1] == "3"  # three "No such file" lines


PINNED_TIMM = "1.0.9"


@pytest.fixture
def pinned_model(tmp_path, monkeypatch):
    models = pinned_model_dir(tmp_path, PINNED_TIMM)
    monkeypatch.setenv("PFMBENCH_MODELS_DIR", str(models))
    yield models
    import docker.errors

    try:
        docker.from_env().images.remove(local_tag("pinned_vit"), force=True)
    except docker.errors.ImageNotFound:
        pass


@pytest.mark.timeout(1200)
def test_a_model_pins_an_older_timm_in_its_own_layer_and_serves_with_it(client, pinned_model, tmp_path, no_leftover_containers):
    build = _cli("images", "build", "pinned_vit", "--skip-base")
    assert build.returncode == 0, build.stdout + build.stderr
    image = client.images.get(local_tag("pinned_vit"))
    recorded = image_manifest(image)
    assert recorded["python"]["timm"]["version"] == PINNED_TIMM
    base = image_manifest(client.images.get(local_tag("phikon")))
    assert diff(base, recorded, "phikon", "pinned_vit") == [f"python timm: {base['python']['timm']['version']} in phikon, {PINNED_TIMM} in pinned_vit"]
    common = ("-m", "pinned_vit", "-d", "nuclei-sample", "--epochs", "1", "--input-size", "64", "--results-dir", str(tmp_path / "res"))
    served = bench(*common, "--runtime", "docker")
    assert served.returncode == 0, served.stderr
    (row,) = read_rows(tmp_path / "res")
    assert row["model"] == "pinned_vit" and row["mIoU"] > 0
    local = bench(*common[:-1], str(tmp_path / "local"), "--runtime", "local")  # this venv has the locked timm: the pin cannot hold
    assert local.returncode == 1 and not (tmp_path / "local").exists()
    assert local.stderr.strip().splitlines()[-1].startswith(
        f"error: model 'pinned_vit' pins timm=={PINNED_TIMM}, but timm {base['python']['timm']['version']} is installed")

    # A label that pins what the Dockerfile does not install fails the build, at the manifest layer.
    dockerfile = pinned_model / "pinned_vit/Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(f"timm=={PINNED_TIMM}\n", "filelock\n"))
    bad = _cli("images", "build", "pinned_vit", "--skip-base")
    assert bad.returncode == 1
    assert f"the packages label pins timm=={PINNED_TIMM} (the image has {base['python']['timm']['version']})" in bad.stdout + bad.stderr


def test_the_compose_registry_is_built_from_debian_and_serves_pushes(client, tmp_path, no_leftover_containers):
    """compose/registry.yml's image: Debian's docker-registry, no Docker Hub; published on 127.0.0.1 only."""
    import yaml

    compose = yaml.safe_load((constants.PROJECT_ROOT / "compose/registry.yml").read_text())["services"]["registry"]
    assert compose["ports"] == ["127.0.0.1:5000:5000"]
    context = constants.PROJECT_ROOT / "compose" / compose["build"]["context"]
    tag = "pfmbench-test/registry:latest"
    build = subprocess.run([docker_cli(), "build", "-q", "-t", tag, "--build-arg", "DEBIAN=local/debian:bookworm", str(context)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    port = free_port()
    container = client.containers.run(tag, detach=True, ports={"5000/tcp": ("127.0.0.1", port)}, labels=owner_labels())
    try:
        def answers() -> bool:
            try:
                with _registry_get(f"127.0.0.1:{port}", "") as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(answers, 60, "the compose registry to answer")
        small = client.images.get("local/debian:bookworm")
        small.tag(f"127.0.0.1:{port}/pfmbench/debian", "test")
        pushed = [c for c in client.images.push(f"127.0.0.1:{port}/pfmbench/debian", tag="test", stream=True, decode=True) if "error" in c]
        assert pushed == []
        with _registry_get(f"127.0.0.1:{port}", "pfmbench/debian/tags/list") as r:
            assert json.loads(r.read())["tags"] == ["test"]
    finally:
        container.remove(force=True)
        client.images.remove(f"127.0.0.1:{port}/pfmbench/debian:test")
        client.images.remove(tag, force=True)


def test_unhealthy_container_fails_fast_with_its_log_and_is_removed(client, tmp_path, no_leftover_containers):
    missing = ResolvedWeights(kind="dir", path=tmp_path / "model.safetensors", sha256="0" * 64)
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    rt = DockerRuntime(get_spec("phikon"), missing, startup_timeout_s=120)
    with pytest.raises(ServerError, match="exited with code 1 while starting; log tail: .*cannot read checkpoint"):
        with rt:  # fails on the container's exit, not on the 120 s start-up timeout (whose message differs)
            pass
    slow = DockerRuntime(get_spec("phikon"), ResolvedWeights.random(), startup_timeout_s=2)
    with pytest.raises(ServerError, match="did not become healthy within 2 s"):
        with slow:
            pass


def test_ctrl_c_removes_the_container(client, tmp_path, no_leftover_containers):
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "--no-progress", "-m", "phikon", "-d", "synthetic-tissue",
                             "--runtime", "docker", "--epochs", "1", "--results-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def flowing() -> bool:
        assert proc.poll() is None, proc.communicate()
        return bool(list(Path("/dev/shm").glob(f"pfm_{proc.pid}_*")))

    wait_until(flowing, 180, "features to flow from the container")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert read_rows(tmp_path) == []


def test_a_container_of_a_killed_harness_is_reaped_by_the_next_command(client, tmp_path, no_leftover_containers):
    import docker.errors

    from harness.runtime.owners import PID_LABEL, reap_orphan_containers

    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "--no-progress", "-m", "phikon", "-d", "synthetic-tissue",
                             "--runtime", "docker", "--epochs", "1", "--results-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def its_container():
        assert proc.poll() is None, proc.communicate()
        return [c for c in client.containers.list(filters={"label": f"{PID_LABEL}={proc.pid}"})]

    (container,) = wait_until(its_container, 180, "the harness's model container")
    proc.kill()  # SIGKILL: nothing in the harness runs, so the container outlives it
    proc.wait()
    container.reload()
    assert container.status == "running"
    assert reap_orphan_containers(client) == [container.name]  # what every command runs before it starts a container
    with pytest.raises(docker.errors.NotFound):
        container.reload()


@pytest.mark.timeout(1200)  # publishes: 8 GB pushed when it runs alone, seconds after the publish test filled the registry
def test_planted_token_appears_nowhere(client, registry, tmp_path, no_leftover_containers):
    """Build and push with a token in the environment, run, then scan layers, labels, env, history and logs.

    The layers are read back from the registry the image was pushed to, streamed: `docker save`
    would first write the whole multi-GB image to the daemon's disk, then to ours.
    """
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "PFMBENCH_IMAGES_LOCK": str(tmp_path / "images.lock")}
    build = subprocess.run([sys.executable, "-m", "harness.cli", "images", "build", "phikon", "--skip-base"],
                           capture_output=True, text=True, timeout=900, env=env)
    assert build.returncode == 0, build.stderr
    image = client.images.get(local_tag("phikon"))
    assert FAKE_TOKEN not in str(image.attrs["Config"].get("Env")) + str(image.labels)
    assert all(FAKE_TOKEN not in (h.get("CreatedBy") or "") for h in image.history())
    push = subprocess.run([sys.executable, "-m", "harness.cli", "images", "publish", "phikon", "--registry", registry],
                          capture_output=True, text=True, timeout=900, env=env)
    assert push.returncode == 0, push.stderr
    assert FAKE_TOKEN not in push.stdout + push.stderr + build.stdout + build.stderr

    manifest, config = _registry_image(registry, "pfmbench/phikon", __version__)
    assert FAKE_TOKEN.encode() not in manifest + config
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    layers = json.loads(manifest)["layers"]
    assert len(layers) == len(diff_ids) == len(image.attrs["RootFS"]["Layers"])
    # The scanner must see what is there: the model's Dockerfile, copied into the image, is a positive control.
    control = b'org.pfmbench.source="hf:owkin/phikon"'
    files, hits = 0, []
    for layer in layers:
        n, found = _layer_hits(registry, "pfmbench/phikon", layer["digest"], (FAKE_TOKEN.encode(), control))
        files += n
        hits += found
    assert files > 1000  # the venv's files were read, not an empty stream
    assert [needle for needle, _ in hits] == [control], hits

    rt = DockerRuntime(get_spec("phikon"), ResolvedWeights.random())
    os.environ["HF_TOKEN"] = FAKE_TOKEN
    try:
        with rt:
            rt.infer(__import__("numpy").zeros((1, 224, 224, 3), "uint8"), (11,))
            attrs = rt.container.attrs
            logs = rt.logs(10000)
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert FAKE_TOKEN not in str(attrs["Config"]["Env"]) + str(attrs["Args"]) + logs


_MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")


def _registry_get(registry: str, path: str, accept: str | None = None):
    import urllib.request

    req = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept} if accept else {})
    return urllib.request.urlopen(req, timeout=60)


def _registry_image(registry: str, repo: str, tag: str) -> tuple[bytes, bytes]:
    """The pushed manifest and image config, as the registry serves them."""
    with _registry_get(registry, f"{repo}/manifests/{tag}", ", ".join(_MANIFEST_TYPES)) as r:
        manifest = r.read()
    with _registry_get(registry, f"{repo}/blobs/{json.loads(manifest)['config']['digest']}") as r:
        return manifest, r.read()


def _layer_hits(registry: str, repo: str, digest: str, needles: tuple[bytes, ...]) -> tuple[int, list[tuple[bytes, str]]]:
    """Stream one layer blob (a gzipped tar); return its file count and each (needle, path) found in a path, link or file."""
    files, hits = 0, []
    width = max(map(len, needles))
    with _registry_get(registry, f"{repo}/blobs/{digest}") as blob, tarfile.open(fileobj=blob, mode="r|*") as layer:
        for member in layer:
            hits += [(n, member.name) for n in needles if n in (member.name + member.linkname).encode()]
            if not member.isfile():
                continue
            files += 1
            f, tail = layer.extractfile(member), b""
            while chunk := f.read(1 << 22):
                hits += [(n, member.name) for n in needles if n in tail + chunk and (n, member.name) not in hits]
                tail = chunk[-width:]
    return files, hits


def test_training_job_in_the_image_survives_kill_9_and_equals_the_local_job(client, tmp_path, no_leftover_containers):
    """LoRA trains inside the phikon image; the harness is killed mid-run; the same command removes the
    orphaned container, resumes from the checkpoint and writes one row, equal to the same job run locally."""
    common = ["-m", "phikon", "-d", "nuclei-sample", "-s", "lora", "--epochs", "4", "--input-size", "64"]
    args = [sys.executable, "-m", "harness.cli", "bench", "--no-progress", *common, "--runtime", "docker", "--results-dir", str(tmp_path / "docker")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def checkpointed() -> bool:
        assert proc.poll() is None, proc.communicate()
        return bool(list((tmp_path / "docker").glob("runs/*/checkpoint.pt")))

    wait_until(checkpointed, 600, "the job's first checkpoint")
    proc.kill()
    proc.wait()
    (run_dir,) = (tmp_path / "docker").glob("runs/*")
    orphan = client.containers.get(f"pfmbench-train-{run_dir.name[:16]}")  # a container does not die with its harness
    again = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"resuming run {run_dir.name}" in again.stderr
    import docker.errors

    with pytest.raises(docker.errors.NotFound):
        orphan.reload()  # removed before the resumed job started
    (row,) = read_rows(tmp_path / "docker")
    # the image's identity: its registry digest once pushed (an earlier test may have), else its local id
    assert row["runtime"] == "docker" and row["image_digest"] == image_identity(client.images.get(local_tag("phikon")), "phikon") and row["run_key"] == run_dir.name
    local = bench(*common, "--runtime", "local", "--results-dir", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    (lrow,) = read_rows(tmp_path / "local")
    for m in METRICS + ("best_epoch", "best_val", "trainable_params"):
        assert row[m] == lrow[m], m


def test_perf_measures_the_docker_runtime_beside_in_process(client, no_leftover_containers):
    from harness.perf.transfer import run_perf

    report = run_perf(["phikon"], [2], [64], modes=("inprocess", "docker"), iters=1, log=lambda _: None)
    docker_row = next(r for r in report.transfer if r.mode == "docker")
    assert report.skipped == [] and docker_row.images_per_s > 0 and docker_row.ratio_to_inprocess is not None


def test_a_gpu_run_creates_its_server_container_with_a_request_for_that_gpu(client, no_leftover_containers):
    """The daemon records what the harness asks for; the container is created, not started (this machine has no NVIDIA runtime)."""
    from harness.runtime.docker import server_container

    args = server_container(get_spec("phikon"), ResolvedWeights.random(0), "cuda:1", "pfmbench-gpu-request-test", "token")
    container = client.containers.create(client.images.get(local_tag("phikon")).id, **args)
    try:
        host = container.attrs["HostConfig"]
        assert [(r["DeviceIDs"], r["Capabilities"]) for r in host["DeviceRequests"]] == [(["1"], [["gpu"]])]
        assert container.attrs["Config"]["Cmd"][container.attrs["Config"]["Cmd"].index("--device") + 1] == "cuda"
        assert {b[0]["HostIp"] for b in host["PortBindings"].values()} == {"127.0.0.1"}
    finally:
        container.remove(force=True)


def test_the_image_carries_the_gpu_set_and_still_runs_onnx_on_a_cpu(client, no_leftover_containers):
    """onnxruntime-gpu (requirements-gpu.lock) replaced the CPU wheel in the image: CUDA and TensorRT providers listed, the CPU one kept."""
    code = ("import importlib.metadata as m, onnxruntime as o, torch; "
            "print(m.version('onnxruntime-gpu'), 'onnxruntime' in {d.metadata['Name'] for d in m.distributions()}, "
            "','.join(o.get_available_providers()), torch.version.cuda)")
    out = client.containers.run(client.images.get(local_tag("phikon")).id, ["python", "-c", code], remove=True, labels=owner_labels()).decode().split()
    gpu_lock = (Path(__file__).resolve().parent.parent / "requirements-gpu.lock").read_text()
    assert f"onnxruntime-gpu=={out[0]}" in gpu_lock and out[1] == "False"  # the locked GPU wheel, and no CPU wheel beside it
    assert {"TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"} <= set(out[2].split(","))
    assert out[3] != "None"  # torch in the image is a CUDA build
    run = ("import numpy as np; from harness.models.spec import get_spec; from harness.models.weights import ResolvedWeights; "
           "from harness.serve.engines import build_engine; "
           "t, c = build_engine(get_spec('phikon'), ResolvedWeights.random(0), 'cpu', 'onnx').extract(np.zeros((2, 32, 32, 3), np.uint8)); "
           "print(t.shape, t.dtype, bool(np.isfinite(t).all()))")
    shape = client.containers.run(client.images.get(local_tag("phikon")).id, ["python", "-c", run], remove=True, labels=owner_labels()).decode()
    assert shape.strip().endswith("(2, 1, 2, 2, 768) float16 True"), shape  # the GPU wheel's CPU provider ran the export
