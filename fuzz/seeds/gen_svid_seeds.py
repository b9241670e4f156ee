#!/usr/bin/env python3
"""Writes the fixed trust store and the seed certificates of the X509-SVID
fuzz targets (`svid_leaf`, `svid_verify`).

The fuzz targets verify at a fixed instant (FIXED_NOW, 2026-06-01 UTC) against
the roots written to fuzz/fixtures/, so a seed that is valid today stays valid
in every later run, and the corpus keeps reaching the signature checks.

Needs the `cryptography` package (pip install cryptography). Re-running it
makes new keys: the fixtures and the seeds change together, and seeds already
in the corpus then no longer chain to the roots (run `cargo fuzz cmin` after).

    python3 fuzz/seeds/gen_svid_seeds.py
"""

import datetime as dt
import hashlib
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.dirname(HERE)
SEP = b"MGSEP"  # chain separator of the svid_verify input format

UTC = dt.timezone.utc
ROOT_FROM, ROOT_TO = dt.datetime(2025, 1, 1, tzinfo=UTC), dt.datetime(2125, 1, 1, tzinfo=UTC)
LEAF_FROM, LEAF_TO = dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, tzinfo=UTC)

CLIENT = "spiffe://cluster.local/ns/default/sa/client"


def name(cn):
    if not cn:
        return x509.Name([])  # an empty subject: the SAN alone names the workload
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca_cert(key, subject, issuer_key, issuer_name, td, path_len=None, ca=True):
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ROOT_FROM)
        .not_valid_after(ROOT_TO)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{td}")]),
            critical=False,
        )
    )
    return b.sign(issuer_key, hashes.SHA256())


def leaf(issuer_key, issuer_name, uris=(CLIENT,), dns=(), ku=("ds",), ku_critical=True,
         eku=("server", "client"), ca=False, nb=LEAF_FROM, na=LEAF_TO, extra=(), key=None,
         subject="client", algo=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ku is not None:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature="ds" in ku, content_commitment=False,
                key_encipherment="ke" in ku, data_encipherment=False, key_agreement=False,
                key_cert_sign="kcs" in ku, crl_sign="crl" in ku, encipher_only=False,
                decipher_only=False,
            ),
            critical=ku_critical,
        )
    if eku:
        oids = {
            "server": ExtendedKeyUsageOID.SERVER_AUTH,
            "client": ExtendedKeyUsageOID.CLIENT_AUTH,
            "code": ExtendedKeyUsageOID.CODE_SIGNING,
            "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        }
        b = b.add_extension(x509.ExtendedKeyUsage([oids[e] for e in eku]), critical=False)
    sans = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer_key, algo if algo is not None else hashes.SHA256())


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def write(dirname, payload):
    os.makedirs(dirname, exist_ok=True)
    path = os.path.join(dirname, hashlib.sha1(payload).hexdigest())
    with open(path, "wb") as f:
        f.write(payload)


