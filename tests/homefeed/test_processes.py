import socket

from homefeed import processes


def test_a_free_port_is_below_the_ephemeral_range_and_binds():
    port = processes.free_port()
    assert processes.LOWEST_PORT <= port < processes._ephemeral_start()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))  # still free: nothing but an explicit bind takes it


def test_a_port_in_use_is_never_chosen(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        candidates = iter([taken, taken, 12_345])
        monkeypatch.setattr(processes.random, "randrange", lambda low, high: next(candidates))
        monkeypatch.setattr(processes, "_binds", lambda port: port != taken)
        assert processes.free_port() == 12_345
