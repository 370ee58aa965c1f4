"""The namespace fixtures clean up after themselves, also when the body fails, and the
namespace switch of the test thread always comes back home."""

from __future__ import annotations

import pytest

from tests.interop.bed import KernelBed
from tests.interop.link import Link
from tests.interop.netns import (
    Netns,
    current_netns_inode,
    missing_prerequisite,
    netns_names,
    own_namespaces,
)


@pytest.fixture(autouse=True)
def _needs_namespaces() -> None:
    reason = missing_prerequisite("tc", "nft")
    if reason:
        pytest.skip(reason)


class Boom(Exception):
    pass


def test_netns_deleted_when_the_body_raises() -> None:
    home = current_netns_inode()
    with pytest.raises(Boom), Netns.create() as ns:
        assert ns.name in netns_names()
        with ns.inside():
            assert current_netns_inode() != home
            raise Boom
    assert current_netns_inode() == home
    assert ns.name not in netns_names()
    assert own_namespaces() == []


def test_inside_nests_and_unwinds_in_any_order() -> None:
    home = current_netns_inode()
    with Netns.create() as a, Netns.create() as b:
        first, second = a.inside(), a.inside()
        first.__enter__()
        inner = current_netns_inode()
        second.__enter__()
        first.__exit__(None, None, None)   # the outer holder leaves first
        assert current_netns_inode() == inner
        with pytest.raises(RuntimeError), b.inside():
            pass  # another namespace while still inside a
        second.__exit__(None, None, None)
        assert current_netns_inode() == home
    assert own_namespaces() == []


async def test_kernel_bed_deleted_when_the_body_raises() -> None:
    with pytest.raises(Boom):
        async with KernelBed.create() as bed:
            name = bed.ns.name
            assert "utun0" in bed.ns.ip("link", "show")
            raise Boom
    assert name not in netns_names()
    assert own_namespaces() == []


def test_link_deleted_when_the_body_raises() -> None:
    with pytest.raises(Boom), Link.create(loss=5) as link:
        names = (link.a.name, link.b.name)
        assert "numgen random mod 100 < 5" in link.a.exec("nft", "list", "ruleset").stdout
        assert "tbf" in link.b.exec("tc", "qdisc", "show", "dev", "veth0").stdout
        raise Boom
    assert not set(names) & set(netns_names())
    assert own_namespaces() == []
