"""Attestation speed and memory on swtpm, each figure next to a floor measured in the same run.

Run: .venv/bin/python -m bench.attest [--samples 50] [--duration 20] [--rate 100]
Goals (issue 7): quote + verify ≤ 50 ms, verify alone ≤ 2 ms, 100 attestations a minute for 10 minutes
(``--duration 600``) with flat memory. The default duration is short (20 s) for development.

Floors: a TPM2_GetRandom round trip on the same swtpm (what any TPM command costs on this transport) and
one bare ECDSA P-256 verification with ``cryptography`` (what any quote verification must at least cost).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.agent import answer_challenge
from attestation.challenge import Verifier, VerifierPolicy
from attestation.pcr import PcrSelection
from attestation.swtpm import Swtpm, provision
from attestation.tpm import Tpm
from attestation.verify import verify_quote

SELECTION = PcrSelection.parse("sha256:0-7,16")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed(fn: Callable[[], object], samples: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(name: str, ms: list[float], budget: float | None, floor_name: str, floor_ms: list[float]) -> None:
    med, p95 = statistics.median(ms), sorted(ms)[int(0.95 * (len(ms) - 1))]
    verdict = "" if budget is None else ("  OK" if p95 <= budget else "  OVER BUDGET")
    budget_txt = f"budget {budget:>5.1f} ms" if budget is not None else " " * 15
    print(
        f"{name:<34} median {med:7.2f} ms  p95 {p95:7.2f} ms  {budget_txt}   "
        f"floor ({floor_name}) median {statistics.median(floor_ms):6.3f} ms{verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sustained attestation (600 = 10 min)")
    parser.add_argument("--rate", type=float, default=100.0, help="attestations per minute in the sustained run")
    args = parser.parse_args()
    os.environ.setdefault("TSS2_LOG", "all+NONE")

    with tempfile.TemporaryDirectory() as tmp:
        state = provision(Path(tmp) / "state", Path(tmp) / "ca")
        policy = VerifierPolicy(ca_bundle=state.ca_bundle.read_bytes(), pcr_selection=SELECTION)
        with Swtpm(state) as swtpm, Tpm.open(swtpm.tcti, state_dir=Path(tmp) / "keys") as tpm:
            identity = tpm.identity()
            nonce = os.urandom(32)

            # Floors, same run, same transport.
            floor_tpm = timed(lambda: tpm.ectx.get_random(16), args.samples)
            key = ec.generate_private_key(ec.SECP256R1())
            msg = b"x" * 150
            sig = key.sign(msg, ec.ECDSA(hashes.SHA256()))
            pub = key.public_key()
            floor_ecdsa = timed(lambda: pub.verify(sig, msg, ec.ECDSA(hashes.SHA256())), args.samples * 4)

            def quote_and_verify() -> None:
                quote = tpm.quote(nonce, SELECTION)
                verify_quote(quote.attest, quote.signature, identity.ak_public, nonce, SELECTION, quote.pcr_values)

            recorded = tpm.quote(nonce, SELECTION)

            def verify_alone() -> None:
                verify_quote(
                    recorded.attest, recorded.signature, identity.ak_public, nonce, SELECTION, recorded.pcr_values
                )

            verifier = Verifier(policy)

            def full_round() -> None:
                challenge = verifier.issue_challenge("bench", identity)
                verifier.verify("bench", answer_challenge(tpm, challenge))

            print(f"swtpm pid {swtpm.pid}, PCR selection {SELECTION}, {args.samples} samples each")
            row("quote + verify (swtpm)", timed(quote_and_verify, args.samples), 50.0, "TPM2_GetRandom", floor_tpm)
            row("verify alone (pure, from bytes)", timed(verify_alone, args.samples * 4), 2.0, "ECDSA verify",
                floor_ecdsa)  # fmt: skip
            row("full challenge/verify round", timed(full_round, args.samples), None, "TPM2_GetRandom", floor_tpm)

            # Sustained: `rate` attestations a minute, memory sampled before and after.
            interval = 60.0 / args.rate
            gc.collect()
            tracemalloc.start()
            rss0, swtpm0 = rss_kb(os.getpid()), rss_kb(swtpm.pid or 0)
            heap0 = tracemalloc.get_traced_memory()[0]
            done, lat = 0, []
            deadline = time.monotonic() + args.duration
            next_at = time.monotonic()
            warm_at = time.monotonic() + args.duration / 4
            heap_warm = rss_warm = None
            while time.monotonic() < deadline:
                start = time.perf_counter()
                full_round()
                lat.append((time.perf_counter() - start) * 1000)
                done += 1
                if heap_warm is None and time.monotonic() >= warm_at:
                    heap_warm, rss_warm = tracemalloc.get_traced_memory()[0], rss_kb(os.getpid())
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            gc.collect()
            heap1 = tracemalloc.get_traced_memory()[0]
            rss1, swtpm1 = rss_kb(os.getpid()), rss_kb(swtpm.pid or 0)
            tracemalloc.stop()
            heap_late = (heap1 - (heap_warm or heap0)) / 1024
            rss_late = rss1 - (rss_warm or rss0)
            print(
                f"sustained {args.rate:.0f}/min for {args.duration:.0f} s: {done} attestations, median "
                f"{statistics.median(lat):.2f} ms\n"
                f"  Python heap {heap0 / 1024:.0f} -> {heap1 / 1024:.0f} KiB ({(heap1 - heap0) / 1024:+.0f}; "
                f"{heap_late:+.0f} after the first quarter)\n"
                f"  RSS {rss0} -> {rss1} KiB ({rss1 - rss0:+d}; {rss_late:+d} after the first quarter); "
                f"swtpm RSS {swtpm0} -> {swtpm1} KiB ({swtpm1 - swtpm0:+d})\n"
                f"  pending challenges {verifier.stats()['pending_challenges']} (bounded: kept one TTL past expiry)"
            )


if __name__ == "__main__":
    main()
