"""The package as a user gets it: the sdist and wheel ``python -m build`` makes, and clean venvs holding the wheel.

Both work offline, as the suite must. ``build`` runs the build backend (hatchling, from the test
extra) in this environment (``--no-isolation``) instead of downloading it, and builds the wheel
from the sdist, so a file missing from the sdist breaks the wheel. ``install_wheel`` makes a
venv that holds the wheel and, beside it, exactly the distributions the wheel's own metadata
requires (with the extras asked for), resolved over this environment's installed set, which
``make`` installed from the constraints file. They are symlinked in from this environment, by
their RECORDs (a whole directory where only they have files in it), so nothing is downloaded or
copied and nothing else is visible: not the test extra, not the editable install of the source
tree. The wheel itself is installed by pip, ``--no-deps --no-index``, and ``pip check`` then
vouches that the venv satisfies its metadata and that of everything in it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Distributions:
    sdist: Path
    wheel: Path

    def wheel_names(self) -> list[str]:
        with zipfile.ZipFile(self.wheel) as wheel:
            return wheel.namelist()

    def sdist_names(self) -> list[str]:
        with tarfile.open(self.sdist) as sdist:
            return sdist.getnames()

    def wheel_metadata(self) -> Message:
        return wheel_metadata(self.wheel)


def wheel_metadata(wheel: Path) -> Message:
    """The wheel's core metadata (Requires-Dist, Requires-Python, ...)."""
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return HeaderParser().parsestr(archive.read(name).decode())


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for the subprocesses here: no pip config (so no index, no find-links), no network."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "AIRFLOW_HOME")  # AIRFLOW_HOME: the suite's throwaway
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    env.update(extra)
    return env


def run(
    args: Sequence[str | os.PathLike], *, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run a command offline; fail with its output if it fails."""
    command = [str(a) for a in args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or offline_env(), **kwargs)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def build(outdir: Path) -> Distributions:
    """``python -m build --no-isolation``: the sdist, then the wheel built from it."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", outdir, ROOT], cwd=outdir)
    [sdist] = outdir.glob("*.tar.gz")
    [wheel] = outdir.glob("*.whl")
    return Distributions(sdist=sdist, wheel=wheel)


def required_distributions(requirements: Iterable[str], extras: Sequence[str] = ()) -> list[metadata.Distribution]:
    """Every installed distribution the requirements need, transitively, with their extras and markers."""
    installed: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():  # in sys.path order: the first of a name is the one imported
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()
    pending = [(Requirement(r), extra) for r in requirements for extra in ("", *extras)]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            if name not in installed:
                raise AssertionError(f"{requirement} is required but not installed in {sys.prefix}")
            dist = installed[name]
            if not requirement.specifier.contains(dist.version, prereleases=True):
                raise AssertionError(f"{requirement} is required but {name} {dist.version} is installed")
            found[name] = dist
            pending.extend((Requirement(r), wanted) for r in dist.requires or ())
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _site_packages(venv: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(run([venv / "bin" / "python", "-I", "-c", code]).stdout.strip())


def _record(dist: metadata.Distribution) -> list[str]:
    """The distribution's files, relative to site-packages, leaving out console scripts (the venv runs `python -m`)."""
    rows = csv.reader((dist.read_text("RECORD") or "").splitlines())
    return [row[0] for row in rows if row and not row[0].startswith("../")]


def _link_in(dists: Sequence[metadata.Distribution], site_packages: Path) -> None:
    """Link the distributions' files into ``site_packages``: a whole directory where only they own files in it."""
    [base] = {Path(d.locate_file("")) for d in dists}  # this venv's site-packages
    wanted = {canonicalize_name(d.metadata["Name"]) for d in dists}
    owners: dict[str, set[str]] = defaultdict(set)  # directory -> every installed distribution with files in it
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for directory in _parents(_record(dist)):
            owners[directory].add(name)
    children: dict[str, set[str]] = defaultdict(set)
    for dist in dists:
        for file in _record(dist):
            path = file
            while "/" in path:
                parent = path.rpartition("/")[0]
                children[parent].add(path)
                path = parent
            children[""].add(path)

    def place(path: str) -> None:
        if owners.get(path, wanted) <= wanted:
            os.symlink(base / path, site_packages / path)
            return
        (site_packages / path).mkdir()
        for child in children[path]:
            place(child)

    for top in children[""]:
        place(top)


def _parents(files: Iterable[str]) -> set[str]:
    parents: set[str] = set()
    for file in files:
        path = file
        while "/" in path:
            path = path.rpartition("/")[0]
            if path in parents:
                break
            parents.add(path)
    return parents


def install_wheel(wheel: Path, venv: Path, extras: Sequence[str] = (), also: Sequence[str] = ()) -> Path:
    """
    A new venv holding the wheel (as ``pip install <wheel>[extras]``) and only what it requires; returns its python.

    :param extras: the wheel's extras to install, e.g. ``["testing"]``.
    :param also: more requirements from this environment, e.g. ``["pytest"]`` to run a user's tests.
    """
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site_packages = _site_packages(venv)
    requires = wheel_metadata(wheel).get_all("Requires-Dist") or []
    _link_in(required_distributions([*requires, *also], extras), site_packages)
    pip = [sys.executable, "-m", "pip", "--python", python]
    run([*pip, "install", "--no-deps", "--no-index", "--no-compile", wheel])
    run([*pip, "check"])
    return python
