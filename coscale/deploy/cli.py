"""``coscale deploy …``: render deployments (registered on the main app by coscale.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="deploy",
    help="Render what runs a scenario on other platforms (Kubernetes through KubeRay).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.command("kubernetes")
def kubernetes(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML to deploy (needs tenants).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the manifests into.")] = Path(
        "deploy/kubernetes"
    ),
    image: Annotated[
        str,
        typer.Option("--image", help="Container image with coscale and its ray extra installed."),
    ] = "coscale:latest",
    namespace: Annotated[str, typer.Option("--namespace", help="Kubernetes namespace.")] = (
        "default"
    ),
    preset: Annotated[
        str | None, typer.Option("--preset", help="Policy preset (default: the scenario's).")
    ] = None,
) -> None:
    """Render a KubeRay RayCluster (head runs `coscale serve --backend ray`), its HTTP
    Service, a ServiceMonitor and the scenario as a ConfigMap; print the files written."""
    from rich.markup import escape

    from coscale.deploy.kubernetes import render_file, write

    rendered = render_file(scenario, image=image, namespace=namespace, preset=preset)
    checked = _check(rendered.files)
    for path in write(rendered, out):
        console.print(f"wrote {escape(str(path))}", soft_wrap=True)
    console.print(checked, soft_wrap=True)
    for note in rendered.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    console.print(
        "next: create the tenants' key Secret, then apply (servicemonitor.yaml needs the "
        "Prometheus Operator; skip it otherwise):\n"
        f"  {escape(rendered.secret_command())}\n"
        f"  kubectl apply -f {escape(str(out))}",
        soft_wrap=True,
    )


def _check(files: dict[str, dict[str, object]]) -> str:
    """Validate every manifest when jsonschema is installed; a line saying what was done."""
    from coscale.errors import CoscaleError

    try:
        from coscale.deploy.validate import check_manifest

        problems = {name: check_manifest(obj) for name, obj in files.items()}
    except CoscaleError:
        return "not checked against the schemas (pip install jsonschema to check)"
    bad = {name: p for name, p in problems.items() if p}
    if bad:
        lines = [f"{name}: {p}" for name, ps in bad.items() for p in ps[:5]]
        raise CoscaleError(
            "the rendered manifests do not match their schemas (a coscale bug):\n"
            + "\n".join(lines),
            fix="report it; the files were not written.",
            code="invalid_manifest",
        )
    return "checked: RayCluster against KubeRay's CRD schema, the others against coscale's"
