"""Test PKI made at test time with the `openssl` CLI (no key is committed).

    pki = TestPki.create()            # a fresh temp dir, removed by pki.cleanup()
    pki.ca                            # Path of the test CA certificate (PEM)
    pki.mail.cert, pki.mail.key       # leaf "mail.test" + IP SAN 127.0.0.1
    pki.other                         # leaf "other.test" (SNI tests)
    pki.foreign                       # "mail.test" signed by another CA
    pki.expired                       # "mail.test", valid 2020-01-01..2020-01-02
    pki.wrong_name                    # "wrong.test" only, signed by the test CA
    pki.issue("name", ...)            # more leaves on demand (reload tests)

Leaves are signed with `openssl ca` and a minimal CA config, which is what
OpenSSL 3.0 offers for explicit validity dates (`-startdate`/`-enddate`);
`openssl x509 -req` there cannot backdate a certificate.

Keys are ECDSA P-256 by default (fast to make and to use); `key_type="rsa"`
gives RSA-2048 (the benchmark measures both).

Also spki_sha256(cert): the hex SHA-256 of a certificate's public key, done
with the CLI pipeline `openssl x509 -pubkey -noout | openssl pkey -pubin
-outform der | openssl dgst -sha256`, independent of Portico's own code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

_CA_CONF = """\
[ ca ]
default_ca = test_ca

[ test_ca ]
dir = {dir}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no

