"""Container images of the components: ``{registry}/embedpipe-{role}:{tag}`` (built from docker/).

Roles: ``base`` (data build, merge, tracking, job launchers), ``sdg`` (vLLM for synthetic data), ``train`` (torch,
DeepSpeed, faiss: mining and training), ``eval`` (mteb), ``serve`` (the KServe runtime). Components are declared
with the default registry and tag; ``embedpipe compile`` rewrites them to the recipe's ``pipeline.image_registry``
and ``pipeline.image_tag``.
"""

from __future__ import annotations

DEFAULT_REGISTRY = "ghcr.io/embedpipe"
DEFAULT_TAG = "0.1.0"
ROLES = ("base", "sdg", "train", "eval", "serve")


def image(role: str, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown image role {role!r}; one of {ROLES}")
    return f"{registry.rstrip('/')}/embedpipe-{role}:{tag}"


def retarget(ir: dict, registry: str, tag: str) -> dict:
    """Point every executor of a compiled pipeline (IR dict) at ``registry``/``tag``."""
    executors = ir.get("deploymentSpec", {}).get("executors", {})
    for executor in executors.values():
        container = executor.get("container")
        if not container:
            continue
        for role in ROLES:
            if container.get("image") == image(role):
                container["image"] = image(role, registry, tag)
    return ir


# --- which source an image was built from ---------------------------------------------------------------------
# The Dockerfile labels each image with the digest of the embedpipe source it copied (SOURCE_LABEL; the build checks
# the label against the files it copied), and `embedpipe run --runner docker` refuses images whose digest is not the
# checkout's: a step would otherwise run older code than the one being worked on.

SOURCE_LABEL = "org.embedpipe.source-digest"
SOURCE_PARTS = ("pyproject.toml", "setup.py", "embedpipe", "components", "pipelines")


def source_digest(root) -> str:
    """sha256 over the paths and bytes of embedpipe's installable source under ``root`` (SOURCE_PARTS; symlinks,
    ``__pycache__``, ``*.pyc`` and ``*.egg-info`` left out, as docker/.dockerignore leaves them out of the build)."""
    import hashlib
    import os
    from pathlib import Path

    root = Path(root)
    files: list[str] = []
    for part in SOURCE_PARTS:
        top = root / part
        if top.is_file() and not top.is_symlink():
            files.append(part)
            continue
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info")
                       and not os.path.islink(os.path.join(folder, d))]
            for name in names:
                path = os.path.join(folder, name)
                if not name.endswith(".pyc") and not os.path.islink(path):
                    files.append(os.path.relpath(path, root))
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.replace(os.sep, "/").encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return digest.hexdigest()


def checkout_root():
    """The source checkout this embedpipe is imported from (an editable install), or None (installed from a wheel)."""
    from pathlib import Path

    import embedpipe

    root = Path(embedpipe.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "components").is_dir() else None


# --- what each step imports, and the check that its image has it -------------------------------------------------
# The modules a step needs are read from the code (its component function, the embedpipe functions it calls, and
# every import of the embedpipe modules those reach, function-level ones included); what each image installs is
# pyproject.toml's extra of the same name (docker/Dockerfile installs exactly that). Imports under
# ``try: ... except ImportError`` and ``if TYPE_CHECKING:`` are optional and not required.

STEP_PACKAGES = ("embedpipe.components",)


def steps_by_role() -> dict[str, dict[str, object]]:
    """``{role: {step name: component}}`` for every KFP component under embedpipe.components."""
    import importlib
    import pkgutil

    from kfp.dsl.python_component import PythonComponent

    out: dict[str, dict[str, object]] = {role: {} for role in ROLES}
    package = importlib.import_module("embedpipe.components")
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name + ".component")
        for name, value in sorted(vars(module).items()):
            if isinstance(value, PythonComponent):
                role = role_of(value.component_spec.implementation.container.image)
                out[role][name] = value
    return out


def role_of(image_name: str) -> str:
    for role in ROLES:
        if f"/embedpipe-{role}:" in image_name:
            return role
    raise ValueError(f"image {image_name!r} is none of embedpipe's roles {ROLES}")


def _module_file(name: str):
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None


