"""CURVE keys: the run's own, the public endpoints' (``--publish-keys``) and a consumer's.

Pure data and files; ZeroMQ is imported only to make or read keys, so planning a run
(``graph.py``, ``spec.py``) does not import the data plane. How the keys are used:
``security.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from segstream.errors import ConfigError

logger = logging.getLogger(__name__)

SERVER_CERT = "server.key_secret"
AUTHORIZED = "authorized"


@dataclass(frozen=True)
class CurveServer:
    """What a CURVE server socket needs: its key pair and the client keys it accepts.

    Attributes:
        public: the server's public key (Z85).
        secret: the server's secret key (Z85).
        authorized: public keys (Z85) of the clients allowed to connect.
    """

    public: str
    secret: str
    authorized: tuple[str, ...]


@dataclass(frozen=True)
class CurveClient:
    """What a CURVE client socket needs: the server's public key and its own key pair.

    Attributes:
        server: the server's public key (Z85).
        public: this client's public key (Z85).
        secret: this client's secret key (Z85).
    """

    server: str
    public: str
    secret: str


@dataclass(frozen=True)
class RunKeys:
    """The keys of one run's tcp sockets (in its stage specs, inside the 0700 run folder).

    Attributes:
        server: for every socket that binds.
        client: for every socket that connects.
    """

    server: CurveServer
    client: CurveClient

    @staticmethod
    def generate() -> "RunKeys":
        """Fresh server and client key pairs."""
        import zmq

        server_public, server_secret = (k.decode() for k in zmq.curve_keypair())
        client_public, client_secret = (k.decode() for k in zmq.curve_keypair())
        return RunKeys(CurveServer(server_public, server_secret, (client_public,)),
                       CurveClient(server_public, client_public, client_secret))


def load_publish_keys(folder: str | Path) -> CurveServer:
    """The server key pair and the authorised client keys in ``folder`` (``segstream keys``).

    Raises:
        ConfigError: a file is missing or is not a key; says which and how to make one.
    """
    folder = Path(folder)
    cert = folder / SERVER_CERT
    if not cert.is_file():
        raise ConfigError(f"--publish-keys {folder}: no {SERVER_CERT} there; create the keys with "
                          f"'segstream keys {folder}'")
    public, secret = _load(cert, secret=True)
    authorized = tuple(_load(path, secret=False)[0] for path in sorted((folder / AUTHORIZED).glob("*.key")))
    if not authorized:
        raise ConfigError(f"--publish-keys {folder}: no consumer is authorised ({folder / AUTHORIZED}/*.key is "
                          f"empty); add one with 'segstream keys {folder} --client NAME'")
    return CurveServer(public, secret, authorized)


def load_client(server_key: str | Path, client_key: str | Path) -> CurveClient:
    """A consumer's keys: the server's public key file and its own secret key file.

    Raises:
        ConfigError: a file is missing or is not a key.
    """
    server = _load(Path(server_key), secret=False)[0]
    public, secret = _load(Path(client_key), secret=True)
    return CurveClient(server, public, secret)


def _load(path: Path, secret: bool) -> tuple[str, str]:
    if not path.is_file():
        raise ConfigError(f"key file {path} does not exist; create keys with 'segstream keys DIR'")
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path} is not a ZeroMQ key file ({exc})") from None
    if secret and secret_key is None:
        raise ConfigError(f"{path} holds no secret key; pass the .key_secret file")
    return public.decode(), (secret_key or b"").decode()


def write_keys(folder: str | Path, client: str = "") -> list[Path]:
    """Create the server key pair in ``folder`` (if there is none) and, with ``client``,
    a consumer's key pair (``folder/<client>.key_secret``) whose public key is authorised
    (``folder/authorized/<client>.key``). Returns the files written."""
    import zmq.auth

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    if not (folder / SERVER_CERT).is_file():
        public, secret = zmq.auth.create_certificates(str(folder), "server")
        written += [Path(public), Path(secret)]
    if client:
        if not client.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"client name {client!r}: use letters, digits, - and _")
        public, secret = zmq.auth.create_certificates(str(folder), client)
        (folder / AUTHORIZED).mkdir(exist_ok=True, mode=0o700)
        authorized = folder / AUTHORIZED / f"{client}.key"
        Path(public).replace(authorized)
        written += [authorized, Path(secret)]
    for path in written:
        if path.name.endswith("_secret"):
            path.chmod(0o600)
    return written
