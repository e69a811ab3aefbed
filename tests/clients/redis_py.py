"""Smoke test of redis-py with its default settings against chordkv RESP ports.

Usage: python3 tests/clients/redis_py.py HOST:PORT [HOST:PORT ...]

redis-py 8 sends HELLO 3 as it connects (RESP3 by default). Installed by tests/run-all.sh into
target/clients/python (PYTHONPATH); run by tests/tests/resp_clients.rs. Prints one line per
check and "ok" at the end; any failure raises (exit status 1).
"""
import sys

import redis


def main(addrs):
    clients = []
    for addr in addrs:
        host, port = addr.rsplit(":", 1)
        clients.append(redis.Redis(host=host, port=int(port), socket_timeout=10))
    print("redis-py", redis.__version__)
    for r in clients:
        assert r.ping() is True
    hello = clients[0].execute_command("HELLO")
    proto = hello.get(b"proto", hello.get("proto"))
    print("HELLO proto", proto)
    if int(redis.__version__.split(".")[0]) >= 8:
        assert proto == 3, hello
    for i in range(30):
        assert clients[i % len(clients)].set(f"py-{i}", f"v{i}") is True
    for r in clients:
        for i in range(30):
            assert r.get(f"py-{i}") == f"v{i}".encode(), i
        assert r.get("py-missing") is None
        assert r.mget(["py-0", "py-missing", "py-2"]) == [b"v0", None, b"v2"]
        assert r.exists("py-0", "py-1", "py-missing") == 2
    assert clients[0].delete("py-0", "py-missing") == 1
    assert clients[1].get("py-0") is None
    info = clients[0].info()
    assert isinstance(info, dict) and "redis_version" in info, info
    assert clients[0].client_setname("smoke") is True
    assert clients[0].client_getname() in ("smoke", b"smoke")
    # A pipeline without a transaction: commands sent together, answered in order.
    p = clients[1].pipeline(transaction=False)
    p.set("py-pipe", "1").get("py-pipe").get("py-missing")
    assert p.execute() == [True, b"1", None]
    # The default pipeline is a MULTI/EXEC transaction: over one hash tag it runs at the
    # tag's owner, atomically; over two it is refused with nothing applied.
    p = clients[0].pipeline()
    p.set("{py}tx", "1").incr("{py}n").get("{py}tx")
    assert p.execute() == [True, 1, b"1"]
    p = clients[0].pipeline()
    p.set("{py-a}tx", "1").set("{py-b}tx", "1")
    try:
        p.execute()
        raise AssertionError("a transaction over two hash tags should be refused")
    except redis.ResponseError as e:
        print("transaction over two owners refused:", e)
    for r in clients:
        assert r.get("{py-a}tx") is None and r.get("{py-b}tx") is None

    # WATCH with redis-py's optimistic-locking helper.
    def bump(pipe):
        current = int(pipe.get("{py}w") or 0)
        pipe.multi()
        pipe.set("{py}w", current + 1)

    for _ in range(3):
        clients[1].transaction(bump, "{py}w")
    assert clients[2 % len(clients)].get("{py}w") == b"3"
    # Counters and conditional writes run at the key's owner.
    assert [clients[i % len(clients)].incr("py-counter") for i in range(5)] == [1, 2, 3, 4, 5]
    assert clients[0].set("py-lock", "a", nx=True) is True
    assert clients[1].set("py-lock", "b", nx=True) is None
    assert clients[0].getset("py-lock", "c") == b"a"
    assert clients[0].append("py-lock", "d") == 2
    # Expiry: set with a time to live, seen through every node, removed by PERSIST.
    assert clients[0].set("py-ttl", "v", ex=100) is True
    for r in clients:
        assert 0 < r.ttl("py-ttl") <= 100
    assert clients[1].persist("py-ttl") is True
    assert clients[2 % len(clients)].ttl("py-ttl") == -1
    assert clients[0].setex("py-ttl", 50, "w") is True
    assert clients[0].getex("py-ttl", px=1) == b"w"
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1:])
