"""mTLS on the gRPC port with real TLS handshakes: clients without a certificate from the
client CA are refused, and rotated certificate/key/CA files are used without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.api.tls import ReloadingServerCredentials
from tests.certs import CertificateAuthority, Pem, write
from tests.conftest import ServiceProcess, start_service
from tests.tokens import auth_channel

# A fresh connection per channel: grpc may otherwise share one subchannel between channels.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class Pki:
    server_ca: CertificateAuthority
    client_ca: CertificateAuthority
    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_ca_file(self) -> Path:
        return self.dir / "client-ca.crt"

    def install_server(self, ca: CertificateAuthority) -> None:
        pem = ca.issue("campaign-service", server=True)
        write(self.key, pem.key)
        write(self.cert, pem.cert)


@dataclass
class TlsService:
    svc: ServiceProcess
    pki: Pki


@pytest.fixture(scope="module")
def tls_service(database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsService]:
    tmp = tmp_path_factory.mktemp("mtls")
    pki = Pki(CertificateAuthority("server CA"), CertificateAuthority("client CA"), tmp)
    pki.install_server(pki.server_ca)
    write(pki.client_ca_file, pki.client_ca.pem)
    svc = start_service(
        database,
        tmp,
        {
            "CAMPAIGN_TLS_CERT_FILE": str(pki.cert),
            "CAMPAIGN_TLS_KEY_FILE": str(pki.key),
            "CAMPAIGN_TLS_CLIENT_CA_FILE": str(pki.client_ca_file),
        },
    )
    yield TlsService(svc, pki)
    svc.stop()


def credentials(trust: CertificateAuthority, client: Pem | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=trust.pem,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )


async def list_code(target: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (
        grpc.aio.secure_channel(target, creds, options=OWN_CONNECTION)
        if creds
        else grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
    )
    async with channel:
        try:
            await campaign_grpc.CampaignServiceStub(channel).ListVIPTiers(
                pb.ListVIPTiersRequest(merchant_id="123e4567-e89b-12d3-a456-426614174000"), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_client_with_a_certificate_from_the_client_ca_gets_through(
    tls_service: TlsService, new_merchant: Any
) -> None:
    pki = tls_service.pki
    merchant = await new_merchant()
    creds = credentials(pki.server_ca, pki.client_ca.issue("frontend", server=False))
    async with auth_channel(tls_service.svc.target, credentials=creds) as channel:
        got = await campaign_grpc.CampaignServiceStub(channel).ListVIPTiers(
            pb.ListVIPTiersRequest(merchant_id=str(merchant))
        )
    assert list(got.tiers) == []


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA", "plaintext"])
async def test_clients_without_a_valid_certificate_are_refused(tls_service: TlsService, who: str) -> None:
    pki = tls_service.pki
    creds = {
        "no certificate": credentials(pki.server_ca, None),
        "certificate from another CA": credentials(
            pki.server_ca, CertificateAuthority("rogue").issue("x", server=False)
        ),
        "plaintext": None,
    }[who]
    assert await list_code(tls_service.svc.target, creds) == grpc.StatusCode.UNAVAILABLE


async def test_rotated_files_are_used_without_a_restart(tls_service: TlsService) -> None:
    pki, target = tls_service.pki, tls_service.svc.target
    new_server_ca, new_client_ca = CertificateAuthority("server CA 2"), CertificateAuthority("client CA 2")
    new_client = new_client_ca.issue("frontend", server=False)
    old_client = pki.client_ca.issue("frontend", server=False)
    # Before: only the old CAs work (UNAUTHENTICATED = the handshake passed, no token was sent).
    assert await list_code(target, credentials(pki.server_ca, old_client)) == grpc.StatusCode.UNAUTHENTICATED
    assert await list_code(target, credentials(new_server_ca, new_client)) == grpc.StatusCode.UNAVAILABLE
    pki.install_server(new_server_ca)
    write(pki.client_ca_file, new_client_ca.pem)
    assert await list_code(target, credentials(new_server_ca, new_client)) == grpc.StatusCode.UNAUTHENTICATED
    assert await list_code(target, credentials(pki.server_ca, old_client)) == grpc.StatusCode.UNAVAILABLE
    assert await list_code(target, credentials(new_server_ca, old_client)) == grpc.StatusCode.UNAVAILABLE
    assert tls_service.svc.proc.poll() is None
    assert "TLS files reloaded" in tls_service.svc.logs()
    pki.server_ca, pki.client_ca = new_server_ca, new_client_ca


def test_half_finished_rotation_keeps_the_previous_files(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    first, second = ca.issue("a", server=True), ca.issue("b", server=True)
    cert, key = write(tmp_path / "c.pem", first.cert), write(tmp_path / "k.pem", first.key)
    creds = ReloadingServerCredentials(cert, key, None)
    assert creds.fetch() is None  # unchanged
    write(cert, second.cert)  # the key is not there yet
    assert creds.fetch() is None
    write(key, second.key)
    assert creds.fetch() is not None
    write(cert, b"garbage")
    assert creds.fetch() is None
    key.unlink()
    assert creds.fetch() is None
