"""Agent hub benchmark: agent->hub->agent next to direct agent->agent through the same broker, same run.

Measures (``--duration`` seconds per phase, short by default):
- latency p50/p99 at a fixed offered rate (``--rate``, 1,000 msg/s) for direct and via the hub;
- peak throughput (blast ``--burst`` messages) for both, and the ratio hub/direct;
- handoff initiate -> accept p95 (in-process hub calls, durable writes to hub.db);
- registry lookup (by id and by token) mean;
- pool query p95 with ``--items`` memories in the pool (100,000 for the issue's figure; default 10,000);
- ``--agents`` concurrent MQTT agents (100) messaging each other through the hub.

Run: ``.venv/bin/python -m bench.hub [--duration 3] [--items 100000] [--repeat 5]``. The hub runs in a
child process (as in the daemon); ``HUB_BENCH_CHILD="script.py"`` runs that script instead of ``-m
bench.hub`` for it (e.g. a cProfile wrapper). ``--repeat N`` runs the messaging half N times (a fresh broker
and hub each time) and prints the median of each figure with the load average: on a shared machine one
run says little.

The hub process calls ``gc.freeze()`` once it has started (``--no-gc-freeze`` to measure without): Python's
full (generation 2) collections scan every tracked object, and the imports and start-up leave tens of
thousands that never die; a full collection then stalls the loop 20-130 ms, which alone puts p99 over
5 ms at 1,000 msg/s. Freezing moves them out of every later collection (gc.freeze, Python 3.7+). The
daemon should do the same once it has started (daemon/app.py); the hub does not do it itself because it
is a process-wide setting.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry

from daemon.hub import Hub
from daemon.hub.broker_auth import MosquittoFiles, render_acl, render_passwords
from daemon.hub.pools import Caller
from daemon.mosquitto import MosquittoProcess
from daemon.mqtt import BrokerLink
from daemon.store import Ed25519Signer, Store

BASE = "bench/node"
SVC, SVC_PW = "svc", "svc-password"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # no Nagle delay on small MQTT packets


def client(port: int, user: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=user, username=user, password=password,
                          protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=0,
                          socket_options=NODELAY)


async def connect(c: aiomqtt.Client) -> None:
    for _ in range(100):
        try:
            await c.__aenter__()
            return
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)
    raise RuntimeError("cannot connect")


async def stream(sender: aiomqtt.Client, receiver: aiomqtt.Client, send_topic: str, make: Any, *,
                 count: int, rate: float | None) -> tuple[list[float], float]:
    """Send ``count`` messages (paced at ``rate``, or as fast as possible); latencies and receive rate."""
    latencies: list[float] = []
    done = asyncio.Event()

    async def rx() -> None:
        async for message in receiver.messages:
            body = json.loads(message.payload)
            t0 = body["body"]["t"] if "body" in body else body["t"]
            latencies.append(time.perf_counter() - t0)
            if len(latencies) >= count:
                done.set()
                return

    task = asyncio.create_task(rx())
    start = time.perf_counter()
    for i in range(count):
        if rate:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await sender.publish(send_topic, make(i, time.perf_counter()), qos=0)
    try:
        async with asyncio.timeout(30):
            await done.wait()
    except TimeoutError:
        task.cancel()
    elapsed = time.perf_counter() - start
    return latencies, len(latencies) / elapsed


def service_users(agents: int) -> dict[str, str]:
    """The hub's own user and the clients of the direct baselines (full access, no hub in between)."""
    return {SVC: SVC_PW, "direct-a": SVC_PW, "direct-b": SVC_PW, **{f"direct-c{i}": SVC_PW for i in range(agents)}}


def broker_setup(tmp: Path, agents: int) -> tuple[MosquittoProcess, MosquittoFiles]:
    holder: dict[str, MosquittoProcess] = {}
    files = MosquittoFiles(password_file=tmp / "passwd", acl_file=tmp / "acl", pid=lambda: holder["b"].pid,
                           service_users=service_users(agents))
    files.password_file.write_text(render_passwords([], files))
    files.acl_file.write_text(render_acl([], topic_base=BASE, service_users=list(files.service_users)))
    broker = MosquittoProcess(tmp / "mosq", allow_anonymous=False, extra_config=(
        f"password_file {files.password_file}\nacl_file {files.acl_file}\nuse_username_as_clientid true\n"
        "max_queued_messages 100000\n"
        # Nagle's algorithm on the broker's client sockets holds small messages for the peer's delayed ACK
        # (~40 ms on Linux); mosquitto.conf(5) "set_tcp_nodelay" turns it off.
        "set_tcp_nodelay true\n"))
    holder["b"] = broker
    return broker, files


