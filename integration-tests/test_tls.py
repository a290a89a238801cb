"""TLS and mTLS on the gateway's listeners, with certificates the test makes itself (the
`cryptography` package): the OpenTelemetry SDK exports over TLS and the data lands; under mTLS a
client without a certificate from the client CA is refused at the handshake; a certificate
rotated on disk is served to new connections without a restart."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from harness import Gateway, consume_spans, metric_value, wait_until
from otel_sdk import RecordedTraces, make_traces

# ---------------------------------------------------------------------------------------------
# Certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Ca:
    """A certificate authority that issues server and client certificates."""

    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, server: bool) -> tuple[bytes, bytes, int]:
        """(certificate PEM, key PEM, serial) for a server (localhost, 127.0.0.1) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = b.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), serial


def write_files(d: Path, prefix: str, cert: bytes, key: bytes) -> tuple[Path, Path]:
    c, k = d / f"{prefix}.crt", d / f"{prefix}.key"
    c.write_bytes(cert)
    k.write_bytes(key)
    return c, k


def replace_atomically(path: Path, data: bytes):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Clients


def client_context(ca_pem: bytes, cert: Path | None = None, key: Path | None = None, alpn=("h2",),
                   max_version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
    ctx.set_alpn_protocols(list(alpn))
    if max_version is not None:
        ctx.maximum_version = max_version
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def served_certificate(port: int, ctx: ssl.SSLContext) -> tuple[bytes, str | None]:
    """(DER of the certificate the server presents, negotiated ALPN)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True), s.selected_alpn_protocol()


def handshake_refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True when the server refuses the TLS session: the handshake fails or (TLS 1.3, where the
    client finishes before the server has checked its certificate) the first read gets the
    server's alert instead of data."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                data = s.recv(64)
                return data == b""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True


def grpc_exporter(gw: Gateway, ca_pem: bytes, cert: bytes | None = None, key: bytes | None = None):
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key, certificate_chain=cert)
    return GrpcSpanExporter(endpoint=f"https://127.0.0.1:{gw.grpc_port}", credentials=creds, timeout=10)


def export_spans(exporter, n_traces: int = 2):
    rec = RecordedTraces()
    spans = make_traces(rec, n_traces, 2)
    try:
        return exporter.export(spans), spans
    finally:
        exporter.shutdown()


def tls_section(cert: Path, key: Path, **extra) -> dict:
    return {"cert_file": str(cert), "key_file": str(key), **extra}


@pytest.fixture
def certs(tmp_path):
    ca = Ca("weir test server CA")
    cert, key, serial = ca.issue("localhost", server=True)
    cert_path, key_path = write_files(tmp_path, "server", cert, key)
    return ca, cert_path, key_path, serial


def start_gateway(broker, workdir, overrides: dict, admin_ssl=None) -> Gateway:
    gw = Gateway(broker, workdir, overrides)
    gw.admin_ssl = admin_ssl
    return gw.start()


# ---------------------------------------------------------------------------------------------
# Tests


def test_sdk_exports_over_tls_on_grpc_http_and_admin(broker, workdir, certs, monkeypatch):
    ca, cert, key, _ = certs
    # requests lets these variables override the exporter's certificate_file (its session's
    # `verify`): without them the exporter trusts exactly the CA the test gives it.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    section = tls_section(cert, key, min_version="1.2")
    gw = start_gateway(
        broker,
        workdir,
        {"receivers.grpc.tls": section, "receivers.http.tls": section, "admin.tls": section},
        admin_ssl=client_context(ca.pem, alpn=("http/1.1",)),
    )
    try:
        # gRPC needs HTTP/2 by ALPN; the HTTP listener offers both.
        assert served_certificate(gw.grpc_port, client_context(ca.pem))[1] == "h2"
        assert served_certificate(gw.http_port, client_context(ca.pem, alpn=("http/1.1",)))[1] == "http/1.1"

        result, grpc_spans = export_spans(grpc_exporter(gw, ca.pem))
        assert result == SpanExportResult.SUCCESS
        ca_file = workdir / f"{gw.name}-ca.pem"
        ca_file.write_bytes(ca.pem)
        http = HttpSpanExporter(
            endpoint=f"https://127.0.0.1:{gw.http_port}/v1/traces", certificate_file=str(ca_file), timeout=10
        )
        result, http_spans = export_spans(http)
        assert result == SpanExportResult.SUCCESS

        want = {s.context.span_id.to_bytes(8, "big") for s in grpc_spans + http_spans}
        _, landed = consume_spans(gw, len(want))
        assert {span.span_id for *_, span in landed} == want

        # Plaintext clients get nowhere on a TLS listener.
        plain = GrpcSpanExporter(endpoint=gw.grpc_target, insecure=True, timeout=3)
        assert export_spans(plain)[0] == SpanExportResult.FAILURE
        assert gw.admin_get("/healthz")[0] == 200
    finally:
        gw.stop()


def test_mtls_refuses_clients_without_a_certificate_from_the_client_ca(broker, workdir, certs, tmp_path):
    ca, cert, key, _ = certs
    client_ca = Ca("weir test client CA")
    stranger_ca = Ca("somebody else's CA")
    ca_file = tmp_path / "clients.pem"
    ca_file.write_bytes(client_ca.pem)
    gw = start_gateway(
        broker, workdir, {"receivers.grpc.tls": tls_section(cert, key, client_ca_file=str(ca_file))}
    )
    try:
        member_cert, member_key, _ = client_ca.issue("member", server=False)
        member_c, member_k = write_files(tmp_path, "member", member_cert, member_key)
        stranger_cert, stranger_key, _ = stranger_ca.issue("stranger", server=False)
        stranger_c, stranger_k = write_files(tmp_path, "stranger", stranger_cert, stranger_key)

        # Refused at the handshake: no certificate (TLS 1.2 and 1.3), or one from another CA.
        assert handshake_refused(gw.grpc_port, client_context(ca.pem))
        assert handshake_refused(gw.grpc_port, client_context(ca.pem, max_version=ssl.TLSVersion.TLSv1_2))
        assert handshake_refused(gw.grpc_port, client_context(ca.pem, stranger_c, stranger_k))
        assert not handshake_refused(gw.grpc_port, client_context(ca.pem, member_c, member_k))

        samples = gw.metrics()
        assert metric_value(samples, "weir_receiver_tls_handshake_failures_total", listener="grpc") >= 3

        # The SDK: without a certificate it fails, with the member's it lands.
        assert export_spans(grpc_exporter(gw, ca.pem))[0] == SpanExportResult.FAILURE
        assert export_spans(grpc_exporter(gw, ca.pem, stranger_cert, stranger_key))[0] == SpanExportResult.FAILURE
        result, spans = export_spans(grpc_exporter(gw, ca.pem, member_cert, member_key))
        assert result == SpanExportResult.SUCCESS
        want = {s.context.span_id.to_bytes(8, "big") for s in spans}
        _, landed = consume_spans(gw, len(want), timeout=15)
        assert {span.span_id for *_, span in landed} == want, "only the member's spans landed"
    finally:
        gw.stop()


def test_rotated_certificate_is_served_without_a_restart(broker, workdir, certs):
    ca, cert, key, first_serial = certs
    gw = start_gateway(
        broker, workdir, {"receivers.grpc.tls": tls_section(cert, key, reload_interval="200ms")}
    )
    try:
        pid = gw.pid
        ctx = client_context(ca.pem)
        first, _ = served_certificate(gw.grpc_port, ctx)
        assert x509.load_der_x509_certificate(first).serial_number == first_serial

        # A broken pair (a key that belongs to no certificate) is refused; the old one stays.
        _, stray_key, _ = ca.issue("localhost", server=True)
        replace_atomically(key, stray_key)
        time.sleep(1.0)
        assert served_certificate(gw.grpc_port, ctx)[0] == first
        assert gw.proc.poll() is None

        new_cert, new_key, new_serial = ca.issue("localhost", server=True)
        replace_atomically(key, new_key)
        replace_atomically(cert, new_cert)
        second = wait_until(
            "the rotated certificate is served",
            lambda: (der := served_certificate(gw.grpc_port, ctx)[0]) != first and der,
            timeout=10,
            interval=0.2,
        )
        served = x509.load_der_x509_certificate(second)
        assert served.serial_number == new_serial
        assert hashlib.sha256(second).hexdigest() != hashlib.sha256(first).hexdigest()
        assert gw.pid == pid and gw.proc.poll() is None, "no restart"

        result, spans = export_spans(grpc_exporter(gw, ca.pem))
        assert result == SpanExportResult.SUCCESS
        _, landed = consume_spans(gw, len(spans), timeout=15)
        assert len(landed) == len(spans)
        samples = gw.metrics()
        assert metric_value(samples, "weir_tls_reloads_total", listener="grpc", result="ok") >= 1
        assert metric_value(samples, "weir_tls_reloads_total", listener="grpc", result="error") >= 1
    finally:
        gw.stop()


def test_unusable_tls_files_fail_the_start_naming_the_file(broker, workdir, certs, tmp_path):
    _, cert, _, _ = certs
    missing = tmp_path / "no-such.key"
    gw = Gateway(broker, workdir, {"receivers.http.tls": tls_section(cert, missing)})
    with pytest.raises(RuntimeError):
        gw.start(ready_timeout=10)
    assert gw.exit_code not in (None, 0)
    log = gw.log_path.read_text()
    assert "key_file" in log and str(missing) in log, log[-2000:]
