"""agent.pki with real crypto: files and modes, chains (cryptography and openssl), and real TLS
handshakes over loopback sockets between the server and client contexts."""

import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent import pki
from agent.errors import Conflict, InvalidArgument

NAMES = ["node1.example.org", "10.0.0.7", "fd00::7"]


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki") / "ca"
    pki.create_pki(directory, NAMES)
    return directory


@pytest.fixture(scope="module")
def other_pki_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("other") / "ca"
    pki.create_pki(directory, NAMES)
    return directory


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def contexts(directory, client="client", client_dir=None, **client_options):
    server = pki.server_ssl_context(directory / "agent.crt", directory / "agent.key", directory / "ca.crt")
    client_dir = client_dir or directory
    client = pki.client_ssl_context(
        client_dir / f"{client}.crt", client_dir / f"{client}.key", directory / "ca.crt", **client_options
    )
    return server, client


def handshake(server_context, client_context, server_hostname="127.0.0.1"):
    """One TLS connection over 127.0.0.1; returns (server outcome, client outcome).

    An outcome is the peer certificate's CN on success, or the exception raised. The server
    sends b"ok" only after its handshake succeeded; under TLS 1.3 a client learns that it was
    refused only on its first read, so the client reads that reply before calling it a success.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    outcome = {}

    def serve():
        try:
            raw, _ = listener.accept()
            raw.settimeout(5)
            with server_context.wrap_socket(raw, server_side=True) as conn:
                outcome["server"] = _common_name(conn.getpeercert(binary_form=True))
                conn.sendall(b"ok")
                conn.recv(1)  # wait for the client to close
        except Exception as error:
            outcome["server"] = error

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            try:
                with client_context.wrap_socket(raw, server_hostname=server_hostname) as conn:
                    peer = _common_name(conn.getpeercert(binary_form=True))
                    reply = conn.recv(2)
                    client = peer if reply == b"ok" else ConnectionError(f"got {reply!r}")
            except (ssl.SSLError, OSError) as error:
                client = error
        thread.join(5)
    finally:
        listener.close()
    assert not thread.is_alive()
    return outcome["server"], client


def _common_name(der):
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


# --- files ---------------------------------------------------------------------------------------


def test_create_pki_writes_every_file_with_private_modes(tmp_path):
    directory = tmp_path / "new" / "pki"
    paths = pki.create_pki(directory, ["node1"])
    assert sorted(paths) == sorted(pki.PKI_FILES)
    assert mode(directory) == 0o700
    for name, path in paths.items():
        assert os.path.dirname(path) == str(directory)
        expected = 0o644 if name.endswith(".crt") else 0o600
        assert mode(path) == expected, name
    assert sorted(os.listdir(directory)) == sorted(pki.PKI_FILES)  # no temporary files left
    token = (directory / "token").read_text()
    assert token.endswith("\n") and len(token.strip()) >= 40
    assert pki.read_token(directory / "token") == token.strip()


def test_tokens_differ_between_runs(tmp_path):
    pki.create_pki(tmp_path / "a", [])
    pki.create_pki(tmp_path / "b", [])
    assert pki.read_token(tmp_path / "a" / "token") != pki.read_token(tmp_path / "b" / "token")


def test_refuses_to_overwrite_without_force(tmp_path):
    first = pki.create_pki(tmp_path, ["node1"])
    before = {name: Path(path).read_bytes() for name, path in first.items()}
    with pytest.raises(Conflict) as caught:
        pki.create_pki(tmp_path, ["node1"])
    assert "--force" in str(caught.value) and str(tmp_path) in str(caught.value)
    assert {name: Path(path).read_bytes() for name, path in first.items()} == before

    pki.create_pki(tmp_path, ["node1"], force=True)
    assert (tmp_path / "ca.crt").read_bytes() != before["ca.crt"]
    assert (tmp_path / "token").read_bytes() != before["token"]


def test_refuses_when_any_single_file_exists(tmp_path):
    (tmp_path / "token").write_text("old\n")
    with pytest.raises(Conflict, match="token"):
        pki.create_pki(tmp_path, [])
    assert sorted(os.listdir(tmp_path)) == ["token"]


@pytest.mark.parametrize("names", [["bad name"], ["-lead.example"], ["a..b"], [""], [7]])
def test_rejects_bad_agent_names(tmp_path, names):
    with pytest.raises(InvalidArgument):
        pki.create_pki(tmp_path / "x", names)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 65, "client\n"])
def test_rejects_bad_client_names(tmp_path, name):
    with pytest.raises(InvalidArgument):
        pki.create_pki(tmp_path / "x", [], client_name=name)


# --- certificates --------------------------------------------------------------------------------


def test_certificates_chain_to_the_ca(pki_dir):
    ca = load(pki_dir / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    for name, usage in (
        ("agent.crt", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client.crt", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = load(pki_dir / name)
        cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
        assert cert.signature_hash_algorithm.name == "sha256"
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    with pytest.raises(ValueError):  # cryptography's "wrong issuer" error
        load(pki_dir / "agent.crt").verify_directly_issued_by(load(pki_dir / "client.crt"))


def test_agent_certificate_carries_the_names(pki_dir):
    sans = load(pki_dir / "agent.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["localhost", "node1.example.org"]
    assert sorted(map(str, sans.get_values_for_type(x509.IPAddress))) == sorted(
        ["10.0.0.7", "127.0.0.1", str(ipaddress.ip_address("fd00::7"))]
    )


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_openssl_verifies_the_chain_strictly(pki_dir, other_pki_dir):
    def verify(purpose, cert, ca=pki_dir / "ca.crt"):
        return subprocess.run(
            ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca), str(cert)],
            capture_output=True,
            text=True,
        )

    for purpose, name in (("sslserver", "agent.crt"), ("sslclient", "client.crt")):
        result = verify(purpose, pki_dir / name)
        assert result.returncode == 0, result.stdout + result.stderr
    assert verify("sslserver", other_pki_dir / "agent.crt").returncode != 0
    assert verify("sslserver", pki_dir / "client.crt").returncode != 0  # clientAuth only


def test_add_client_issues_from_the_existing_ca(tmp_path):
    pki.create_pki(tmp_path, [])
    paths = pki.add_client(tmp_path, "backup-script")
    assert sorted(paths) == ["client-backup-script.crt", "client-backup-script.key"]
    assert mode(paths["client-backup-script.key"]) == 0o600
    cert = load(tmp_path / "client-backup-script.crt")
    cert.verify_directly_issued_by(load(tmp_path / "ca.crt"))
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "backup-script"
    with pytest.raises(Conflict, match="--force"):
        pki.add_client(tmp_path, "backup-script")
    server, client = contexts(tmp_path, client="client-backup-script")
    assert handshake(server, client) == ("backup-script", "lxc-agent")


def test_add_client_without_a_ca_points_to_init_pki(tmp_path):
    with pytest.raises(InvalidArgument, match="init-pki"):
        pki.add_client(tmp_path, "x")


# --- token ---------------------------------------------------------------------------------------


def test_read_token_strips_whitespace(tmp_path):
    path = tmp_path / "token"
    path.write_text("  secret-value \n")
    path.chmod(0o600)
    assert pki.read_token(path) == "secret-value"


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o620])
def test_read_token_rejects_files_others_can_access(tmp_path, bits):
    path = tmp_path / "token"
    path.write_text("secret\n")
    path.chmod(bits)
    with pytest.raises(InvalidArgument, match="chmod 600") as caught:
        pki.read_token(path)
    assert str(path) in str(caught.value)


def test_read_token_rejects_missing_and_empty(tmp_path):
    with pytest.raises(InvalidArgument, match=str(tmp_path / "nope")):
        pki.read_token(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    empty.chmod(0o600)
    with pytest.raises(InvalidArgument, match="empty"):
        pki.read_token(empty)


# --- TLS -----------------------------------------------------------------------------------------


def test_context_settings(pki_dir):
    server, client = contexts(pki_dir)
    for context in (server, client):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.check_hostname
    # Only our CA is trusted, never the system store.
    assert len(server.get_ca_certs()) == 1 and len(client.get_ca_certs()) == 1


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED])
def test_mutual_tls_handshake_succeeds(pki_dir, hostname, version):
    server, client = contexts(pki_dir)
    client.maximum_version = version
    assert handshake(server, client, hostname) == ("coordinator", "node1.example.org")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED])
def test_client_without_certificate_is_refused(pki_dir, version):
    server, _ = contexts(pki_dir)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.maximum_version = version
    anonymous.load_verify_locations(pki_dir / "ca.crt")  # trusts the agent, presents nothing
    server_outcome, client_outcome = handshake(server, anonymous)
    assert isinstance(server_outcome, ssl.SSLError)
    assert isinstance(client_outcome, Exception)


def test_client_certificate_from_another_ca_is_refused(pki_dir, other_pki_dir):
    # The stranger trusts our agent's CA but its own cert comes from a different CA.
    server, _ = contexts(pki_dir)
    stranger = pki.client_ssl_context(other_pki_dir / "client.crt", other_pki_dir / "client.key", pki_dir / "ca.crt")
    server_outcome, client_outcome = handshake(server, stranger)
    assert isinstance(server_outcome, ssl.SSLError)
    assert isinstance(client_outcome, Exception)


def test_client_refuses_an_agent_from_another_ca(pki_dir, other_pki_dir):
    impostor, _ = contexts(other_pki_dir)
    _, client = contexts(pki_dir)
    _, client_outcome = handshake(impostor, client)
    assert isinstance(client_outcome, ssl.SSLCertVerificationError)


def test_hostname_check_can_be_disabled(pki_dir):
    server, strict = contexts(pki_dir)
    _, client_outcome = handshake(server, strict, "not-listed.example")
    assert isinstance(client_outcome, ssl.SSLCertVerificationError)
    server, lenient = contexts(pki_dir, server_hostname_check=False)
    assert handshake(server, lenient, "not-listed.example") == ("coordinator", "node1.example.org")


def test_missing_files_name_the_file_and_init_pki(tmp_path, pki_dir):
    with pytest.raises(InvalidArgument, match="init-pki") as caught:
        pki.server_ssl_context(pki_dir / "agent.crt", pki_dir / "agent.key", tmp_path / "ca.crt")
    assert str(tmp_path / "ca.crt") in str(caught.value)
    with pytest.raises(InvalidArgument, match=r"client\.key"):
        pki.client_ssl_context(pki_dir / "client.crt", tmp_path / "client.key", pki_dir / "ca.crt")


def test_mismatched_key_is_reported(pki_dir):
    with pytest.raises(InvalidArgument, match=r"agent\.crt"):
        pki.server_ssl_context(pki_dir / "agent.crt", pki_dir / "client.key", pki_dir / "ca.crt")