async def serve(tmp: Path, port: int, broker_pid: int, agents: int, *, freeze: bool = True) -> None:
    """The hub as its own process (as in the daemon): registers the bench agents, then routes until stdin ends."""
    files = MosquittoFiles(password_file=tmp / "passwd", acl_file=tmp / "acl", pid=lambda: broker_pid,
                           service_users=service_users(agents))
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store(tmp / "store.db", signer=Ed25519Signer.generate(),
                                                      embedding_dim=4, ttl_sweep_s=0, integrity_check="off"))
        link = BrokerLink(host="127.0.0.1", port=port, client_id=SVC, status_topic=f"{BASE}/status",
                          username=SVC, password=SVC_PW, registry=CollectorRegistry())
        hub = Hub(store=store, broker=link, state_dir=tmp / "state", topic_base=BASE, mosquitto_files=files,
                  agent_rate_per_s=1e6, agent_burst=1e6)
        await stack.enter_async_context(link)
        await stack.enter_async_context(hub)
        await link.connected.wait()
        creds = {}
        for name in ["a", "b", *(f"c{i}" for i in range(agents))]:
            reg = await hub.register({"id": name, "type": "HUMAN", "owner": "bench"}, privileged=True, actor="bench")
            creds[name] = reg["credentials"]["mqtt"]
        (tmp / "creds.json").write_text(json.dumps(creds))
        if freeze:
            gc.collect()
            gc.freeze()
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.read)
        print(json.dumps({"delivered": hub.router.delivered, "queued": hub.router.queued}), flush=True)


