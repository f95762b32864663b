"""Before `make demo` / `make mini`: stop with one line naming `make unlock` when a killed
run left Snakemake's lock in this folder and no Snakemake process is running here.

Exit status 1 for a stale lock, 0 otherwise (no lock, or a live Snakemake owns it).
Linux reads the processes from /proc; elsewhere the check is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path


def snakemake_running_in(folder: Path) -> bool:
    """Whether a Snakemake process has ``folder`` as its working directory."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        if cwd == folder and any(part.endswith(b"snakemake") for part in command[:2]):
            return True
    return False


def main() -> int:
    folder = Path.cwd().resolve()
    locks = folder / ".snakemake" / "locks"
    if not Path("/proc").is_dir() or not locks.is_dir() or not any(locks.iterdir()):
        return 0
    if snakemake_running_in(folder):
        return 0
    print(
        "a killed run left Snakemake's lock in .snakemake/locks and no Snakemake is running "
        "here: `make unlock` removes it, then run the same make target again (finished jobs "
        "are kept, killed training resumes from its epoch checkpoint)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
