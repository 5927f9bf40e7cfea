"""Every YAML file under deploy/ parses, and no mapping repeats a key: YAML parsers (PyYAML, compose, kubectl)
quietly keep the last of two equal keys, so a repeated ``env:`` or ``environment:`` would drop settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import DEPLOY


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with a repeated key (merge keys ``<<`` still work)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


YAML_FILES = sorted(p for p in DEPLOY.rglob("*.y*ml") if "secrets" not in p.relative_to(DEPLOY).parts)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_without_repeated_keys(path: Path) -> None:
    documents = list(yaml.load_all(path.read_text(), Loader=_UniqueKeyLoader))
    assert any(doc is not None for doc in documents)


def test_repeated_keys_are_caught() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'env'"):
        yaml.load("a:\n  env: 1\n  env: 2\n", Loader=_UniqueKeyLoader)