def schedstat_s(pids: dict[str, int], field: int) -> dict[str, float]:
    """Seconds each process has run on a CPU (``field`` 0) or spent runnable but waiting for one (1), from
    /proc/<pid>/schedstat (ns; Documentation/scheduler/sched-stats.rst). On a shared machine the waiting is
    what a latency tail is made of."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[field]) / 1e9
        except (OSError, IndexError, ValueError):
            out[name] = float("nan")
    return out


async def messaging(args: argparse.Namespace, tmp: Path, port: int, creds: dict[str, Any], *,
                    online: Any, pids: dict[str, int]) -> dict[str, float]:
    a = client(port, creds["a"]["username"], creds["a"]["password"])
    b = client(port, creds["b"]["username"], creds["b"]["password"])
    sa = client(port, "direct-a", SVC_PW)
    sb = client(port, "direct-b", SVC_PW)
    for c in (a, b, sa, sb):
        await connect(c)
    await b.subscribe(f"{BASE}/agents/b/inbox", qos=0)
    await b.publish(f"{BASE}/agents/b/status", "online", qos=1, retain=True)
    await sb.subscribe("bench/direct", qos=0)
    await online()

    def via_hub(i: int, t: float) -> bytes:
        return json.dumps({"id": f"m{i}-{t}", "from": "a", "to": "b", "type": "EVENT", "ts": t,
                           "body": {"t": t}}).encode()

    def direct(i: int, t: float) -> bytes:
        return json.dumps({"id": f"m{i}", "t": t}).encode()

    count = int(args.rate * args.duration)
    d_lat, _ = await stream(sa, sb, "bench/direct", direct, count=count, rate=args.rate)
    waits, ran = schedstat_s(pids, 1), schedstat_s(pids, 0)
    h_lat, _ = await stream(a, b, f"{BASE}/agents/a/outbox", via_hub, count=count, rate=args.rate)
    waited = {k: v - waits[k] for k, v in schedstat_s(pids, 1).items()}
    hub_cpu = (schedstat_s(pids, 0)["hub"] - ran["hub"]) / max(1, len(h_lat))
    _, d_peak = await stream(sa, sb, "bench/direct", direct, count=args.burst, rate=None)
    _, h_peak = await stream(a, b, f"{BASE}/agents/a/outbox", via_hub, count=args.burst, rate=None)
    print(f"latency @ {args.rate:g} msg/s, {count} msgs (hub in its own process, clients in this one):")
    print(f"  direct agent->agent   p50 {pct(d_lat, .5)*1e3:7.3f} ms  p99 {pct(d_lat, .99)*1e3:7.3f} ms"
          f"  (received {len(d_lat)})")
    print(f"  agent->hub->agent     p50 {pct(h_lat, .5)*1e3:7.3f} ms  p99 {pct(h_lat, .99)*1e3:7.3f} ms"
          f"  (received {len(h_lat)})   target p99 <= 5 ms")
    print("  waiting for a CPU during the hub phase: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in waited.items())
          + f" (of {args.duration:g} s); hub process CPU per message {hub_cpu * 1e6:.0f} us")
    print(f"peak throughput ({args.burst} msgs): direct {d_peak:9.0f} msg/s   hub {h_peak:9.0f} msg/s"
          f"   ratio {h_peak / d_peak:.2f} (target >= 0.5)")
    figures = {"direct_p50": pct(d_lat, .5) * 1e3, "direct_p99": pct(d_lat, .99) * 1e3,
               "hub_p50": pct(h_lat, .5) * 1e3, "hub_p99": pct(h_lat, .99) * 1e3, "direct_peak": d_peak,
               "hub_peak": h_peak, "ratio": h_peak / d_peak, "hub_cpu_wait_ms": waited["hub"] * 1e3,
               "hub_cpu_us": hub_cpu * 1e6}

    d_many = await many_agents(args, port, creds, via_hub=False)
    h_many = await many_agents(args, port, creds, via_hub=True)
    for name, lat in (("direct", d_many), ("via hub", h_many)):
        print(f"{args.agents} concurrent agents {name:8}: {len(lat)} msgs ({1 / args.agent_interval:g} msg/s each)"
              f"  p50 {pct(lat, .5)*1e3:7.3f} ms  p99 {pct(lat, .99)*1e3:7.3f} ms")
    for c in [a, b, sa, sb]:
        await c.__aexit__(None, None, None)
    figures["agents_direct_p99"] = pct(d_many, .99) * 1e3
    figures["agents_p99"] = pct(h_many, .99) * 1e3
    return figures


async def many_agents(args: argparse.Namespace, port: int, creds: dict[str, Any], *, via_hub: bool) -> list[float]:
    """``--agents`` clients, each sending to the next every ``--agent-interval`` s: through the hub (agent
    credentials, outbox -> inbox) or directly (full-access users, one topic each) as the baseline."""
    clients = []
    for i in range(args.agents):
        if via_hub:
            m = creds[f"c{i}"]
            c = client(port, m["username"], m["password"])
        else:
            c = client(port, f"direct-c{i}", SVC_PW)
        await connect(c)
        await c.subscribe(f"{BASE}/agents/c{i}/inbox" if via_hub else f"bench/direct/c{i}", qos=0)
        if via_hub:
            await c.publish(f"{BASE}/agents/c{i}/status", "online", qos=1, retain=True)
        clients.append(c)
    await asyncio.sleep(0.5)
    per_agent = max(1, int(args.duration / args.agent_interval))
    lat: list[float] = []
    expected = args.agents * per_agent

    async def recv(c: aiomqtt.Client) -> None:
        async for message in c.messages:
            lat.append(time.perf_counter() - json.loads(message.payload)["body"]["t"])

    receivers = [asyncio.create_task(recv(c)) for c in clients]

    async def send(i: int, c: aiomqtt.Client) -> None:
        to = (i + 1) % args.agents
        for k in range(per_agent):
            t = time.perf_counter()
            body = json.dumps({"id": f"c{i}-{k}", "from": f"c{i}", "to": f"c{to}", "type": "EVENT", "ts": t,
                               "body": {"t": t}})
            await c.publish(f"{BASE}/agents/c{i}/outbox" if via_hub else f"bench/direct/c{to}", body, qos=0)
            await asyncio.sleep(args.agent_interval)

    await asyncio.gather(*(send(i, c) for i, c in enumerate(clients)))
    deadline = time.perf_counter() + 10
    while len(lat) < expected and time.perf_counter() < deadline:  # noqa: ASYNC110 - bounded wait for stragglers
        await asyncio.sleep(0.05)
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    for c in clients:
        await c.__aexit__(None, None, None)
    return lat


async def in_process(args: argparse.Namespace, tmp: Path) -> None:
    """Handoffs, registry and pool queries against a hub without a broker (hub + SQLite cost only)."""
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store(tmp / "store2.db", signer=Ed25519Signer.generate(),
                                                      embedding_dim=4, ttl_sweep_s=0, integrity_check="off"))
        hub = await stack.enter_async_context(Hub(store=store, broker=None, state_dir=tmp / "state2",
                                                  topic_base=BASE))
        regs = {n: await hub.register({"id": n, "type": "HUMAN", "owner": "bench"}, privileged=True, actor="bench")
                for n in ("a", "b")}
        ho = []
        for _ in range(args.handoffs):
            t0 = time.perf_counter()
            h, _ = await hub.handoffs.initiate(initiator="a", target="b", context={"task": "t"})
            await hub.handoffs.transition(h.id, "accept", actor="b")
            ho.append(time.perf_counter() - t0)
        print(f"handoff initiate->accept ({args.handoffs}, 2 durable commits): p50 {pct(ho, .5)*1e3:.3f} ms  "
              f"p95 {pct(ho, .95)*1e3:.3f} ms   target p95 <= 10 ms")
        token = regs["a"]["credentials"]["api_token"]
        n = 100_000
        t0 = time.perf_counter()
        for _ in range(n):
            hub.registry.get("a")
        by_id = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            hub.registry.by_token(token)
        by_tok = (time.perf_counter() - t0) / n
        resolver = hub.token_resolver
        t0 = time.perf_counter()
        for _ in range(n // 10):
            await resolver.resolve(token)
        resolve = (time.perf_counter() - t0) / (n // 10)
        t0 = time.perf_counter()
        for _ in range(n):
            pass
        empty = (time.perf_counter() - t0) / n
        print(f"registry lookup: by id {by_id*1e6:.3f} us, by token {by_tok*1e6:.3f} us, token->principal "
              f"{resolve*1e6:.3f} us (empty loop {empty*1e6:.3f} us)   target <= 50 us")
        await routing_logic(hub)
        admin = Caller("admin", True, 5, frozenset(), None)
        pool = await hub.pools.create(admin, name="bench", scope="GLOBAL")
        await hub.pools.join(admin, pool.id, agent_id="b", permission="READ")
        # A synthetic corpus: 12 words per memory drawn from a 5,000-word vocabulary with a Zipf-like skew,
        # so a query word matches a few hundred memories, as in real notes (not every memory, as a
        # corpus of a handful of words would).
        rng = random.Random(6)
        vocab = [f"w{i}" for i in range(5000)]
        weights = [1.0 / (i + 1) ** 0.8 for i in range(len(vocab))]

        def text(n: int) -> str:
            return " ".join(rng.choices(vocab, weights, k=n))

        t0 = time.perf_counter()
        batch = 2000
        for start in range(0, args.items, batch):
            await asyncio.gather(*(store.memory.create(
                owner_type="agent", owner_id="a", pool=pool.id, scope="TEAM", visibility="pool", content=text(12))
                for _ in range(start, min(args.items, start + batch))))
        fill = time.perf_counter() - t0
        reader = Caller("b", False, 5, hub.registry.require("b").capabilities, hub.registry.require("b"))
        hub.anomaly.threshold = 2.0  # the bench queries far faster than any agent should
        q = []
        raw = []
        listing = []
        for _ in range(args.queries):
            query = text(2)
            t0 = time.perf_counter()
            await hub.pools.query(reader, pool_id=pool.id, text=query, up_to_scope="GLOBAL", limit=10)
            q.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await store.memory.search(text=query, limit=10)
            raw.append(time.perf_counter() - t0)
        for _ in range(min(50, args.queries)):
            t0 = time.perf_counter()
            await hub.pools.query(reader, pool_id=pool.id, text=None, up_to_scope="TEAM", limit=10)
            listing.append(time.perf_counter() - t0)
        print(f"pool query over {args.items} items (filled in {fill:.1f} s): p50 {pct(q, .5)*1e3:.3f} ms  "
              f"p95 {pct(q, .95)*1e3:.3f} ms   (store search alone p95 {pct(raw, .95)*1e3:.3f} ms; listing without"
              f" text p95 {pct(listing, .95)*1e3:.3f} ms)   target p95 <= 5 ms at 100k")


async def routing_logic(hub: Hub) -> None:
    """The hub's own share of a routed message: the outbox handler with the inbox publish stubbed (decode,
    sender and rate checks, policy, routing, encode), next to the hub process's whole CPU per message
    printed by the messaging half (MQTT client stack, event loop and kernel included)."""
    sent = 0

    async def publish(_topic: str, _payload: bytes, _qos: int) -> bool:
        nonlocal sent
        sent += 1
        return True

    hub.router._publish = publish  # bench only: the broker side is measured by the messaging half
    hub.registry.set_mqtt_online("b", True)
    limits = hub.agent_limits.rate, hub.agent_limits.burst
    hub.agent_limits.rate = hub.agent_limits.burst = 1e9
    n = 20_000
    messages = [aiomqtt.Message(topic=f"{BASE}/agents/a/outbox", payload=json.dumps(
        {"id": f"r{i}", "from": "a", "to": "b", "type": "EVENT", "ts": 1.0, "body": {"t": 1.0}}).encode(),
        qos=0, retain=False, mid=1, properties=None) for i in range(n)]
    t0 = time.perf_counter()
    for message in messages:
        await hub._on_outbox(message)
    per = (time.perf_counter() - t0) / n
    hub.agent_limits.rate, hub.agent_limits.burst = limits
    hub.registry.set_mqtt_online("b", False)
    print(f"hub routing logic alone (inbox publish stubbed): {per * 1e6:.1f} us per message ({sent} routed)")


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    try:
        await run_all(args, tmp)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)


async def run_all(args: argparse.Namespace, tmp: Path) -> None:
    if args.only == "in-process":
        await in_process(args, tmp)
        return
    runs = []
    for i in range(args.repeat):
        load = os.getloadavg()
        print(f"--- messaging run {i + 1}/{args.repeat}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
              f" ({os.cpu_count()} CPUs), gc.freeze in the hub process: {not args.no_gc_freeze}")
        run_dir = tmp / f"run{i}"
        run_dir.mkdir()
        runs.append(await messaging_run(args, run_dir))
    if args.repeat > 1:
        load = os.getloadavg()
        print(f"=== median of {args.repeat} runs (load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}):")
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"  latency @ {args.rate:g} msg/s: direct p50 {med['direct_p50']:.3f} ms p99 {med['direct_p99']:.3f} ms"
              f" | agent->hub->agent p50 {med['hub_p50']:.3f} ms p99 {med['hub_p99']:.3f} ms (target p99 <= 5 ms)")
        print(f"  peak: direct {med['direct_peak']:.0f} msg/s, hub {med['hub_peak']:.0f} msg/s, ratio"
              f" {med['ratio']:.2f} (target >= 0.5); {args.agents} agents p99 direct"
              f" {med['agents_direct_p99']:.3f} ms, via hub {med['agents_p99']:.3f} ms")
        print("  per run hub p99 (ms):", " ".join(f"{r['hub_p99']:.2f}" for r in runs),
              "| hub process waiting for a CPU (ms):", " ".join(f"{r['hub_cpu_wait_ms']:.0f}" for r in runs),
              "| hub CPU per message (us):", " ".join(f"{r['hub_cpu_us']:.0f}" for r in runs),
              "| ratio:", " ".join(f"{r['ratio']:.2f}" for r in runs))
    if args.only is None:
        await in_process(args, tmp)


async def messaging_run(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    broker, _files = broker_setup(tmp, args.agents)
    broker.start()
    child: subprocess.Popen[str] | None = None
    try:
        assert broker.pid is not None
        child = subprocess.Popen(  # noqa: ASYNC220 - a child started once, before any timing
            [sys.executable, *(os.environ["HUB_BENCH_CHILD"].split() if os.environ.get("HUB_BENCH_CHILD")
                               else ["-m", "bench.hub"]), "--serve", str(tmp), "--port", str(broker.port),
             "--broker-pid", str(broker.pid), "--agents", str(args.agents),
             *(["--no-gc-freeze"] if args.no_gc_freeze else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        line = await asyncio.to_thread(child.stdout.readline)
        if line.strip() != "READY":
            raise RuntimeError(f"hub process did not start: {line!r}")
        creds = json.loads((tmp / "creds.json").read_text())

        async def online() -> None:
            await asyncio.sleep(0.5)  # the hub sees b's retained "online" status

        await asyncio.sleep(0.5)  # mosquitto re-reads the password file after the SIGHUP
        figures = await messaging(args, tmp, broker.port, creds, online=online,
                                  pids={"hub": child.pid, "broker": broker.pid, "clients": os.getpid()})
        child.stdin.close()
        print("hub process counters:", (await asyncio.to_thread(child.stdout.readline)).strip())
        child.wait(timeout=10)
        return figures
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(timeout=10)
        broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--handoffs", type=int, default=200)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--agent-interval", type=float, default=0.1, help="seconds between one agent's messages")
    parser.add_argument("--only", choices=["messaging", "in-process"], help="run one half of the bench")
    parser.add_argument("--repeat", type=int, default=1, help="messaging runs; medians are printed")
    parser.add_argument("--no-gc-freeze", action="store_true", help="leave the hub process's GC as it is")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--broker-pid", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        asyncio.run(serve(parsed.serve, parsed.port, parsed.broker_pid, parsed.agents,
                          freeze=not parsed.no_gc_freeze))
    else:
        asyncio.run(main(parsed))
