"""The peers' virtualenv, bench/.venv-peers, installed from bench/requirements-peers.txt."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench.procs import ROOT, Procs

VENV = ROOT / "bench" / ".venv-peers"
REQUIREMENTS = ROOT / "bench" / "requirements-peers.txt"
PEERS = ("dramatiq", "celery", "rq", "arq", "huey")
SHARED = ("redis", "hiredis")
INSTALL_TIMEOUT = 900.0


def python() -> Path:
    return VENV / "bin" / "python"


def _requirements() -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return [line for line in lines if line]


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0].lower()


def ensure(procs: Procs, skip_install: bool, say: Callable[[str], None] = print) -> dict[str, str]:
    """Install what is missing; returns an error message per peer that cannot run."""
    if skip_install:
        if not python().exists():
            return {peer: f"{VENV.relative_to(ROOT)} missing (run without --skip-install)" for peer in PEERS}
        return {}
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    stamp = VENV / f".installed-{digest}"
    if stamp.exists() and python().exists():
        return {}
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if not python().exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        procs.run([sys.executable, "-m", "venv", str(VENV)], env, timeout=120)
        procs.run([str(python()), "-m", "pip", "install", "-q", "--upgrade", "pip"], env, timeout=300)
    say("installing the peers into bench/.venv-peers (pip)")
    pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    try:
        procs.run([*pip, "-r", str(REQUIREMENTS)], env, timeout=INSTALL_TIMEOUT)
    except Exception as error:  # one at a time, to tell which peer is missing
        say(f"pip install -r failed ({str(error).splitlines()[0]}); installing one by one")
        errors: dict[str, str] = {}
        for requirement in _requirements():
            try:
                procs.run([*pip, requirement], env, timeout=INSTALL_TIMEOUT)
            except Exception as one:
                name = _name(requirement)
                message = f"pip install {requirement} failed: {str(one).splitlines()[-1]}"
                if name in PEERS:
                    errors[name] = message
                elif name in SHARED:
                    errors.update({peer: message for peer in PEERS if peer not in errors})
                else:
                    say(f"warning: {message}")
        if errors:
            return errors
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return {}


def install_kiq(procs: Procs, say: Callable[[str], None] = print) -> None:
    """kiq itself into the peers' venv (editable), keeping the redis-py pinned there."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    say("installing kiq into bench/.venv-peers (same redis-py as the peers)")
    pin = next(line for line in _requirements() if _name(line) == "redis")
    pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    procs.run([*pip, "-e", str(ROOT), pin], env, timeout=INSTALL_TIMEOUT)
