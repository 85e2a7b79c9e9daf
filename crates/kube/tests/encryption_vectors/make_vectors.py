#!/usr/bin/env python3
"""Encryption-at-rest test vectors made without etcdguard's code.

Encrypts real stored values (the protobuf envelopes of kubernetes/api's golden fixtures
core.v1.Secret and core.v1.ConfigMap) in the layouts the kube-apiserver writes
(k8s:enc:<provider>:v1:<key name>:<body>), using PyPI `cryptography` (AES-CBC + PKCS#7,
AES-GCM with the etcd key as AAD) and `PyNaCl` (secretbox), with fresh random keys and
nonces on every run. Writes into OUT_DIR:
  config.yaml   the EncryptionConfiguration holding the keys
  vectors.json  cases: etcd key, stored value (base64), expected outcome, plaintext fixture

Usage: make_vectors.py FIXTURES_DIR OUT_DIR
"""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import nacl.secret

fixtures, out = sys.argv[1], sys.argv[2]
plain = {
    "secret": open(os.path.join(fixtures, "core.v1.Secret.pb"), "rb").read(),
    "configmap": open(os.path.join(fixtures, "core.v1.ConfigMap.pb"), "rb").read(),
}
etcd_key = {
    "secret": b"/registry/secrets/namespaceValue/nameValue",  # where the fixture object lives
    "configmap": b"/registry/configmaps/namespaceValue/nameValue",
}
fixture_file = {"secret": "core.v1.Secret.pb", "configmap": "core.v1.ConfigMap.pb"}

keys = {
    ("aescbc", "cbc-key"): os.urandom(32),
    ("aescbc", "cbc-192"): os.urandom(24),
    ("aesgcm", "gcm-key"): os.urandom(32),
    ("aesgcm", "gcm:128"): os.urandom(16),  # a name with a colon, as the API server allows
    ("secretbox", "box-key"): os.urandom(32),
}


def aescbc(key, data, aad):
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(padded) + enc.finalize()


def aesgcm(key, data, aad):
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, data, aad)  # ciphertext || tag


def secretbox(key, data, aad):
    # nonce || tag || ciphertext, the NaCl layout the API server stores.
    return bytes(nacl.secret.SecretBox(key).encrypt(data, os.urandom(24)))


seal = {"aescbc": aescbc, "aesgcm": aesgcm, "secretbox": secretbox}


def stored(provider, name, body):
    return b"k8s:enc:" + provider.encode() + b":v1:" + name.encode() + b":" + body


def flip(value, index, bit=0x01):
    b = bytearray(value)
    b[index] ^= bit
    return bytes(b)


cases = []


def case(name, provider, key_name, obj, key, value, expect):
    cases.append({
        "name": name, "provider": provider, "keyName": key_name, "etcdKey": key.decode(),
        "value": base64.b64encode(value).decode(), "expect": expect, "plaintext": fixture_file[obj],
    })


