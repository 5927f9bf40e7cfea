from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.regions import DEFAULT_REGIONS_FILE, RegionsError, haversine_km, load_regions, parse_regions


def test_shipped_regions_span_four_continents() -> None:
    regions = load_regions()
    assert len(regions) >= 4
    names = {r.name for r in regions}
    assert {"eu-central", "us-east", "ap-southeast", "sa-east"} <= names
    for region in regions:
        assert region.nodes, f"{region.name} has no node"
        assert all(node.port for node in region.nodes)


def test_haversine_frankfurt_to_virginia() -> None:
    km = haversine_km(50.11, 8.68, 39.04, -77.49)
    assert 6500 < km < 6700


def _base() -> dict:
    return yaml.safe_load(DEFAULT_REGIONS_FILE.read_text())


@pytest.mark.parametrize(
    ("mutate", "region", "field"),
    [
        (lambda d: d["regions"]["us-east"].pop("lat"), "us-east", "lat"),
        (lambda d: d["regions"]["us-east"].update(lat=123), "us-east", "lat"),
        (lambda d: d["regions"]["sa-east"].update(lon="west"), "sa-east", "lon"),
        (lambda d: d["regions"]["eu-central"]["nodes"][0].update(port=70000), "eu-central", "nodes[0].port"),
        (lambda d: d["regions"]["eu-central"]["nodes"][0].pop("port"), "eu-central", "nodes[0]"),
        (lambda d: d["regions"]["eu-central"]["nodes"][0].update(url="ftp://x"), "eu-central", "nodes[0].url"),
        (lambda d: d["regions"]["us-east"]["nodes"][0].update(id="eu-central-1"), "us-east", "nodes.id"),
        (lambda d: d["regions"]["us-east"]["nodes"][0].update(port=8710), "us-east", "nodes.port"),
        (lambda d: d["regions"]["us-east"].update(turn=[{"urls": ["stun:x"]}]), "us-east", "turn[0].urls"),
        (
            lambda d: d["regions"]["us-east"].update(capacity={"streams_per_node": 0}),
            "us-east",
            "capacity.streams_per_node",
        ),
        (lambda d: d["regions"]["us-east"].update(colour="blue"), "us-east", "colour"),
    ],
)
def test_mistakes_name_file_region_and_field(mutate, region: str, field: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = _base()
    mutate(data)
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RegionsError) as err:
        load_regions(path)
    assert err.value.region == region
    assert err.value.field == field
    assert str(path) in str(err.value) and repr(region) in str(err.value) and repr(field) in str(err.value)


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(RegionsError, match="file not found"):
        load_regions(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: [unclosed")
    with pytest.raises(RegionsError, match="not valid YAML"):
        load_regions(bad)
    with pytest.raises(RegionsError, match="non-empty mapping"):
        parse_regions({"regions": {}})


def test_subset_and_lookup() -> None:
    regions = load_regions()
    sub = regions.subset(["eu-central"])
    assert [r.name for r in sub] == ["eu-central"]
    assert regions.node("us-east-1")[0].name == "us-east"
    with pytest.raises(KeyError, match="unknown region"):
        regions.subset(["mars"])
