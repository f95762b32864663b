"""A real one-node SLURM cluster on this machine (Debian's ``slurm-wlm`` and ``munge``),
for the workflow's SLURM test; also usable by hand:

    python tests/slurm_cluster.py start /tmp/slurm
    python tests/slurm_cluster.py stop /tmp/slurm

The daemons' state, logs and pid files live under one folder; ``slurm.conf`` (one node,
one partition ``debug``, no GPUs, no accounting database) is written to SLURM's default
path, ``/etc/slurm/slurm.conf``, because Snakemake's jobstep plugin drops every
``SLURM_*`` variable, ``SLURM_CONF`` included, before the ``srun`` inside a job: a cluster
found only through ``SLURM_CONF`` fails every job. A ``slurm.conf`` that this module did
not write is never replaced. ``munged`` runs as the ``munge`` user with the packaged
key. :func:`start` raises :class:`Unavailable` with the reason when SLURM cannot start
here (not installed, not root, a daemon fails).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PARTITION = "debug"
DAEMONS = ("slurmctld", "slurmd")
CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by repq's tests/slurm_cluster.py"
# squeue forgets a finished job after MinJobAge seconds; the executor plugin's squeue
# status check needs it at least 3x its first status-check delay (1 s in the test).
MIN_JOB_AGE = 30


class Unavailable(RuntimeError):
    """SLURM cannot run here; the message says why."""


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    return total_kb // 1024 - 1024


def slurm_conf(root: Path, cpus: int) -> str:
    host = socket.gethostname()
    return f"""{MARKER}
ClusterName=repq-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={host} CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _require_installed() -> None:
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(b)]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise Unavailable("the one-node cluster runs its daemons as root")
    if not Path("/etc/munge/munge.key").exists():
        raise Unavailable("no munge key at /etc/munge/munge.key")


def _start_munge() -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    result = subprocess.run(
        ["runuser", "-u", "munge", "--", "munged"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise Unavailable(f"munged did not start: {result.stderr.strip()}")


def _write_conf(root: Path, cpus: int) -> None:
    if CONF.exists() and MARKER not in CONF.read_text(errors="replace"):
        raise Unavailable(f"{CONF} belongs to another cluster; not replaced")
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(slurm_conf(root, cpus))


def _wait_idle(root: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        if result.stdout.strip() == "idle":
            return
        time.sleep(0.3)
    logs = "".join(
        (root / f"{d}.log").read_text()[-500:] for d in DAEMONS if (root / f"{d}.log").exists()
    )
    raise Unavailable(f"the node did not become idle in {timeout} s: {logs}")


def start(root: Path, cpus: int | None = None, timeout: float = 30) -> None:
    """Start munge, slurmctld and slurmd for a one-node cluster under ``root`` (SLURM's
    commands find it through its default config path)."""
    _require_installed()
    root = root.resolve()
    for folder in ("state", "spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _write_conf(root, cpus or os.cpu_count() or 1)
    _start_munge()
    for daemon in DAEMONS:
        result = subprocess.run([daemon, "-f", str(CONF)], capture_output=True, text=True)
        if result.returncode != 0:
            stop(root)
            raise Unavailable(f"{daemon} did not start: {result.stderr.strip()[-500:]}")
    _wait_idle(root, timeout)


def stop(root: Path) -> None:
    """Stop the cluster's daemons (munged is left running: other clusters may use it)."""
    for daemon in DAEMONS:
        pid_file = root / f"{daemon}.pid"
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            continue


if __name__ == "__main__":
    action, folder = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        begun = time.monotonic()
        start(folder)
        up_s = time.monotonic() - begun
        print(f"one-node SLURM up in {up_s:.1f} s ({CONF}); stop: {sys.argv[0]} stop {folder}")
    else:
        stop(folder)
