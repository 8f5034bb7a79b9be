"""A PostgreSQL cluster that a test starts, restarts and stops on its own.

It lives in a new temporary folder, listens on a free loopback port and is never the
machine's shared server. PostgreSQL refuses to run as root, so under root the
server programs run as the machine's ``postgres`` user.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import sqlalchemy as sa


def find_postgres_programs():
    """Return the folder of initdb and pg_ctl, or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return os.path.dirname(on_path)
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(path.split("/")[-2]))
    for folder in reversed(folders):
        if os.path.exists(os.path.join(folder, "initdb")) and os.path.exists(os.path.join(folder, "pg_ctl")):
            return folder
    return None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OwnPostgres:
    """A throwaway PostgreSQL cluster with a database named ``test``."""

    def __init__(self, programs, listen=("127.0.0.1",), trusted_networks=()):
        """Create and start the cluster, listening on the ``listen`` addresses.

        Clients from ``trusted_networks`` (CIDR strings) connect without a password, as
        clients from loopback do.
        """
        self._programs = programs
        self._listen = ",".join(listen)
        self._user = "postgres" if os.geteuid() == 0 else None
        self.folder = tempfile.mkdtemp(prefix="budgetsearch-pg-")
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "server.log")
        self.port = free_port()
        if self._user:
            account = pwd.getpwnam(self._user)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        if trusted_networks:
            hba = os.path.join(self.data, "pg_hba.conf")
            with open(hba, "a") as file:
                for network in trusted_networks:
                    file.write(f"host all all {network} trust\n")
        self.start()
        admin = sa.create_engine(self.server_url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql("CREATE DATABASE test")
        admin.dispose()
        self.url = self.server_url("test")

    def server_url(self, database):
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program, *args):
        command = [os.path.join(self._programs, program), *args]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self):
        # A client whose network link is cut holds its locks until the server notices:
        # keepalives and the timeouts below make that take seconds, not hours.
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses={self._listen} -c fsync=off "
            "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 "
            "-c tcp_user_timeout=3000 -c idle_in_transaction_session_timeout=5000"
        )
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")

    def stop(self):
        # Fast shutdown ends every session at once, as a server restart does.
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self):
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # Already stopped.
        shutil.rmtree(self.folder, ignore_errors=True)
