"""Lints helm/segd and renders it with each values file in helm/segd/ci,
through Helm's own engine (helm-python-sdk, no helm binary). Prints one JSON
object: {"lint": {values file: report}, "render": {values file: [objects]}}.
Run by tests/api/helm.rs, which checks the objects."""

import json
import pathlib
import sys

import helm_python as helm
import yaml

chart = pathlib.Path(sys.argv[1])
out = {"lint": {}, "render": {}}
for f in sorted((chart / "ci").glob("*.yaml")):
    values = yaml.safe_load(f.read_text()) or {}
    out["lint"][f.name] = helm.lint(str(chart), values, strict=True)
    with helm.Chart.load(str(chart)) as c:
        manifests = c.render(values, name="segd", namespace="crm", is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path
                objects.append(doc)
    out["render"][f.name] = objects

def refusal(values):
    """The error rendering `values` fails with, or None."""
    try:
        with helm.Chart.load(str(chart)) as c:
            c.render(values, name="segd", namespace="crm", is_install=True)
        return None
    except Exception as e:  # noqa: BLE001 - the message is what is checked
        return str(e)


# Without a database URL or an existing Secret the chart refuses to render,
# and behind a transaction pooler without a session URL.
out["refused"] = refusal({})
out["refused_pooler"] = refusal(
    {
        "secret": {"databaseUrl": "postgres://segd@pgbouncer:6432/segd"},
        "config": {"databasePooler": "transaction"},
    }
)
print(json.dumps(out))
