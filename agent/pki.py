"""The agent's PKI: create a private CA with agent and client certificates, read the shared token,
and build the mutual-TLS contexts both ends use, so nobody needs openssl to set it up."""

import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import Conflict, InvalidArgument

PKI_FILES = ("ca.crt", "ca.key", "agent.crt", "agent.key", "client.crt", "client.key", "token")
DEFAULT_AGENT_NAMES = ("localhost", "127.0.0.1")
INIT_HINT = "run `lxc-agent init-pki` to create the PKI"

# Certificates are public; keys and the token are secrets.
_PUBLIC_MODE = 0o644
_SECRET_MODE = 0o600
# Tolerate clocks a few minutes apart between the node that made the PKI and the others.
_CLOCK_SKEW = datetime.timedelta(minutes=5)

_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # used with fullmatch


def create_pki(directory, agent_names, client_name="coordinator", days=3650, force=False):
    """Make a new CA, an agent certificate, a client certificate and a token in `directory`.

    `agent_names` are the host names / IP addresses clients use to reach the agent; they become
    subjectAltNames (localhost and 127.0.0.1 are always added). Returns file name -> path.
    With force=True the files are replaced: certificates issued by the old CA stop working.
    """
    directory = os.fspath(directory)
    sans = _parse_agent_names(agent_names)
    _check_client_name(client_name)
    days = _check_days(days)
    paths = {name: os.path.join(directory, name) for name in PKI_FILES}
    _make_private_dir(directory)
    if not force:
        for path in paths.values():
            _refuse_existing(path)

    ca_key = _new_key()
    ca_cert = _issue_ca(ca_key, days)
    agent_key = _new_key()
    agent_cert = _issue_leaf(
        ca_cert, ca_key, agent_key, _common_name(sans), days, ExtendedKeyUsageOID.SERVER_AUTH, sans
    )
    client_key = _new_key()
    client_cert = _issue_leaf(ca_cert, ca_key, client_key, client_name, days, ExtendedKeyUsageOID.CLIENT_AUTH, None)

    # Each file is replaced whole; a crash between files can leave old and new ones mixed,
    # which re-running with --force repairs.
    _write_atomic(paths["ca.key"], _key_pem(ca_key), _SECRET_MODE)
    _write_atomic(paths["ca.crt"], _cert_pem(ca_cert), _PUBLIC_MODE)
    _write_atomic(paths["agent.key"], _key_pem(agent_key), _SECRET_MODE)
    _write_atomic(paths["agent.crt"], _cert_pem(agent_cert), _PUBLIC_MODE)
    _write_atomic(paths["client.key"], _key_pem(client_key), _SECRET_MODE)
    _write_atomic(paths["client.crt"], _cert_pem(client_cert), _PUBLIC_MODE)
    _write_atomic(paths["token"], (secrets.token_urlsafe(32) + "\n").encode(), _SECRET_MODE)
    return paths


def add_client(directory, client_name, days=3650, force=False):
    """Issue one more client certificate from the existing CA (another coordinator or script).

    Writes client-<name>.crt/.key next to the CA; returns file name -> path.
    """
    directory = os.fspath(directory)
    _check_client_name(client_name)
    days = _check_days(days)
    ca_cert, ca_key = _load_ca(directory)
    paths = {
        f"client-{client_name}.{ext}": os.path.join(directory, f"client-{client_name}.{ext}") for ext in ("crt", "key")
    }
    if not force:
        for path in paths.values():
            _refuse_existing(path)
    key = _new_key()
    cert = _issue_leaf(ca_cert, ca_key, key, client_name, days, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    _write_atomic(paths[f"client-{client_name}.key"], _key_pem(key), _SECRET_MODE)
    _write_atomic(paths[f"client-{client_name}.crt"], _cert_pem(cert), _PUBLIC_MODE)
    return paths


def read_token(path):
    """The shared handshake token; refused if others could read it, since it grants root access."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            _refuse_shared(handle, "token file", path)
            data = handle.read()
    except FileNotFoundError:
        raise InvalidArgument(f"token file {path} does not exist; {INIT_HINT}", path=path) from None
    except OSError as error:
        raise InvalidArgument(f"cannot read token file {path}: {error.strerror or error}", path=path) from None
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidArgument(f"token file {path} is not text", path=path) from None
    if not token:
        raise InvalidArgument(f"token file {path} is empty; {INIT_HINT}", path=path)
    return token


def server_ssl_context(cert, key, ca):
    """The agent's TLS context: presents agent.crt, accepts only clients with a cert from our CA.

    Only `ca` is trusted (never the system store), so a public certificate cannot get in. The key is refused if
    group or others could read it, as the token is.
    """
    context = _base_context(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, cert, key, ca)
    with open(key, "rb") as handle:  # _load read it already: it exists and is readable
        _refuse_shared(handle, "agent key", os.fspath(key))
    return context


def client_ssl_context(cert, key, ca, server_hostname_check=True):
    """A coordinator's TLS context: presents its client cert, accepts only an agent cert from our CA.

    server_hostname_check=False skips matching the agent's subjectAltNames against the address
    dialled (e.g. an address not listed at init-pki time); the CA is still verified.
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = bool(server_hostname_check)
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, cert, key, ca)
    return context


