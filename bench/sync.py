"""Uplink throughput and the cost of appending during an outage, each next to a baseline from the same run.

Run: .venv/bin/python -m bench.sync [--records 200000] [--batch 2000] [--appends 2000]
Goals (issue 8): drain 1,000,000 queued records to the reference upstream on loopback at >= 20,000
records/s (``--records 1000000``); appending during an outage costs <= 2x appending normally.

Baselines:
- drain: the same upstream ingesting pre-encoded batches of fresh ids posted back to back (no outbox
  peek, no encode, no ack): what the transport and the upstream's SQLite allow at best.
- append: the same appends with no uplink running at all; then with the uplink draining to a healthy
  upstream ("normal"); then with the upstream unreachable, the worker backing off and the spool policy
  dropping telemetry under a small cap ("outage").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from daemon.store import Ed25519Signer, Store
from daemon.sync import SpoolPolicy, SyncWorker
from daemon.sync.wire import encode_batch
from tests.sync.conftest import start_upstream, stop_process

STREAMS = ("telemetry", "events", "audit", "memory")


def payload(i: int) -> bytes:
    return json.dumps({"device": "mycobrain-1", "sensor": "bme688", "seq": i, "t": 21.5 + i % 7,
                       "rh": 55.1, "p": 1013.2, "gas": 120_000 + i % 1000}).encode()


async def fill(store: Store, total: int) -> float:
    per = total // len(STREAMS)
    start = time.perf_counter()
    for stream in STREAMS:
        for lo in range(0, per, 5000):
            chunk = [(f"{stream}-{i:08d}", payload(i)) for i in range(lo, min(per, lo + 5000))]
            await store.outbox_append(stream, chunk)
    return time.perf_counter() - start


async def drain(store: Store, url: str, total: int, batch: int) -> float:
    start = time.perf_counter()
    async with SyncWorker(store, url=url, periodic=False, batch_max_records=batch,
                          batch_max_bytes=8 * 1024 * 1024) as worker:
        result = await worker.run_once()
        if not result.ok:
            raise SystemExit(f"drain failed: {result.errors}")
        sent = sum(result.sent.values())
    elapsed = time.perf_counter() - start
    if sent != total:
        raise SystemExit(f"sent {sent} of {total}")
    return elapsed


class _Rec:
    __slots__ = ("created", "payload", "record_id", "seq", "stream")

    def __init__(self, seq: int, stream: str, record_id: str, data: bytes) -> None:
        self.seq, self.stream, self.record_id, self.payload, self.created = seq, stream, record_id, data, 0.0


async def floor(url: str, total: int, batch: int) -> float:
    """Pre-encoded batches of fresh ids, posted one after another per stream, 4 streams at once."""
    per = total // len(STREAMS)
    bodies = {
        s: [encode_batch("floor", f"floor_{s}",
                         [_Rec(i, s, f"f{s}{i}", payload(i)) for i in range(lo, min(per, lo + batch))])
            for lo in range(0, per, batch)]
        for s in STREAMS
    }

    async def post_all(session: aiohttp.ClientSession, stream: str) -> None:
        for b in bodies[stream]:
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                       "Idempotency-Key": b.idempotency_key}
            async with session.post(url + "/v1/ingest", data=b.body, headers=headers) as r:
                r.raise_for_status()
                await r.read()

    start = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(post_all(session, s) for s in STREAMS))
    return time.perf_counter() - start


async def append_latencies(store: Store, n: int, tag: str) -> list[float]:
    out = []
    for i in range(n):
        records = [(f"{tag}-{i:06d}-{j}", payload(i)) for j in range(10)]
        t0 = time.perf_counter()
        await store.outbox_append("telemetry", records)
        out.append((time.perf_counter() - t0) * 1e6)
        await asyncio.sleep(0.002)  # a steady producer, not a burst: gives the uplink room to run
    return out


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def summary(name: str, lat: list[float]) -> tuple[float, float, str]:
    lat = sorted(lat)
    p50 = statistics.median(lat)
    p99 = lat[int(len(lat) * 0.99) - 1]
    mean = statistics.fmean(lat)
    return p50, mean, f"{name:<34} p50 {p50:8.0f} µs   p99 {p99:8.0f} µs   mean {mean:8.0f} µs"


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    up = await asyncio.to_thread(start_upstream, tmp / "upstream.db")
    try:
        async with Store(tmp / "node.db", signer=Ed25519Signer.generate(), embedding_dim=4, ttl_sweep_s=0) as store:
            fill_s = await fill(store, args.records)
            total = args.records // len(STREAMS) * len(STREAMS)
            drain_s = await drain(store, up.url, total, args.batch)
            floor_s = await floor(up.url, total, args.batch)
            print(f"records                            {total:,} over {len(STREAMS)} streams, batch {args.batch}")
            print(f"queue (outbox append)              {total / fill_s:10,.0f} records/s")
            print(f"drain (SyncWorker -> upstream)     {total / drain_s:10,.0f} records/s   goal >= 20,000")
            print(f"floor (pre-encoded posts)          {total / floor_s:10,.0f} records/s   (baseline)")

            await append_latencies(store, min(300, args.appends), "warmup")
            idle = await append_latencies(store, args.appends, "idle")
            async with SyncWorker(store, url=up.url, interval_s=0.5, batch_max_records=args.batch):
                normal = await append_latencies(store, args.appends, "normal")
            policy = SpoolPolicy(max_bytes=2 * 1024 * 1024)
            async with SyncWorker(store, url=closed_port_url(), interval_s=0.5, backoff_initial_s=0.05,
                                  backoff_max_s=0.5, spool=policy, spool_check_interval_s=0.5) as worker:
                outage = await append_latencies(store, args.appends, "outage")
                dropped = worker.status().streams["telemetry"].dropped
            p_idle, m_idle, line_idle = summary("append 10 records, no uplink", idle)
            p_norm, m_norm, line_norm = summary("append 10 records, uplink normal", normal)
            p_out, m_out, line_out = summary("append 10 records, upstream down", outage)
            print(line_idle + "   (baseline)")
            print(line_norm)
            print(line_out + f"   dropped by policy: {dropped}")
            print(f"outage / normal                    {p_out / p_norm:10.2f}x p50 {m_out / m_norm:6.2f}x mean"
                  "   goal <= 2x")
            print(f"outage / no uplink                 {p_out / p_idle:10.2f}x p50 {m_out / m_idle:6.2f}x mean")
    finally:
        await asyncio.to_thread(stop_process, up.proc)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the outage phase warns by design; keep the figures readable
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records to queue and drain (goal run: 1000000)")
    parser.add_argument("--batch", type=int, default=2000, help="records per batch")
    parser.add_argument("--appends", type=int, default=2000, help="appends per latency sample")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