def main():
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = name("meshguard fuzz root (cluster.local)")
    root = ca_cert(root_key, "meshguard fuzz root (cluster.local)", root_key, root_name,
                   "cluster.local")
    partner_key = ec.generate_private_key(ec.SECP256R1())
    partner_name = name("meshguard fuzz root (partner.org)")
    partner = ca_cert(partner_key, "meshguard fuzz root (partner.org)", partner_key,
                      partner_name, "partner.org")
    fixtures = os.path.join(FUZZ, "fixtures")
    os.makedirs(fixtures, exist_ok=True)
    with open(os.path.join(fixtures, "bundle-cluster.local.pem"), "wb") as f:
        f.write(pem(root))
    with open(os.path.join(fixtures, "bundle-partner.org.pem"), "wb") as f:
        f.write(pem(partner))

    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = ca_cert(inter_key, "intermediate", root_key, root_name, "cluster.local")
    inter0_key = ec.generate_private_key(ec.SECP256R1())
    inter0 = ca_cert(inter0_key, "intermediate pathlen 0", root_key, root_name,
                     "cluster.local", path_len=0)
    notca_key = ec.generate_private_key(ec.SECP256R1())
    notca = ca_cert(notca_key, "not a CA", root_key, root_name, "cluster.local", ca=False)

    unknown_critical = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")

    # (leaf, intermediates) pairs: one valid case per shape, then one case
    # per rule, so the fuzzer starts next to every decision.
    cases = [
        (leaf(root_key, root_name), []),
        (leaf(root_key, root_name, dns=("client.default.svc",)), []),
        (leaf(inter_key, inter.subject), [inter]),
        (leaf(inter0_key, inter0.subject), [inter0]),
        (leaf(notca_key, notca.subject), [notca]),
        (leaf(partner_key, partner_name, uris=("spiffe://partner.org/ns/billing/sa/api",)), []),
        (leaf(partner_key, partner_name), []),
        (leaf(root_key, root_name, uris=("spiffe://evil.org/ns/default/sa/client",)), []),
        (leaf(root_key, root_name, uris=()), []),
        (leaf(root_key, root_name, uris=(), dns=("client.default.svc",)), []),
        (leaf(root_key, root_name, uris=(CLIENT, "spiffe://cluster.local/ns/x/sa/y")), []),
        (leaf(root_key, root_name, uris=("spiffe://cluster.local",)), []),
        (leaf(root_key, root_name, uris=("spiffe://Cluster.local/ns/a/sa/b",)), []),
        (leaf(root_key, root_name, uris=("spiffe://cluster.local/ns/a/sa/b/",)), []),
        (leaf(root_key, root_name, uris=("spiffe://cluster.local/ns/a/sa/b?q=1",)), []),
        (leaf(root_key, root_name, uris=("spiffe://cluster.local/ns/%61/sa/b",)), []),
        (leaf(root_key, root_name, uris=("spiffe://cluster.local:8443/ns/a/sa/b",)), []),
        (leaf(root_key, root_name, uris=("spiffe://cluster.local/" + "a" * 2100,)), []),
        (leaf(root_key, root_name, ca=True, ku=("ds", "kcs")), []),
        (leaf(root_key, root_name, ku=("ds", "crl")), []),
        (leaf(root_key, root_name, ku=None), []),
        (leaf(root_key, root_name, ku_critical=False), []),
        (leaf(root_key, root_name, ku=("ke",)), []),
        (leaf(root_key, root_name, eku=("server",)), []),
        (leaf(root_key, root_name, eku=("client",)), []),
        (leaf(root_key, root_name, eku=("code",)), []),
        (leaf(root_key, root_name, eku=("any",)), []),
        (leaf(root_key, root_name, eku=()), []),
        (leaf(root_key, root_name, nb=dt.datetime(2024, 1, 1, tzinfo=UTC),
              na=dt.datetime(2025, 1, 1, tzinfo=UTC)), []),
        (leaf(root_key, root_name, nb=dt.datetime(2030, 1, 1, tzinfo=UTC),
              na=dt.datetime(2031, 1, 1, tzinfo=UTC)), []),
        (leaf(root_key, root_name, extra=[(unknown_critical, True)]), []),
        (leaf(root_key, root_name, extra=[(unknown_critical, False)]), []),
        (leaf(root_key, root_name, key=rsa.generate_private_key(65537, 2048)), []),
        (leaf(root_key, root_name, key=ed25519.Ed25519PrivateKey.generate()), []),
        (leaf(root_key, root_name, subject=""), []),
    ]
    leaf_dir = os.path.join(FUZZ, "corpus", "svid_leaf")
    verify_dir = os.path.join(FUZZ, "corpus", "svid_verify")
    for cert, chain in cases:
        write(leaf_dir, der(cert))
        write(verify_dir, SEP.join([der(cert)] + [der(c) for c in chain]))
    write(leaf_dir, der(root))
    write(verify_dir, der(root))
    # The valid leaf with too many intermediates (the same one, repeated).
    good, _ = cases[2]
    write(verify_dir, SEP.join([der(good)] + [der(inter)] * 5))
    print(f"wrote {len(cases) + 2} seeds per target and the fixtures", file=sys.stderr)


if __name__ == "__main__":
    main()
