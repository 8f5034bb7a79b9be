"""The docker, Kubernetes and SLURM files: their wiring, and their command lines run for real.

The command lines run here against a local SQLite database in place of the container's
PostgreSQL, with the same environment variable for the storage URL.
"""

import os
import re
import shlex
import signal
import subprocess
import time

import optuna
import pytest
import yaml

from conftest import budgetsearch_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")


def load_yaml(*parts):
    with open(os.path.join(DOCKER, *parts)) as file:
        return list(yaml.safe_load_all(file))


@pytest.fixture(scope="module")
def compose():
    return load_yaml("compose.yaml")[0]


def test_compose_services_and_wiring(compose):
    services = compose["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["volumes"][0].split(":")[0] in compose["volumes"]
    assert postgres["env_file"] == ".env"
    with open(os.path.join(DOCKER, ".env.example")) as file:
        example = dict(line.strip().split("=", 1) for line in file if "=" in line and not line.startswith("#"))
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(example)

    workers = {name: service for name, service in services.items() if name.startswith("worker-")}
    assert len(workers) >= 2
    gpus = []
    for service in [*workers.values(), services["create"]]:
        url = service["environment"]["BUDGETSEARCH_STORAGE"]
        assert url == "postgresql+psycopg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/${POSTGRES_DB}"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in workers.values():
        assert service["depends_on"]["create"]["condition"] == "service_completed_successfully"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        assert "count" not in device
        gpus += device["device_ids"]
    # Each worker has a GPU of its own.
    assert sorted(gpus) == [str(index) for index in range(len(workers))]
    assert services["create"]["command"][0] == "create"
    assert services["create"]["restart"] == "no"


def test_dockerfile_runs_as_non_root_with_studies():
    with open(os.path.join(DOCKER, "Dockerfile")) as file:
        text = file.read()
    assert re.search(r"^FROM pytorch/pytorch:.*cuda", text, re.M)
    assert re.search(r"^USER tuner$", text, re.M)
    assert "COPY studies ./studies" in text
    assert 'ENTRYPOINT ["budgetsearch"]' in text


def test_kubernetes_jobs():
    (secret,) = load_yaml("k8s", "secret.example.yaml")
    (create,) = load_yaml("k8s", "create-job.yaml")
    (workers,) = load_yaml("k8s", "workers-job.yaml")
    assert secret["kind"] == "Secret"
    assert workers["spec"]["completionMode"] == "Indexed"
    assert workers["spec"]["parallelism"] == workers["spec"]["completions"]
    for job in (create, workers):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        (env,) = container["env"]
        assert env["name"] == "BUDGETSEARCH_STORAGE"
        assert env["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "url"}
    (worker,) = workers["spec"]["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][0] == "worker"


def test_slurm_script_parses():
    result = subprocess.run(["bash", "-n", os.path.join(DOCKER, "k8s", "slurm-array.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def slurm_command():
    with open(os.path.join(DOCKER, "k8s", "slurm-array.sh")) as file:
        lines = file.read().splitlines()
    line = lines[lines.index("# The worker command:") + 1]
    return [arg.replace("${SLURM_ARRAY_TASK_ID:-0}", "0") for arg in shlex.split(line)]


def run_then_stop(command, environment, url, study_name):
    """Run a worker command until it completes a trial, then stop it as docker stop would (SIGTERM)."""

    def complete():
        trials = optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)

    before = complete()
    worker = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and worker.poll() is None and complete() == before:
            time.sleep(0.5)
        assert worker.poll() is None, worker.communicate()[1]
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    # 143 (128 + SIGTERM): stopped by the signal after a clean exit of the running trial.
    assert worker.returncode == 143, stderr


def test_files_command_lines_run(compose, tmp_path, cli_environment):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    cli_environment["BUDGETSEARCH_STORAGE"] = url
    cli_environment["BUDGETSEARCH_DATA_DIR"] = str(tmp_path / "data")
    services = compose["services"]
    (k8s_create,) = load_yaml("k8s", "create-job.yaml")
    (k8s_workers,) = load_yaml("k8s", "workers-job.yaml")
    create_args = k8s_create["spec"]["template"]["spec"]["containers"][0]["args"]
    assert create_args == services["create"]["command"]

    create = subprocess.run(budgetsearch_command(*create_args), env=cli_environment, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert create.returncode == 0, create.stderr
    study_name = create_args[create_args.index("--study-name") + 1]
    # Creating again with the same command line checks the stored settings and passes.
    again = subprocess.run(budgetsearch_command(*create_args), env=cli_environment, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr

    worker_args = k8s_workers["spec"]["template"]["spec"]["containers"][0]["args"]
    worker_args = [arg.replace("$(JOB_COMPLETION_INDEX)", "3") for arg in worker_args]
    commands = [
        budgetsearch_command(*services["worker-0"]["command"]),
        budgetsearch_command(*worker_args),
        budgetsearch_command(*slurm_command()[1:]),
    ]
    assert slurm_command()[0] == "budgetsearch"
    for command in commands:
        run_then_stop(command, cli_environment, url, study_name)

    status = subprocess.run(budgetsearch_command(*services["status"]["command"]), env=cli_environment, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert study_name in status.stdout


def documented_commands():
    """Yield each budgetsearch command line in docs/distributed.md's shell blocks and the docker files."""
    with open(os.path.join(ROOT, "docs", "distributed.md")) as file:
        text = file.read()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)  # Environment assignments before the command.
            if words and words[0] == "budgetsearch":
                yield [word for word in words[1:] if word != "&"]
    compose = load_yaml("compose.yaml")[0]
    for service in compose["services"].values():
        command = service.get("command")
        if command and service.get("image", "").startswith("budgetsearch"):
            yield command
    for name in ("create-job.yaml", "workers-job.yaml"):
        (job,) = load_yaml("k8s", name)
        yield job["spec"]["template"]["spec"]["containers"][0]["args"]
    yield slurm_command()[1:]


def test_documented_commands_match_cli():
    from budgetsearch.cli import build_parser

    parser = build_parser()
    commands = list(documented_commands())
    assert len(commands) >= 12
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"budgetsearch {' '.join(args)} does not parse with the CLI")
