"""A fake SPIFFE Workload API (what a SPIRE agent serves) on a unix socket.

It implements the two streams swim-as follows, ``FetchX509SVID`` and
``FetchJWTBundles``, with the protobuf messages py-spiffe ships, over a real
gRPC server on a socket in a short temporary folder. The test sets the
SVIDs and bundles; every open stream then receives the new message, as
SPIRE pushes an update. :meth:`FakeWorkloadApi.fail_streams` ends every open
stream with UNAVAILABLE, as an agent restart does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.support.pki import Svid

DER = serialization.Encoding.DER


def der_chain(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(DER) for c in certificates)


def svid_message(spiffe_id: str, svid: Svid, bundle: list[x509.Certificate]) -> Any:
    key = svid.key.private_bytes(
        DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return workload_pb2.X509SVID(
        spiffe_id=spiffe_id,
        x509_svid=der_chain(svid.cert, *svid.chain),
        x509_svid_key=key,
        bundle=der_chain(*bundle),
    )


class _Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    def __init__(self, fake: FakeWorkloadApi) -> None:
        self.fake = fake

    def FetchX509SVID(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        yield from self.fake._stream(context, "x509")

    def FetchJWTBundles(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        yield from self.fake._stream(context, "jwt")


class FakeWorkloadApi:
    """The fake agent. ``socket`` is the ``unix://`` address to configure."""

    def __init__(self) -> None:
        # A short folder: unix socket paths are limited to about 100 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="swa-", dir="/tmp"))
        self.path = self.folder / "agent.sock"
        self.socket = f"unix://{self.path}"
        self._lock = threading.Condition()
        self._messages: dict[str, Any] = {}
        self._versions: dict[str, int] = {"x509": 0, "jwt": 0}
        self._failures: dict[str, int] = {"x509": 0, "jwt": 0}
        self.opened: dict[str, int] = {"x509": 0, "jwt": 0}
        self.refused_without_header = 0
        self._server: grpc.Server | None = None

    def start(self) -> FakeWorkloadApi:
        server = grpc.server(ThreadPoolExecutor(max_workers=16))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(
            _Servicer(self), server
        )
        server.add_insecure_port(f"unix:{self.path}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- what the agent says -------------------------------------------------

    def set_x509(
        self, svids: list[Any], federated: dict[str, list[x509.Certificate]]
    ) -> None:
        message = workload_pb2.X509SVIDResponse(
            svids=svids,
            federated_bundles={
                f"spiffe://{td}": der_chain(*certs) for td, certs in federated.items()
            },
        )
        self._publish("x509", message)

    def set_jwt(self, bundles: dict[str, list[dict[str, Any]]]) -> None:
        message = workload_pb2.JWTBundlesResponse(
            bundles={
                f"spiffe://{td}": json.dumps({"keys": keys}).encode()
                for td, keys in bundles.items()
            }
        )
        self._publish("jwt", message)

    def fail_streams(self) -> None:
        """End every open stream with UNAVAILABLE (an agent restart)."""
        with self._lock:
            for kind in self._failures:
                self._failures[kind] += 1
            self._lock.notify_all()

    def _publish(self, kind: str, message: Any) -> None:
        with self._lock:
            self._messages[kind] = message
            self._versions[kind] += 1
            self._lock.notify_all()

    def _stream(self, context: Any, kind: str) -> Iterator[Any]:
        metadata = dict(context.invocation_metadata())
        if metadata.get("workload.spiffe.io") != "true":
            # SPIFFE Workload Endpoint §4: the header is required.
            self.refused_without_header += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
        with self._lock:
            self.opened[kind] += 1
            failures = self._failures[kind]
        sent = 0
        while context.is_active():
            with self._lock:
                if self._failures[kind] != failures:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "agent restarting")
                version = self._versions[kind]
                message = self._messages.get(kind)
                if version == sent or message is None:
                    self._lock.wait(timeout=0.1)
                    continue
            sent = version
            yield message