def _imports(tree, module: str, is_package: bool) -> list[tuple[str, int]]:
    """``(module, line)`` of every import in ``tree`` that is not optional (try/except ImportError, TYPE_CHECKING)."""
    import ast

    found: list[tuple[str, int]] = []

    def optional_try(node) -> bool:
        for handler in node.handlers:
            names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
            if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
                   for n in names) or handler.type is None:
                return True
        return False

    def visit(node):
        if isinstance(node, ast.Try) and optional_try(node):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child)
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "__future__":
                return
            found.append((target, node.lineno))
            for alias in node.names:  # `from pkg import submodule`
                if target.startswith("embedpipe") and _module_file(f"{target}.{alias.name}"):
                    found.append((f"{target}.{alias.name}", node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def step_imports(component) -> dict[str, str]:
    """``{module: where}``: every module the step's code imports (non-embedpipe ones at top level), with the first
    place that needs it (``embedpipe/x.py:LINE``), following embedpipe modules transitively."""
    import ast
    import inspect
    import textwrap

    func = component.python_func
    start = f"{func.__module__}.{func.__name__}"
    needed: dict[str, str] = {}
    seen: set[str] = set()
    queue: list[tuple[object, str, bool, str]] = []  # (ast, module, is_package, label)
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    queue.append((tree, func.__module__, False, start))
    while queue:
        node, module, is_package, label = queue.pop()
        for name, line in _imports(node, module, is_package):
            where = f"{label}:{line}" if ":" not in label else label
            if not name.startswith("embedpipe"):
                needed.setdefault(name, where)
                continue
            needed.setdefault(name, where)
            if name in seen:
                continue
            seen.add(name)
            path = _module_file(name)
            if path:
                queue.append((ast.parse(open(path, encoding="utf-8").read()), name, path.endswith("__init__.py"),
                              name))
    return needed


def accelerator_only() -> set[str]:
    """Top-level modules of the ``gpu`` extra (vLLM, DeepSpeed; the ``ROLE-cuda`` extras): required only in CUDA
    builds."""
    return {module for dist in extra_requirements("gpu") for module in _dist_modules(dist)}


def extra_requirements(extra: str) -> list[str]:
    """The requirement names of pyproject.toml's extra ``extra`` (from the installed metadata, or the source)."""
    from embedpipe import roles

    return [roles.requirement_name(r) for r in roles.role_requirements(extra, with_core=False)]


def _dist_modules(dist: str) -> set[str]:
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    wanted = canonicalize_name(dist)
    return {module for module, dists in md.packages_distributions().items()
            if any(canonicalize_name(d) == wanted for d in dists)} or {dist.replace("-", "_")}


def check_role(role: str, accelerator: bool | None = None) -> list[str]:
    """Import, here, every module each step of ``role`` needs; one message per step and module that fails."""
    import importlib
    import os

    if accelerator is None:
        accelerator = os.environ.get("EMBEDPIPE_ACCELERATOR", "cpu") != "cpu"
    skip = set() if accelerator else accelerator_only()
    problems = []
    for step, component in steps_by_role()[role].items():
        for module, where in sorted(step_imports(component).items()):
            if module.split(".")[0] in skip:
                continue
            try:
                importlib.import_module(module)
            except Exception as err:  # ImportError, or a library broken at import
                problems.append(f"step {step} (image embedpipe-{role}): cannot import {module} "
                                f"(imported at {where}): {type(err).__name__}: {err}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m embedpipe.orchestration.images check ROLE...``: exit 1 naming each step and missing module;
    ``... digest [ROOT]``: :func:`source_digest` of a checkout (default: here)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m embedpipe.orchestration.images",
                                     description="check ROLE...: each role's step imports here; "
                                                 "digest [ROOT]: the source digest the images are labelled with")
    parser.add_argument("command", choices=["check", "digest"])
    parser.add_argument("roles", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "digest":
        print(source_digest(args.roles[0] if args.roles else "."))
        return 0
    args.roles = args.roles or list(ROLES)
    failed = 0
    for role in args.roles:
        problems = check_role(role)
        steps = len(steps_by_role()[role])
        for line in problems:
            print(line, file=sys.stderr)
        print(f"embedpipe-{role}: {steps} steps, {'OK' if not problems else f'{len(problems)} missing'}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
