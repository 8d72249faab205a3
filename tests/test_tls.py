"""TLS and mutual TLS (issue 11, point 6): AIP_TLS_CERT_FILE, AIP_TLS_KEY_FILE, AIP_TLS_CLIENT_CA_FILE.

The certificates are made for each test session: a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate, all signed by it, and a second CA nobody trusts.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from clients import AIPlatformClient
from tests.gateway_process import failed_start, gateway_env, running_gateway
from tests.harness import gateway_for

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, the server's certificate and key, a client's, and a stranger CA's client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    directory: Path, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, stranger_ca_key = _key(), _key()
    ca = _certificate("aiplatform test CA", ca_key, None)
    stranger_ca = _certificate("stranger CA", stranger_ca_key, None)
    ca_path, _ = _write(directory, "ca", ca, ca_key)
    server_key, client_key, stranger_key = _key(), _key(), _key()
    server = _certificate("127.0.0.1", server_key, (ca.subject, ca_key), server=True)
    client = _certificate("team-search", client_key, (ca.subject, ca_key))
    stranger = _certificate("team-stranger", stranger_key, (stranger_ca.subject, stranger_ca_key))
    server_paths = _write(directory, "server", server, server_key)
    client_paths = _write(directory, "client", client, client_key)
    stranger_paths = _write(directory, "stranger", stranger, stranger_key)
    return Pki(ca_path, *server_paths, *client_paths, *stranger_paths)


def _credentials(pki: Pki, client: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )


HI = [pb.ChatMessage(role="user", content="over TLS")]


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = pb_grpc.AIPlatformServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListServices(pb.ListServicesRequest(), timeout=5)
    return refused.value.code()


async def test_a_tls_gateway_serves_tls_clients_and_refuses_plain_text(pki: Pki) -> None:
    async with gateway_for(
        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, channel_credentials=_credentials(pki)
    ) as gateway:
        answer = await gateway.stub.Chat(pb.ChatRequest(service_name="echo", messages=HI))
        async with grpc.aio.insecure_channel(gateway.target) as plain:
            plain_code = await _refused(plain)
        # The Python client, as a user writes it.
        client = AIPlatformClient(gateway.target, credentials=_credentials(pki), service_config=None)
        try:
            names = {service.name for service in await asyncio.to_thread(client.list_services)}
        finally:
            client.close()

    assert answer.content == "over TLS"
    assert plain_code == grpc.StatusCode.UNAVAILABLE
    assert "echo" in names


async def test_mutual_tls_takes_a_client_certificate_of_its_ca_and_refuses_others(pki: Pki) -> None:
    settings: dict[str, Any] = {
        "tls_cert_file": pki.server_cert,
        "tls_key_file": pki.server_key,
        "tls_client_ca_file": pki.ca,
    }
    client = (pki.client_cert, pki.client_key)
    async with gateway_for(channel_credentials=_credentials(pki, client), **settings) as gateway:
        answer = await gateway.stub.Chat(pb.ChatRequest(service_name="echo", messages=HI))
        async with grpc.aio.secure_channel(gateway.target, _credentials(pki)) as no_certificate:
            without = await _refused(no_certificate)
        stranger = (pki.stranger_cert, pki.stranger_key)
        async with grpc.aio.secure_channel(gateway.target, _credentials(pki, stranger)) as wrong_ca:
            wrong = await _refused(wrong_ca)

    assert answer.content == "over TLS"
    assert without == grpc.StatusCode.UNAVAILABLE
    assert wrong == grpc.StatusCode.UNAVAILABLE


async def test_grpcurl_calls_a_mutual_tls_gateway_process_as_the_readme_shows(pki: Pki, tmp_path: Path) -> None:
    env = gateway_env(
        AIP_TLS_CERT_FILE=str(pki.server_cert),
        AIP_TLS_KEY_FILE=str(pki.server_key),
        AIP_TLS_CLIENT_CA_FILE=str(pki.ca),
    )
    async with running_gateway(env, tmp_path) as gateway:
        assert any(b"with mTLS" in line for line in gateway.startup_log)
        command = [
            str(BIN / "grpcurl"),
            "-cacert", str(pki.ca),
            "-cert", str(pki.client_cert),
            "-key", str(pki.client_key),
            "-d", '{"service_name":"echo","messages":[{"role":"user","content":"over mTLS"}]}',
            gateway.target,
            "aiplatform.v1.AIPlatformService/Chat",
        ]  # fmt: skip
        called = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)

    assert called.returncode == 0, called.stderr
    assert '"content": "over mTLS"' in called.stdout


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"AIP_TLS_CERT_FILE": "server.crt"}, "AIP_TLS_CERT_FILE and AIP_TLS_KEY_FILE go together"),
        ({"AIP_TLS_CLIENT_CA_FILE": "ca.crt"}, "AIP_TLS_CLIENT_CA_FILE needs AIP_TLS_CERT_FILE"),
        ({"AIP_TLS_CERT_FILE": "missing.crt", "AIP_TLS_KEY_FILE": "missing.key"}, "cannot read the file"),
    ],
)
async def test_tls_settings_that_cannot_work_stop_the_start_with_one_line(
    variables: dict[str, str], message: str, tmp_path: Path
) -> None:
    code, lines = await failed_start(gateway_env(**variables), tmp_path)
    assert code != 0
    assert len(lines) == 1 and message in lines[0], lines
