"""TLS (and mTLS) credentials of the gRPC port that follow their files: a rotated certificate,
key or client CA is used from the next handshake on, without a restart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from campaign_service import metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], root_certificates=self.client_ca)


class TlsFilesError(Exception):
    pass


class ReloadingServerCredentials:
    """grpc calls `fetch` at each new handshake; it re-reads the files only when one changed.

    A half-finished rotation (certificate and key that do not match yet, an unreadable file)
    keeps the previous material and is retried on the next handshake.
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self._files = (cert_file, key_file, client_ca_file)
        self._stamp = self._stat()
        self._material = self._read()
        self.require_client_auth = client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._material.configuration(),
            # grpc's stubs say the fetcher always returns a configuration; None means "unchanged".
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self.require_client_auth,
        )

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self._files:
            if path is None:
                stamps.append(None)
                continue
            st = path.stat()
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _read(self) -> _Material:
        cert_file, key_file, ca_file = self._files
        cert, key = cert_file.read_bytes(), key_file.read_bytes()
        ca = ca_file.read_bytes() if ca_file is not None else None
        try:
            public = x509.load_pem_x509_certificate(cert).public_key()
            private = serialization.load_pem_private_key(key, password=None)
            if ca is not None:
                x509.load_pem_x509_certificates(ca)
        except (ValueError, TypeError) as exc:
            raise TlsFilesError(f"not PEM certificate/key material: {type(exc).__name__}") from None
        if public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise TlsFilesError("the certificate does not belong to the key")
        return _Material(cert, key, ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed and are consistent, else None (keep)."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            material = self._read()
        except (OSError, TlsFilesError) as exc:
            metrics.KEY_RELOADS.labels("tls", "error").inc()
            log.warning("TLS files not reloaded; keeping the previous ones", error=str(exc)[:200])
            return None
        self._stamp, self._material = stamp, material
        metrics.KEY_RELOADS.labels("tls", "ok").inc()
        log.info("TLS files reloaded")
        return material.configuration()