# --- certificates --------------------------------------------------------------------------------


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _validity(days, not_after_cap=None):
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    if not_after_cap is not None and not_after > not_after_cap:
        not_after = not_after_cap
    return now - _CLOCK_SKEW, not_after


def _issue_ca(key, days):
    # A random suffix keeps CAs of different clusters distinguishable in error messages.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lxc-agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"lxc-agent CA {secrets.token_hex(4)}"),
        ]
    )
    not_before, not_after = _validity(days)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_leaf(ca_cert, ca_key, key, common_name, days, usage, sans):
    """An end-entity certificate; the extensions satisfy OpenSSL's strict X.509 checks."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lxc-agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    not_before, not_after = _validity(days, ca_cert.not_valid_after_utc)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _common_name(sans):
    """The agent's CN: the first name the user gave (hostname checks use the SANs anyway)."""
    for entry in sans:
        text = str(entry.value)
        if text not in DEFAULT_AGENT_NAMES and len(text) <= 64:
            return text
    return "lxc-agent"


def _parse_agent_names(agent_names):
    """Host names / IP addresses -> SAN entries, de-duplicated, defaults appended."""
    if isinstance(agent_names, (str, bytes)):
        agent_names = [agent_names]
    entries, seen = [], set()
    for raw in list(agent_names or []) + list(DEFAULT_AGENT_NAMES):
        if not isinstance(raw, str):
            raise InvalidArgument(f"agent name {raw!r} is not a string", name=repr(raw))
        name = raw.strip()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(_check_dns_name(name, raw))
        key = (type(entry), str(entry.value))
        if key not in seen:
            seen.add(key)
            entries.append(entry)
    return entries


def _check_dns_name(name, raw):
    name = name.lower().rstrip(".")
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if (
        not name
        or len(name) > 253
        or not name.isascii()
        or not labels
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise InvalidArgument(
            f"agent name {raw!r} is neither an IP address nor a valid DNS host name "
            f"(use the punycode form for non-ASCII names)",
            name=raw,
        )
    return name


def _check_client_name(client_name):
    if not isinstance(client_name, str) or not _CLIENT_NAME.fullmatch(client_name):
        raise InvalidArgument(
            f"client name {client_name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            f"and start with a letter or digit",
            name=repr(client_name),
        )


def _check_days(days):
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36500:
        raise InvalidArgument(f"days must be a whole number from 1 to 36500, not {days!r}", days=repr(days))
    return days


def _load_ca(directory):
    ca_crt, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    try:
        cert = x509.load_pem_x509_certificate(_read_pki_file(ca_crt))
    except ValueError as error:
        raise InvalidArgument(f"{ca_crt} is not a PEM certificate: {error}", path=ca_crt) from None
    try:
        key = serialization.load_pem_private_key(_read_pki_file(ca_key), password=None)
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"{ca_key} is not an unencrypted PEM private key: {error}", path=ca_key) from None
    if key.public_key() != cert.public_key():
        raise InvalidArgument(f"{ca_key} does not belong to {ca_crt}", path=ca_key)
    return cert, key


def _read_pki_file(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InvalidArgument(f"{path} does not exist; {INIT_HINT}", path=path) from None
    except OSError as error:
        raise InvalidArgument(f"cannot read {path}: {error.strerror or error}; {INIT_HINT}", path=path) from None


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


# --- files ---------------------------------------------------------------------------------------


def _refuse_shared(handle, what, path):
    """A secret must be the owner's alone: refused when group or others have any access to it."""
    mode = os.fstat(handle.fileno()).st_mode
    if mode & 0o077:
        raise InvalidArgument(
            f"{what} {path} is readable or writable by group/others (mode {mode & 0o777:03o}); run `chmod 600 {path}`",
            path=path,
        )


def _make_private_dir(directory):
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise InvalidArgument(f"{directory} exists and is not a directory", path=directory)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)  # makedirs' mode is filtered by the umask


def _refuse_existing(path):
    if os.path.lexists(path):
        raise Conflict(
            f"{path} already exists; pass --force to overwrite it (certificates "
            f"issued by the old CA will stop working)",
            path=path,
        )


def _write_atomic(path, data, mode):
    """Write via a temporary file in the same directory + rename: readers see old or new, whole."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- TLS -----------------------------------------------------------------------------------------


def _base_context(protocol):
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Strict X.509 checks (the default from Python 3.13 on); our certificates are made to pass them.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _load(context, cert, key, ca):
    """Load our cert/key and the CA, turning every failure into an error naming the file."""
    cert, key, ca = os.fspath(cert), os.fspath(key), os.fspath(ca)
    for path in (cert, key, ca):
        _read_pki_file(path)  # a clear message for a missing or unreadable file
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise InvalidArgument(
            f"cannot load certificate {cert} with key {key}: {error}; {INIT_HINT}", path=cert
        ) from None
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as error:
        raise InvalidArgument(f"cannot load CA certificate {ca}: {error}; {INIT_HINT}", path=ca) from None
