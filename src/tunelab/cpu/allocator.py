"""A faster C allocator under training: jemalloc or mimalloc, preloaded before the process starts.

On glibc's malloc a training step of the same size gets slower as a CPU run goes on: the heap
fragments under activations of many sizes (packed rows vary in length). Measured over 140
steps of the same batches: +21 % per token on glibc, flat on jemalloc and mimalloc, the
training bit for bit the same (bench/results/*-allocator.md). An allocator replaces malloc
only when the dynamic linker loads it first, so ``tunelab train`` starts itself again with
``LD_PRELOAD`` naming it; the workers of ``--nproc`` inherit the environment.

The choice: ``TUNELAB_ALLOCATOR=system`` keeps glibc's malloc, a path preloads that library;
otherwise the system's jemalloc (Debian: ``libjemalloc2``) where there is one, else mimalloc
from the ``cmeel-mimalloc`` wheel. A user's own ``LD_PRELOAD`` is left alone. Linux on
glibc only: other systems have their own allocators.
"""

from __future__ import annotations

import os
import platform
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from tunelab.errors import TunelabError

CHOICE = "TUNELAB_ALLOCATOR"
KEEP_SYSTEM = "system"
PRELOAD = "LD_PRELOAD"
# what the restarted process finds, so it does not start again
STARTED_WITH = "TUNELAB_PRELOADED_ALLOCATOR"
JEMALLOC = "libjemalloc.so.2"
KNOWN = ("jemalloc", "mimalloc", "tcmalloc")


def on_glibc() -> bool:
    """Whether this process runs on Linux's glibc, whose malloc a preload replaces."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def library_directories() -> list[Path]:
    """Where Linux distributions keep shared libraries, this machine's architecture first."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    named = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if multiarch else []
    return [Path(p) for p in [*named, "/usr/lib64", "/usr/lib", "/usr/local/lib"]]


def system_jemalloc(directories: list[Path] | None = None) -> Path | None:
    """The system's jemalloc, if a package installed it."""
    for directory in directories if directories is not None else library_directories():
        if (directory / JEMALLOC).is_file():
            return directory / JEMALLOC
    return None


def packaged_mimalloc(distribution: str = "cmeel-mimalloc") -> Path | None:
    """mimalloc's shared library from its PyPI wheel, if it is installed."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libmimalloc.so") and "debug" not in file.name:
            located = Path(str(file.locate()))
            if located.is_file():
                return located
    return None


def chosen_library(environment: dict[str, str] | None = None) -> Path | None:
    """The allocator to preload: the user's ``TUNELAB_ALLOCATOR``, else jemalloc, else
    mimalloc; None for glibc's own."""
    environment = os.environ if environment is None else environment
    choice = environment.get(CHOICE, "").strip()
    if choice == KEEP_SYSTEM:
        return None
    if choice:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise TunelabError(
                f"{CHOICE}={choice}: no such file; expected the path of an allocator's shared "
                f"library (a .so file) or '{KEEP_SYSTEM}' for the system's malloc"
            )
        return path.resolve()
    return system_jemalloc() or packaged_mimalloc()


def preload_command(
    original: list[str], environment: dict[str, str]
) -> tuple[list[str], dict] | None:
    """The command and environment that run the interpreter's ``original`` command line
    (``sys.orig_argv``) again with a faster allocator; None when this process should go on
    as it is (already preloaded, the user's own ``LD_PRELOAD``, not Linux/glibc, or no
    allocator found or wanted)."""
    if not on_glibc() or STARTED_WITH in environment or environment.get(PRELOAD):
        return None
    library = chosen_library(environment)
    if library is None:
        return None
    restarted = {**environment, PRELOAD: str(library), STARTED_WITH: str(library)}
    # the whole original line, so the interpreter's own options (-X, -W, -O) and a script
    # that wraps tunelab's main() run again too
    return [sys.executable, *original[1:]], restarted


def restart_with_allocator(original: list[str] | None = None) -> None:
    """Replace this process by the same command with a faster allocator preloaded, when
    ``preload_command`` says so; otherwise return and go on."""
    planned = preload_command(sys.orig_argv if original is None else original, dict(os.environ))
    if planned is None:
        return
    command, environment = planned
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, environment)


def allocator_in_use(maps: Path = Path("/proc/self/maps")) -> str:
    """Which malloc this process runs on, from the libraries mapped into it: jemalloc,
    mimalloc, tcmalloc, or 'system'."""
    try:
        mapped = maps.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return KEEP_SYSTEM
    for name in KNOWN:
        if f"lib{name}" in mapped:
            return name
    return KEEP_SYSTEM