for (provider, name), key in keys.items():
    for obj in ("secret", "configmap"):
        body = seal[provider](key, plain[obj], etcd_key[obj])
        value = stored(provider, name, body)
        header = len(value) - len(body)
        case(f"{provider} {name} {obj}", provider, name, obj, etcd_key[obj], value, "ok")
        # The same name, another secret: an old or foreign key.
        wrong = seal[provider](os.urandom(len(key)), plain[obj], etcd_key[obj])
        case(f"{provider} {name} {obj} wrong key", provider, name, obj, etcd_key[obj], stored(provider, name, wrong), "rejected")
        # The same value read under another etcd key: only aesgcm authenticates the key.
        moved = b"/registry/secrets/default/other"
        case(f"{provider} {name} {obj} under another key", provider, name, obj, moved, value, "rejected" if provider == "aesgcm" else "ok")
        # Cut short: inside the nonce/IV, and (for the stream/AEAD layouts) inside the data.
        case(f"{provider} {name} {obj} truncated to 10 bytes", provider, name, obj, etcd_key[obj], value[: header + 10], "truncated")
        if provider == "aescbc":
            case(f"{provider} {name} {obj} truncated mid-block", provider, name, obj, etcd_key[obj], value[:-5], "truncated")
            # A flipped IV bit flips the same plaintext bit: "k8s\0" no longer starts it.
            case(f"{provider} {name} {obj} IV bit flipped", provider, name, obj, etcd_key[obj], flip(value, header), "rejected")
            # aescbc has no integrity check: a flip inside the data garbles two blocks there and
            # still decrypts (documented as such; the object decoder is what notices).
            case(f"{provider} {name} {obj} data bit flipped", provider, name, obj, etcd_key[obj], flip(value, header + 16 + 32 + 5), "garbled")
            # Flipping the top bit of the second-to-last block's last byte flips the padding
            # byte's top bit: always invalid PKCS#7.
            case(f"{provider} {name} {obj} padding bit flipped", provider, name, obj, etcd_key[obj], flip(value, len(value) - 17, 0x80), "rejected")
        else:
            case(f"{provider} {name} {obj} last byte cut", provider, name, obj, etcd_key[obj], value[:-1], "rejected")
            case(f"{provider} {name} {obj} bit flipped", provider, name, obj, etcd_key[obj], flip(value, len(value) // 2), "rejected")
            case(f"{provider} {name} {obj} tag bit flipped", provider, name, obj, etcd_key[obj], flip(value, header + (12 if provider == "aesgcm" else 24) + (len(body) - 28 if provider == "aesgcm" else 0)), "rejected")

# Outside the configuration's reach.
case("key name not in config", "secretbox", "retired", "secret", etcd_key["secret"], stored("secretbox", "retired", secretbox(os.urandom(32), plain["secret"], b"")), "keyNotInConfig")
case("no key name", "secretbox", "", "secret", etcd_key["secret"], b"k8s:enc:secretbox:v1:", "noKeyName")
case("unknown provider", "", "", "secret", etcd_key["secret"], b"k8s:enc:aesxts:v1:k:" + os.urandom(40), "unknownProvider")
# KMS v2 EncryptedObject {1 encryptedData, 2 keyID, 3 encryptedDEKSource, 5 type}: named, not decrypted.
kms_body = b"\x0a\x20" + os.urandom(32) + b"\x12\x0bkey-id-2026" + b"\x1a\x10" + os.urandom(16) + b"\x28\x01"
case("kms v2", "kms-v2", "vault", "secret", etcd_key["secret"], b"k8s:enc:kms:v2:vault:" + kms_body, "needsKms")
case("kms v1", "kms-v1", "legacy", "secret", etcd_key["secret"], b"k8s:enc:kms:v1:legacy:\x00\x04abcd" + os.urandom(40), "needsKms")


def b64(k):
    return base64.b64encode(k).decode()


providers = {}
for (provider, name), key in keys.items():
    providers.setdefault(provider, []).append({"name": name, "secret": b64(key)})
config = {
    "kind": "EncryptionConfiguration",
    "apiVersion": "apiserver.config.k8s.io/v1",
    "resources": [
        {"resources": ["secrets"], "providers": [{"aesgcm": {"keys": providers["aesgcm"]}}, {"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///run/kms.sock"}}, {"identity": {}}]},
        {"resources": ["configmaps", "*.example.com"], "providers": [{"aescbc": {"keys": providers["aescbc"]}}, {"secretbox": {"keys": providers["secretbox"]}}, {"kms": {"name": "legacy", "endpoint": "unix:///run/kms1.sock"}}]},
    ],
}
os.makedirs(out, exist_ok=True)
# JSON is YAML; writing it with json keeps the script free of a YAML dependency.
with open(os.path.join(out, "config.yaml"), "w") as f:
    json.dump(config, f, indent=2)
with open(os.path.join(out, "vectors.json"), "w") as f:
    json.dump(cases, f, indent=1)
print(f"{len(cases)} cases")
