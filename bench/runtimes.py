"""How the orchestrator reaches each system's own client: a Python peer through ``bench.driver`` in
its virtualenv, Ruby Sidekiq through bench/ruby/driver.rb. Both answer the same commands.

Ruby Sidekiq 6.4 is Debian's ``ruby-sidekiq`` (``make system-deps`` installs it); 7.3 runs from
the unmodified sources in ../shared/vendor/ruby, used from there (its README), never copied.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import ROOT, Procs

RUBY_SYSTEMS = ("sidekiq6", "sidekiq7")
RUBY_DRIVER = ROOT / "bench" / "ruby" / "driver.rb"
VENDOR = ROOT.parent / "shared" / "vendor" / "ruby"
VENDOR_GEMS = ("sidekiq", "redis-client", "connection_pool")
SIDEKIQ_SERIES = {"sidekiq6": "6.", "sidekiq7": "7."}


class Missing(Exception):
    """The system is not installed here; the message says what is missing."""


@dataclass
class Runtime:
    command: list[str]  # the driver, to which a command and its options are appended
    env: dict[str, str] = field(default_factory=dict)  # added to the system's environment
    bin_dir: str = ""  # put first on PATH
    version: str = ""


def python(name: str, interpreter: Path) -> Runtime:
    return Runtime([str(interpreter), "-m", "bench.driver", name], bin_dir=str(interpreter.parent))


def ruby(name: str, procs: Procs) -> Runtime:
    """Sidekiq 6.4 or 7.3 with its own Ruby client, or Missing with the reason."""
    interpreter = shutil.which("ruby")
    if interpreter is None:
        raise Missing("ruby is not installed (make system-deps installs Debian's ruby-sidekiq)")
    env: dict[str, str] = {}
    if name == "sidekiq6":
        executable = shutil.which("sidekiq")
        if executable is None:
            raise Missing("Debian's ruby-sidekiq is not installed (make system-deps installs it)")
    else:
        if not (VENDOR / "sidekiq" / "lib" / "sidekiq.rb").exists():
            raise Missing(f"Sidekiq 7.3 not found in {VENDOR} (the shared vendor folder beside the project)")
        env["RUBYLIB"] = os.pathsep.join(str(VENDOR / gem / "lib") for gem in VENDOR_GEMS)
        executable = str(VENDOR / "sidekiq" / "bin" / "sidekiq")
    env["BENCH_SIDEKIQ"] = executable
    probe = {**ruby_base_env(), **env}
    try:
        version = procs.run([interpreter, "-e", 'require "sidekiq"; print Sidekiq::VERSION'], probe, 60)
    except Exception as error:
        raise Missing(f"ruby cannot load Sidekiq: {str(error).splitlines()[-1]}") from None
    version = version.strip().splitlines()[-1] if version.strip() else "?"
    if not version.startswith(SIDEKIQ_SERIES[name]):
        raise Missing(f"found Sidekiq {version}, not {SIDEKIQ_SERIES[name]}x")
    return Runtime([interpreter, str(RUBY_DRIVER)], env, version=version)


def ruby_base_env() -> dict[str, str]:
    """The environment without a caller's RUBYLIB or RUBYOPT, so 6.4 never finds 7.3's sources."""
    return {k: v for k, v in os.environ.items() if k not in ("RUBYLIB", "RUBYOPT")}
