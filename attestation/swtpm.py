"""A provisioned software TPM (swtpm) as a direct child process, for tests, benchmarks and demo mode.

``swtpm_setup --create-ek-cert`` manufactures a TPM whose EK certificates (RSA-2048 at NV 0x01c00002,
ECC P-384 at 0x01c00016) are signed by a local CA kept in a directory we choose, so a verifier can be
configured with that CA exactly as it would be with a TPM vendor's CA bundle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from attestation.errors import TpmUnavailableError

_log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# Options for the certificates swtpm_localca writes (platform certificate fields); copied from the
# Debian package's /etc/swtpm-localca.options so we do not depend on that file existing.
_LOCALCA_OPTIONS = "--platform-manufacturer mycoedge\n--platform-version 2.1\n--platform-model swtpm\n"


@dataclass(frozen=True, slots=True)
class ProvisionedState:
    """A manufactured TPM state directory and the CA bundle (PEM, root + issuer) that signed its EK certs."""

    state_dir: Path
    ca_bundle: Path


def provision(state_dir: Path, ca_dir: Path) -> ProvisionedState:
    """Manufacture a TPM 2.0 state with EK certificates signed by a local CA kept in ``ca_dir`` (blocking).

    Several states provisioned with the same ``ca_dir`` share one CA, as TPMs from one vendor do.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.mkdir(parents=True, exist_ok=True)
    conf_dir = ca_dir / "conf"
    conf_dir.mkdir(exist_ok=True)
    localca_conf = conf_dir / "swtpm-localca.conf"
    localca_conf.write_text(
        f"statedir = {ca_dir}\n"
        f"signingkey = {ca_dir / 'signkey.pem'}\n"
        f"issuercert = {ca_dir / 'issuercert.pem'}\n"
        f"certserial = {ca_dir / 'certserial'}\n"
    )
    options = conf_dir / "swtpm-localca.options"
    options.write_text(_LOCALCA_OPTIONS)
    setup_conf = conf_dir / "swtpm_setup.conf"
    setup_conf.write_text(
        "create_certs_tool = swtpm_localca\n"
        f"create_certs_tool_config = {localca_conf}\n"
        f"create_certs_tool_options = {options}\n"
        "active_pcr_banks = sha256\n"
    )
    env = dict(os.environ, TSS2_LOG="all+NONE")
    result = subprocess.run(
        [
            "swtpm_setup", "--tpm2", "--tpmstate", str(state_dir), "--create-ek-cert",
            "--create-platform-cert", "--config", str(setup_conf), "--overwrite",
        ],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        raise TpmUnavailableError(f"swtpm_setup failed ({result.returncode}): {result.stderr[-500:]}")
    bundle = ca_dir / "ca-bundle.pem"
    bundle.write_bytes(
        (ca_dir / "swtpm-localca-rootca-cert.pem").read_bytes() + (ca_dir / "issuercert.pem").read_bytes()
    )
    return ProvisionedState(state_dir=state_dir, ca_bundle=bundle)


def ensure_provisioned(state_dir: Path, ca_dir: Path) -> ProvisionedState:
    """Provision once and reuse afterwards (``mycoedge demo`` restarts keep their TPM, AK and sealed keys)."""
    bundle = ca_dir / "ca-bundle.pem"
    if (state_dir / "tpm2-00.permall").exists() and bundle.exists():
        return ProvisionedState(state_dir=state_dir, ca_bundle=bundle)
    return provision(state_dir, ca_dir)


def copy_state(source: ProvisionedState, state_dir: Path) -> ProvisionedState:
    """A copy of a manufactured state (same EK, same CA): cheaper than provisioning again (~1.3 s)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for item in source.state_dir.iterdir():
        if item.is_file() and item.name != ".lock":
            shutil.copy2(item, state_dir / item.name)
    return ProvisionedState(state_dir=state_dir, ca_bundle=source.ca_bundle)


def _free_port_pair() -> int:
    """A loopback port P with P+1 also free: the tss ``swtpm:`` TCTI always uses P+1 for control."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise TpmUnavailableError("no free loopback port pair for swtpm")


class Swtpm:
    """One running swtpm serving a provisioned state on loopback; stop it with ``stop`` or ``with``."""

    def __init__(self, state: ProvisionedState, *, port: int | None = None) -> None:
        self.state = state
        self.port = port or 0
        self._fixed_port = port is not None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        """The TCTI string for tpm2-pytss and tpm2-tools (``TPM2TOOLS_TCTI``)."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ca_bundle(self) -> Path:
        return self.state.ca_bundle

    def start(self) -> Self:
        """Start swtpm as a direct child and wait until it accepts connections (blocking, ~50 ms)."""
        for _ in range(1 if self._fixed_port else 5):
            if not self._fixed_port:
                self.port = _free_port_pair()
            proc = subprocess.Popen(
                [
                    "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state.state_dir}",
                    "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                    "--flags", "not-need-init,startup-clear",
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches its owner, which stops it after the TPM's last user
            )  # fmt: skip
            self._proc = proc
            if self._wait_ready(proc):
                _log.debug("swtpm pid %d on port %d", proc.pid, self.port)
                return self
            self.stop()  # lost a race for the port: try another pair
        raise TpmUnavailableError("swtpm did not start")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Terminate swtpm by PID and reap it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
