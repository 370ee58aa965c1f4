"""Fixtures for the namespace tests: the kernel bed (TUN + bridge) and the veth link.

They skip with the reason when the machine cannot create namespaces (no root /
CAP_NET_ADMIN, no /dev/net/tun, no iproute2 or nftables); CI runs as root and installs
iproute2 and nftables (.ci/run). Whatever a test does, its namespaces are deleted, the
test thread is back in its own namespace, and at the end of the session no namespace
named after this process is left (`ip netns list`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.interop.bed import KernelBed
from tests.interop.link import Link
from tests.interop.netns import (
    Netns,
    current_netns_inode,
    missing_prerequisite,
    netns_names,
    own_namespaces,
    remove_stale,
    run,
)


@pytest.fixture(scope="session", autouse=True)
def _no_namespace_left_behind() -> Iterator[None]:
    usable = missing_prerequisite() is None
    if usable:
        remove_stale()  # only those of test processes that are gone
    yield
    if usable:
        left = own_namespaces()
        for name in left:  # remove them, and still fail the run
            run(["ip", "netns", "del", name], check=False)
        assert not left, f"network namespaces left behind: {left}"


@pytest.fixture(autouse=True)
def _thread_back_home() -> Iterator[None]:
    home = current_netns_inode()
    yield
    assert current_netns_inode() == home, "the test thread was left inside a namespace"


@pytest.fixture
def kernel_ns() -> Iterator[Netns]:
    """The bed's namespace, owned by a plain fixture: its teardown runs even if a hard
    timeout leaves the event loop unable to finish the async fixture's."""
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    with Netns.create("k") as ns, ns.inside():
        # The test's thread stays in the namespace: utcp asks the kernel for the route's
        # MTU (with a socket of the current thread's namespace) whenever a connection
        # starts, and the answer must be the namespace's, as in a process living there.
        yield ns
    assert ns.name not in netns_names()


@pytest_asyncio.fixture
async def bed(kernel_ns: Netns) -> AsyncIterator[KernelBed]:
    async with KernelBed.create(kernel_ns) as b:
        yield b


@pytest.fixture
def link() -> Iterator[Link]:
    reason = missing_prerequisite("tc", "nft")
    if reason:
        pytest.skip(reason)
    with Link.create() as lk:
        yield lk
    names = netns_names()
    assert lk.a.name not in names and lk.b.name not in names
