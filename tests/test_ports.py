"""stack/ports.py: the ports that tests and local stacks bind later are never the kernel's."""
import socket

import pytest

from stack import ports


@pytest.fixture
def slice_of(monkeypatch):
    def use(worker: str, count: int) -> tuple[int, int]:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
        monkeypatch.setattr(ports, "_cursor", None)
        return ports._slice()
    return use


def test_picked_ports_are_distinct_free_and_below_the_ephemeral_range(slice_of):
    low, high = slice_of("gw1", 3)
    picked = ports.free_ports(20) + [ports.free_port() for _ in range(20)]
    assert len(set(picked)) == 40
    assert all(low <= p < high < ports._ephemeral_low() + 1 for p in picked)
    for p in picked[:5]:  # free: a server binds each
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


@pytest.mark.parametrize("count", [2, 3, 8])
def test_each_test_process_has_a_slice_of_its_own(slice_of, count):
    slices = [slice_of(f"gw{i}", count) for i in range(count)]
    for (a_low, a_high), (b_low, b_high) in zip(slices, slices[1:]):
        assert a_low < a_high <= b_low < b_high


def test_a_taken_port_is_passed_over(slice_of):
    low, _ = slice_of("gw0", 1)
    ports._cursor = low
    first = ports.free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", first + 1))
        held.listen()
        ports._cursor = first + 1
        assert ports.free_port() == first + 2


def test_a_free_preferred_port_is_kept(slice_of):
    slice_of("gw0", 1)
    port = ports.free_port()
    assert ports.free_port(preferred=port) == port
