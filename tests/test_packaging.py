"""The distributions: what `python -m build` makes, what a user's `pip install` gets, and the versions they promise."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path, PurePosixPath

import pytest
from built_package import ROOT, install_wheel, offline_env, run
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import airflow_ecr_retag

# The dependencies whose supported range the README's table states, with the extra that brings each.
SUPPORTED = {
    "apache-airflow": None,
    "apache-airflow-providers-amazon": None,
    "apache-airflow-providers-common-compat": None,
    "botocore": None,
    "aiobotocore": "async",
    "moto": "testing",
}
TEST_ONLY = ("pytest", "hypothesis", "moto", "ruff", "build", "twine")


def pins(constraints: str) -> dict[str, str]:
    lines = (ROOT / "constraints" / constraints).read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def readme_supported_versions() -> dict[str, tuple[str, str]]:
    """The README's "Supported versions" table: distribution (or "python") -> (floor, tested)."""
    section = (ROOT / "README.md").read_text().split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[1][:1].isdigit():
            named = re.search(r"`([\w.-]+)`", cells[0])
            rows[named.group(1) if named else cells[0].lower()] = (cells[1], cells[2])
    return rows


def test_the_sdist_and_the_wheel_pass_twine_check(built_distributions):
    out = run(
        [sys.executable, "-m", "twine", "check", "--strict", built_distributions.sdist, built_distributions.wheel]
    )
    assert out.stdout.count("PASSED") == 2


def test_the_wheel_ships_the_package_with_py_typed_and_no_tests(built_distributions):
    names = built_distributions.wheel_names()
    assert "airflow_ecr_retag/py.typed" in names
    top_level = {PurePosixPath(n).parts[0] for n in names}
    version = airflow_ecr_retag.__version__
    assert top_level == {"airflow_ecr_retag", f"airflow_ecr_retag-{version}.dist-info"}
    test_files = [n for n in names if re.fullmatch(r"(test_.*|.*_test|conftest)\.py", PurePosixPath(n).name)]
    assert test_files == []
    # The wheel was built from the sdist, so the sdist holds every file of the package.
    assert f"airflow_ecr_retag-{version}/airflow_ecr_retag/py.typed" in built_distributions.sdist_names()


def test_the_wheel_declares_exactly_the_ranges_ci_tests_and_the_readme_states(built_distributions):
    """Each supported range runs from the floor set's pin to the tested set's pin, and the README says so."""
    metadata = built_distributions.wheel_metadata()
    floor, tested, readme = pins("floor.txt"), pins("tested.txt"), readme_supported_versions()
    declared = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    for name, extra in SUPPORTED.items():
        where = (
            [r for r in declared if r.name == name and r.marker is None]
            if extra is None
            else [
                r for r in declared if r.name == name and r.marker is not None and r.marker.evaluate({"extra": extra})
            ]
        )
        assert where, f"{name} is not declared{f' in the {extra} extra' if extra else ''}"
        for requirement in (r for r in declared if r.name == name):
            assert {str(s) for s in requirement.specifier} == {f">={floor[name]}", f"<={tested[name]}"}, requirement
        assert readme[name] == (floor[name], tested[name]), name
    major, minor = sys.version_info[:2]
    assert {str(s) for s in SpecifierSet(metadata["Requires-Python"])} == {
        f">={major}.{minor}",
        f"<{major}.{minor + 1}",
    }
    assert readme["python"] == (f"{major}.{minor}", f"{major}.{minor}")


@pytest.fixture(scope="module")
def wheel_venv(built_distributions, tmp_path_factory):
    """`pip install airflow-ecr-retag` without any extra, in a clean venv."""
    return install_wheel(built_distributions.wheel, tmp_path_factory.mktemp("venv") / "plain")


def test_the_wheel_alone_imports_without_the_test_extra(wheel_venv, tmp_path):
    code = (
        "import importlib, importlib.util, json, airflow_ecr_retag as p;"
        "from airflow_ecr_retag import EcrRetagOperator, EcrTagSensor, EcrTagHygieneOperator;"
        "info = p.get_provider_info();"
        "modules = [m for s in ('operators', 'sensors', 'triggers') for e in info[s] for m in e['python-modules']];"
        "[importlib.import_module(m) for m in modules];"
        "importlib.import_module(info['extra-links'][0].rpartition('.')[0]);"
        f"present = [m for m in {TEST_ONLY!r} if importlib.util.find_spec(m)];"
        "print(json.dumps({'file': p.__file__, 'version': p.__version__, 'modules': modules, 'present': present}))"
    )
    # Older Airflow releases log INFO lines to stdout while importing: the report is the last line.
    env = offline_env(AIRFLOW_HOME=str(tmp_path))
    out = json.loads(run([wheel_venv, "-I", "-c", code], env=env, cwd=tmp_path).stdout.splitlines()[-1])
    venv = wheel_venv.parent.parent
    assert Path(out["file"]).is_relative_to(venv), out["file"]  # the wheel's copy, not the source tree
    assert out["version"] == airflow_ecr_retag.__version__
    assert "airflow_ecr_retag.triggers.tag" in out["modules"]
    assert out["present"] == []


def test_airflow_providers_list_shows_the_installed_wheel(wheel_venv, tmp_path):
    env = offline_env(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = run([wheel_venv, "-I", "-m", "airflow", "providers", "list", "--output", "json"], env=env, cwd=tmp_path)
    providers = {row["package_name"]: row for row in json.loads(out.stdout[out.stdout.index("[{") :])}
    assert providers["airflow-ecr-retag"]["version"] == airflow_ecr_retag.__version__
    assert "apache-airflow-providers-amazon" in providers
