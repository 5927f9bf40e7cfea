"""deploy/README.md explains every file in deploy/ and the drain timeouts it quotes match the manifests."""

from __future__ import annotations

import re

from tests.deploy.support import DEPLOY, K8S, load_yaml_all

GENERATED = {"secrets", ".env", "README.md"}


def test_readme_names_every_deployment_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        relative = path.relative_to(DEPLOY)
        if path.is_dir() or relative.parts[0] in GENERATED or "__pycache__" in relative.parts:
            continue
        assert f"`{relative.as_posix()}`" in readme, f"deploy/README.md does not mention {relative}"


def test_readme_grace_period_table_matches_the_manifests() -> None:
    readme = (DEPLOY / "README.md").read_text()
    table = dict(re.findall(r"^\| (orchestrator|signaling|media|recorder) \| (\d+) s \| \d+ s \|$", readme, re.M))
    assert set(table) == {"orchestrator", "signaling", "media", "recorder"}
    for path in K8S.glob("*.yaml"):
        for doc in load_yaml_all(path):
            if doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            container = doc["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            component = doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            assert env["CLASSMESH_DRAIN_TIMEOUT"] == table[component], f"{path.name}: README says otherwise"
            grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert f"| {component} | {table[component]} s | {grace} s |" in readme
