"""Reading a compiled pipeline spec in tests: where its steps are."""


def step_tasks(spec: dict) -> dict:
    """The pipeline's steps: the tasks of the DAG inside its exit handler (the root holds that group and the
    closing step, ``track-close``)."""
    root = spec["root"]["dag"]["tasks"]
    (group,) = [t for name, t in root.items() if name.startswith("exit-handler")]
    return spec["components"][group["componentRef"]["name"]]["dag"]["tasks"]
