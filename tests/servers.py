"""A real ``mlflow server`` process on localhost that a test starts, kills and restarts."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a SQLite store and proxied artifacts under ``root``;
    ``auth`` starts MLflow's basic-auth app (admin password ``admin_password``)."""

    admin_password = "repq-test-admin-7"

    def __init__(self, root: Path, auth: bool = False) -> None:
        self.root, self.auth = root, auth
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        if self.auth:
            config = self.root / "basic_auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.root / 'auth.db'}\n"
                "admin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.admin_password
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "repq-test-csrf-key"
        return env

    def start(self, timeout: float = 90) -> None:
        command = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            *(["--app-name", "basic-auth"] if self.auth else []),
        ]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server's lifetime
        self.process = subprocess.Popen(
            command, cwd=self.root, env=self._env(), stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not answer in {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")

    def rest(self, endpoint: str, body: dict | None = None, user: str | None = None) -> dict:
        """One call of MLflow's REST API (GET without ``body``, else POST)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.uri}/api/2.0/mlflow/{endpoint}", data=data)
        request.add_header("Content-Type", "application/json")
        if user is not None:
            token = base64.b64encode(f"{user}:{self.admin_password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def runs_tagged(self, key: str, value: str, user: str | None = None) -> list[dict]:
        """Every run of every experiment whose tag ``key`` is ``value`` (REST search)."""
        experiments = self.rest("experiments/search", {"max_results": 1000}, user)
        ids = [e["experiment_id"] for e in experiments.get("experiments", [])]
        body = {"experiment_ids": ids, "filter": f"tags.{key} = '{value}'", "max_results": 1000}
        return self.rest("runs/search", body, user).get("runs", [])
