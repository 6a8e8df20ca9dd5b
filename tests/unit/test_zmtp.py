"""The lean DEALER (:mod:`jobqueue.zmtp`) against a real libzmq ROUTER (pyzmq)."""

from __future__ import annotations

import random
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from jobqueue import zmtp

LIMIT = 1 << 16


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], str]]:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/r"
    sock.bind(endpoint)
    yield sock, endpoint
    sock.close()


def _pump(dealer: zmtp.Dealer, until: int = 1, timeout: float = 5.0) -> list[bytes]:
    """Drive the dealer from a poll loop until ``until`` messages arrived."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        poller = select.poll()
        poller.register(dealer.fileno(), dealer.poll_events())
        wakeup = dealer.next_wakeup(time.monotonic())
        poller.poll(int(1000 * min(0.05 if wakeup is None else wakeup, 0.05)))
        got += dealer.receive(time.monotonic())
        if len(got) >= until or time.monotonic() > deadline:
            return got


def _from_dealer(router: zmq.Socket[bytes], dealer: zmtp.Dealer) -> list[bytes]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _pump(dealer, until=0, timeout=0)
        if router.poll(5):
            return router.recv_multipart()
    raise AssertionError("nothing reached the ROUTER")


def _connected(server: zmq.Socket[bytes], endpoint: str, limit: int = LIMIT) -> tuple[zmtp.Dealer, bytes]:
    """A dealer whose first message reached the ROUTER, and its routing id there."""
    dealer = zmtp.Dealer(endpoint, limit)
    dealer.send(b"hi")
    identity, _ = _from_dealer(server, dealer)
    return dealer, identity


def test_messages_both_ways_queued_before_the_handshake(router: tuple[zmq.Socket[bytes], str]) -> None:
    server, endpoint = router
    dealer = zmtp.Dealer(endpoint, LIMIT)
    dealer.send(b"hello")  # before the handshake: sent once it completes
    identity, body = _from_dealer(server, dealer)
    assert body == b"hello" and dealer.is_open
    big = bytes(range(256)) * 200  # the 8-byte size form
    server.send_multipart([identity, b"short"])
    server.send_multipart([identity, big])
    assert _pump(dealer, until=2) == [b"short", big]
    dealer.send(big)
    assert _from_dealer(server, dealer) == [identity, big]
    dealer.close()


def test_big_frames_read_into_their_own_buffer_arrive_whole_and_in_order(
        router: tuple[zmq.Socket[bytes], str]) -> None:
    """Frames over BIG_FRAME are read straight into a buffer of their own, whichever
    way the stream is cut; small and big ones must still come out byte-exact and in order
    (also as the frames of one multi-frame message)."""
    server, endpoint = router
    dealer, identity = _connected(server, endpoint, 4 << 20)
    rng = random.Random(6)
    sizes = [rng.choice([1, 300, zmtp.BIG_FRAME - 1, zmtp.BIG_FRAME, 700_000, 3 << 20]) for _ in range(60)]
    sent = [rng.randbytes(size) for size in sizes]
    for body in sent[:30]:
        server.send_multipart([identity, body])
    server.send_multipart([identity, *sent[30:]])
    got = _pump(dealer, until=len(sent), timeout=20)
    assert [len(m) for m in got] == sizes
    assert [bytes(m) for m in got] == sent
    dealer.close()


def test_each_frame_of_a_multi_frame_message_is_a_message(router: tuple[zmq.Socket[bytes], str]) -> None:
    """The server sends a round's messages for one peer as one multi-frame message."""
    server, endpoint = router
    dealer, identity = _connected(server, endpoint)
    server.send_multipart([identity, b"part1", b"part2"])
    server.send_multipart([identity, b"single"])
    assert _pump(dealer, until=3) == [b"part1", b"part2", b"single"]
    dealer.close()


def test_over_the_size_limit_is_an_error(router: tuple[zmq.Socket[bytes], str]) -> None:
    server, endpoint = router
    dealer, identity = _connected(server, endpoint)
    server.send_multipart([identity, b"x" * (LIMIT + 1)])
    with pytest.raises(zmtp.ZmtpError, match="over the limit"):
        _pump(dealer)
    dealer.close()


def test_connect_is_retried_until_the_server_binds(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/late"
    dealer = zmtp.Dealer(endpoint, LIMIT)
    dealer.send(b"early")
    assert _pump(dealer, until=1, timeout=0.3) == [] and not dealer.is_open
    server = zmq.Context.instance().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(endpoint)
    try:
        assert _from_dealer(server, dealer)[1] == b"early"
    finally:
        server.close()
        dealer.close()


def test_a_curve_server_is_a_mechanism_mismatch(tmp_path: Path) -> None:
    public, secret = zmq.curve_keypair()
    server = zmq.Context.instance().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.curve_server = True
    server.curve_secretkey = secret
    endpoint = f"ipc://{tmp_path}/curve"
    server.bind(endpoint)
    try:
        dealer = zmtp.Dealer(endpoint, LIMIT)
        # libzmq either tells its mechanism or, having read ours first, just hangs up
        with pytest.raises((zmtp.MechanismMismatch, zmtp.HandshakeRejected), match="CURVE|during the ZeroMQ"):
            _pump(dealer)
        dealer.close()
    finally:
        server.close()


def test_a_peer_that_is_not_zeromq_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "http")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    dealer = zmtp.Dealer(f"ipc://{path}", LIMIT)
    peer, _ = listener.accept()
    peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(zmtp.ZmtpError, match="does not speak ZeroMQ"):
        _pump(dealer)
    dealer.close()
    peer.close()
    listener.close()


def test_a_dealer_peer_is_not_a_server(tmp_path: Path) -> None:
    server = zmq.Context.instance().socket(zmq.DEALER)
    server.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/dealer"
    server.bind(endpoint)
    try:
        dealer = zmtp.Dealer(endpoint, LIMIT)
        with pytest.raises(zmtp.ZmtpError, match="DEALER socket, not a jobqueue-server"):
            _pump(dealer)
        dealer.close()
    finally:
        server.close()


def test_a_connection_reset_while_it_is_made_is_reported_by_the_next_call_not_the_constructor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server killed as we connect resets the socket inside Dealer(): the caller must get
    its ConnectionError from receive/maintain (and reconnect), never from the constructor."""
    calls = []

    def reset(self: zmtp.Dealer, now: float) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise ConnectionError("lost the connection to tcp://127.0.0.1:9: Connection reset by peer")

    monkeypatch.setattr(zmtp.Dealer, "maintain", reset)
    dealer = zmtp.Dealer("tcp://127.0.0.1:9", 1 << 20)
    assert "reset by peer" in dealer.lost
    monkeypatch.undo()
    with pytest.raises(ConnectionError):
        dealer.receive(0.0)
    dealer.close()


@pytest.mark.parametrize("endpoint", ["tcp://bad::::", "tcp://host:99999", "tcp://:5", "tcp://[::1]:x", "tcp://h:0"])
def test_a_malformed_server_address_is_refused_in_words(endpoint):
    with pytest.raises(zmtp.ZmtpError, match="bad server address .*PORT from 1 to 65535"):
        zmtp.resolve(endpoint)