[ policy_any ]
commonName = supplied
organizationName = optional
"""


def _run(args: list, **kw) -> bytes:
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, **kw)
    if p.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(map(str, args)), p.returncode,
                                                       p.stderr.decode(errors="replace")[-2000:]))
    return p.stdout


def _genkey(path: Path, key_type: str) -> None:
    if key_type == "rsa":
        algo = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    elif key_type == "ec":
        algo = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    else:
        raise ValueError("key_type must be 'ec' or 'rsa'")
    _run([OPENSSL, "genpkey", *algo, "-out", str(path)])
    os.chmod(path, 0o600)


@dataclass
class Leaf:
    name: str
    cert: Path
    key: Path
    serial: str  # hex, upper case, as `openssl x509 -serial` prints it

    @property
    def pin(self) -> str:
        return spki_sha256(self.cert)


class CertAuthority:
    """A self-signed CA with an `openssl ca` database in its own directory."""

    def __init__(self, directory: Path, cn: str, key_type: str = "ec"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "newcerts").mkdir(exist_ok=True)
        (self.dir / "index.txt").write_text("")
        # Random starting serial so two CAs never share serials.
        (self.dir / "serial").write_text("%016X\n" % int.from_bytes(os.urandom(7), "big"))
        self.conf = self.dir / "ca.cnf"
        self.conf.write_text(_CA_CONF.format(dir=self.dir))
        self.key = self.dir / "ca.key"
        self.cert = self.dir / "ca.pem"
        self.key_type = key_type
        _genkey(self.key, key_type)
        ext = self.dir / "ca.ext"
        ext.write_text(
            "[v3_ca]\n"
            "basicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign\n"
            "subjectKeyIdentifier = hash\n"
        )
        _run([OPENSSL, "req", "-x509", "-new", "-key", str(self.key), "-sha256", "-days", "3650",
              "-subj", "/O=Portico Test/CN=%s" % cn, "-config", str(ext), "-extensions", "v3_ca",
              "-out", str(self.cert)])

    def issue(
        self,
        out_dir: Path,
        file_stem: str,
        cn: str,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        startdate: Optional[str] = None,
        enddate: Optional[str] = None,
        days: int = 825,
        key_type: Optional[str] = None,
        organization: str = "Portico Test",
    ) -> Leaf:
        """A server certificate for cn with the given SANs (serverAuth).

        startdate/enddate: "YYYYMMDDHHMMSSZ" for explicit validity (expired
        certificates); otherwise now .. now + days.
        """
        key = out_dir / (file_stem + ".key")
        csr = out_dir / (file_stem + ".csr")
        cert = out_dir / (file_stem + ".pem")
        ext = out_dir / (file_stem + ".ext")
        _genkey(key, key_type or self.key_type)
        _run([OPENSSL, "req", "-new", "-key", str(key), "-subj", "/O=%s/CN=%s" % (organization, cn),
              "-out", str(csr)])
        san = ["DNS:%s" % d for d in dns] + ["IP:%s" % i for i in ips]
        lines = [
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
            "extendedKeyUsage = serverAuth, clientAuth",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid",
        ]
        if san:
            lines.append("subjectAltName = " + ", ".join(san))
        ext.write_text("\n".join(lines) + "\n")
        args = [OPENSSL, "ca", "-batch", "-notext", "-config", str(self.conf), "-in", str(csr),
                "-out", str(cert), "-extfile", str(ext)]
        if startdate or enddate:
            if not (startdate and enddate):
                raise ValueError("give both startdate and enddate")
            args += ["-startdate", startdate, "-enddate", enddate]
        else:
            args += ["-days", str(days)]
        _run(args)
        serial = _run([OPENSSL, "x509", "-in", str(cert), "-noout", "-serial"]).decode().strip()
        return Leaf(name=cn, cert=cert, key=key, serial=serial.split("=", 1)[1].upper())


class TestPki:
    """The certificates the TLS tests and the TLS benchmark use."""

    __test__ = False  # not a pytest class

    def __init__(self, root: Path, owns_root: bool, key_type: str):
        self.root = root
        self._owns_root = owns_root
        self.key_type = key_type
        self.leaves_dir = root / "leaves"
        self.leaves_dir.mkdir(parents=True, exist_ok=True)
        self.authority = CertAuthority(root / "ca", "Portico Test CA", key_type)
        self.foreign_authority = CertAuthority(root / "foreign-ca", "Some Other CA", key_type)
        self.mail = self.issue("mail.test", dns=["mail.test"], ips=["127.0.0.1"])
        self.other = self.issue("other.test", dns=["other.test"])
        self.foreign = self.foreign_authority.issue(self.leaves_dir, "foreign-mail.test", "mail.test",
                                                    dns=["mail.test"], ips=["127.0.0.1"])
        self.expired = self.issue("mail.test", dns=["mail.test"], ips=["127.0.0.1"], stem="expired-mail.test",
                                  startdate="20200101000000Z", enddate="20200102000000Z")
        self.wrong_name = self.issue("wrong.test", dns=["wrong.test"])
        self._n = 0

    @classmethod
    def create(cls, root: Optional[Union[str, Path]] = None, key_type: str = "ec") -> "TestPki":
        if root is None:
            path = Path(tempfile.mkdtemp(prefix="portico-pki-"))
            # Dovecot's master reads the files as root; nothing else needs them.
            return cls(path, True, key_type)
        return cls(Path(root), False, key_type)

    @property
    def ca(self) -> Path:
        return self.authority.cert

    @property
    def foreign_ca(self) -> Path:
        return self.foreign_authority.cert

    def issue(self, cn: str, dns: Iterable[str] = (), ips: Iterable[str] = (), stem: Optional[str] = None,
              **kw) -> Leaf:
        """A further leaf from the test CA (a fresh key each time)."""
        if stem is None:
            stem = cn
            i = 1
            while (self.leaves_dir / (stem + ".pem")).exists():
                i += 1
                stem = "%s-%d" % (cn, i)
        return self.authority.issue(self.leaves_dir, stem, cn, dns=dns, ips=ips, **kw)

    def cleanup(self) -> None:
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def spki_sha256(cert: Union[str, Path]) -> str:
    """Hex SHA-256 of the certificate's SubjectPublicKeyInfo (DER), via the CLI."""
    pub = _run([OPENSSL, "x509", "-in", str(cert), "-pubkey", "-noout"])
    der = _run([OPENSSL, "pkey", "-pubin", "-outform", "der"], input=pub)
    out = _run([OPENSSL, "dgst", "-sha256"], input=der).decode()
    m = re.search(r"([0-9a-f]{64})\s*$", out)
    if not m:
        raise RuntimeError("unexpected dgst output %r" % out)
    return m.group(1)


def cert_serial(pem: Union[bytes, str]) -> str:
    """Serial (hex, upper case) of a PEM certificate given as text."""
    data = pem.encode() if isinstance(pem, str) else pem
    out = _run([OPENSSL, "x509", "-noout", "-serial"], input=data).decode().strip()
    return out.split("=", 1)[1].upper()


if __name__ == "__main__":  # quick manual check: python3 tls_certs.py
    import time

    t0 = time.monotonic()
    pki = TestPki.create()
    print("made in %.2fs under %s" % (time.monotonic() - t0, pki.root))
    for leaf in (pki.mail, pki.other, pki.foreign, pki.expired, pki.wrong_name):
        print(_run([OPENSSL, "x509", "-in", str(leaf.cert), "-noout", "-subject", "-issuer", "-dates",
                    "-ext", "subjectAltName"]).decode())
        print("pin", leaf.pin)
    pki.cleanup()
