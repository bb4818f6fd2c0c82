"""Port choice: concurrent clusters on one machine never take the same port."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import pgfleet_cli
from pgfleet.errors import NodeError
from pgfleet.node.ports import claim_port, claim_ports, release_ports


def test_claimed_ports_are_not_handed_out_twice(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = claim_ports(3, a, start=46000)
    second = claim_ports(3, b, start=46000)
    assert not set(first) & set(second)
    with pytest.raises(NodeError, match=f"port {first[0]} .* in use"):
        claim_port(first[0], b)
    release_ports(first, a)
    assert claim_ports(1, b, start=first[0]) == [first[0]]
    release_ports([first[0], *second], b)


def test_claims_of_a_removed_cluster_are_stale(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    ports = claim_ports(2, gone, start=46100)
    gone.rmdir()
    other = tmp_path / "other"
    other.mkdir()
    assert claim_ports(2, other, start=46100) == ports
    release_ports(ports, other)


@pytest.mark.cluster
def test_two_ups_at_once_take_different_ports(base_dir: Path) -> None:
    dirs = [base_dir / "up-a", base_dir / "up-b"]
    procs = [subprocess.Popen([sys.executable, "-m", "pgfleet.cli.main", "--dir", str(d), "up", "--workers", "1", "--fast"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in dirs]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        ports = [n["port"] for d in dirs for n in json.loads((d / "cluster.json").read_text())["nodes"]]
        ports += [json.loads((d / "router.settings.json").read_text())["port"] for d in dirs]  # their routers too
        assert len(ports) == 6 and len(set(ports)) == 6
    finally:
        for d in dirs:
            pgfleet_cli("down", "--destroy", directory=d)
