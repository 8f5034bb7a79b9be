"""Workers on two hosts, one of which loses its network link in the middle of a trial.

The test builds the hosts itself: two network namespaces, each joined to the root
namespace by a veth pair, and its own PostgreSQL cluster listening on the root ends of
both pairs. It needs root, as CI has. Where namespaces cannot be created, it skips
with the reason.
"""

import os
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
import sqlalchemy as sa

from budgetsearch._tables import claims_table, database_for
from conftest import SYNTHETIC_STUDY, budgetsearch_command
from own_postgres import OwnPostgres, find_postgres_programs

ATTR = "budgetsearch:"


def ip(*args, namespace=None):
    command = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


class Hosts:
    """Two namespaces, ``a`` and ``b``, each with a veth link to the root namespace."""

    def __init__(self):
        tag = os.getpid() % 10000
        octet = 100 + os.getpid() % 100
        self.namespaces = {"a": f"bs{tag}a", "b": f"bs{tag}b"}
        self.root_links = {name: f"bs{tag}{name}r" for name in "ab"}
        self.server_addresses = {"a": f"10.{octet}.1.1", "b": f"10.{octet}.2.1"}
        self.network = f"10.{octet}.0.0/16"
        for index, name in enumerate("ab", start=1):
            namespace, root_link, inner_link = self.namespaces[name], self.root_links[name], f"bs{tag}{name}n"
            ip("netns", "add", namespace)
            ip("link", "add", root_link, "type", "veth", "peer", "name", inner_link)
            ip("link", "set", inner_link, "netns", namespace)
            ip("addr", "add", f"10.{octet}.{index}.1/24", "dev", root_link)
            ip("link", "set", root_link, "up")
            ip("addr", "add", f"10.{octet}.{index}.2/24", "dev", inner_link, namespace=namespace)
            ip("link", "set", inner_link, "up", namespace=namespace)
            ip("link", "set", "lo", "up", namespace=namespace)

    def cut(self, name):
        ip("link", "set", self.root_links[name], "down")

    def remove(self):
        for name in "ab":
            subprocess.run(["ip", "link", "del", self.root_links[name]], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.namespaces[name]], capture_output=True)


@pytest.fixture
def hosts():
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    else:
        probe = subprocess.run(["ip", "netns", "add", f"bsprobe{os.getpid()}"], capture_output=True, text=True)
        if probe.returncode != 0:
            reason = f"network namespaces cannot be created here: {probe.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", f"bsprobe{os.getpid()}"], capture_output=True)
    if reason:
        pytest.skip(reason)
    built = Hosts()
    yield built
    built.remove()


def claim_rows(url, study_name):
    study = optuna.load_study(study_name=study_name, storage=url)
    with database_for(study._storage).engine.connect() as connection:
        return connection.execute(sa.select(claims_table).where(claims_table.c.study_id == study._study_id)).all()


def test_cut_host_job_runs_again_on_other_host(hosts, study_name, cli_environment):
    programs = find_postgres_programs()
    if programs is None:
        pytest.fail("PostgreSQL's initdb and pg_ctl are not installed")
    server = OwnPostgres(
        programs, listen=("127.0.0.1", *hosts.server_addresses.values()), trusted_networks=(hosts.network,)
    )
    workers = {}
    try:
        create = subprocess.run(
            budgetsearch_command(
                "create", SYNTHETIC_STUDY, "--storage", server.url, "--study-name", study_name,
                "--total-budget", "120", "--seed", "5", "--heartbeat-interval", "0.5", "--grace-period", "4",
            ),
            env=cli_environment, capture_output=True, text=True, timeout=120,
        )
        assert create.returncode == 0, create.stderr
        cli_environment["SYNTHETIC_SECONDS_PER_UNIT"] = "0.15"
        for name in "ab":
            url = f"postgresql+psycopg://postgres@{hosts.server_addresses[name]}:{server.port}/test"
            command = ["ip", "netns", "exec", hosts.namespaces[name], sys.executable, "-m", "budgetsearch", "worker",
                       SYNTHETIC_STUDY, "--storage", url, "--study-name", study_name, "--db-wait", "10"]
            workers[name] = subprocess.Popen(command, env=cli_environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # Cut host a while one of its trials runs, after it has sent a heartbeat and at
        # least a second before the trial's sleep ends.
        def a_running():
            return [
                row for row in claim_rows(server.url, study_name)
                if row.state == "running" and row.worker.endswith(f":{workers['a'].pid}")
                and row.heartbeat_at > row.claimed_at and row.claimed_at + 0.15 * row.budget > time.time() + 1.0
            ]

        deadline = time.time() + 120
        running = []
        while time.time() < deadline and not running:
            time.sleep(0.2)
            running = a_running()
        (cut_claim,) = running
        hosts.cut("a")

        _, stderr_b = workers["b"].communicate(timeout=300)
        assert workers["b"].returncode == 0, stderr_b
        _, stderr_a = workers["a"].communicate(timeout=120)
        rows = claim_rows(server.url, study_name)
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
        server.remove()

    # Host a could not reach the database any more and stopped with an error.
    assert workers["a"].returncode == 1
    assert "unreachable" in stderr_a.strip().splitlines()[-1]

    by_job = {}
    for row in rows:
        by_job.setdefault((row.config, row.rung), []).append(row)
    # The cut trial was declared lost, and host b ran its job's next attempt to the end.
    lost = [row for row in by_job[(cut_claim.config, cut_claim.rung)] if row.attempt == cut_claim.attempt]
    assert [row.state for row in lost] == ["lost"], stderr_b
    retried = [row for row in by_job[(cut_claim.config, cut_claim.rung)] if row.attempt == cut_claim.attempt + 1]
    assert [row.state for row in retried] == ["complete"], stderr_b
    assert retried[0].worker.endswith(f":{workers['b'].pid}")
    # No job is lost or completed twice, and nothing is left running.
    assert "running" not in {row.state for row in rows}
    completions = Counter((row.config, row.rung) for row in rows if row.state == "complete")
    assert max(completions.values()) == 1
    for job, claims in by_job.items():
        assert any(row.state == "complete" for row in claims) or all(row.state != "lost" for row in claims), job
    assert sum(row.reserved for row in rows) <= 120
