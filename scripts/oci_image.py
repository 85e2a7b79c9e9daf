#!/usr/bin/env python3
"""Writes the etcdguard image as an OCI image layout in one tar (see scripts/image).

One gzip layer holds the binary, the shared libraries ldd names for it, etcd and etcdutl,
a passwd/group with the non-root user and the CA bundle. Every entry has a fixed time
(SOURCE_DATE_EPOCH, else 0) and owner, and entries are sorted, so the same inputs give the
same digests.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

UID = GID = 65532
USER = "etcdguard"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def fail(msg):
    print(f"oci_image: {msg}", file=sys.stderr)
    sys.exit(1)


def shared_libraries(binary):
    """The absolute paths ldd resolves for `binary` (its loader included); none if static."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        fail(f"ldd {binary} failed: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        if "not found" in line:
            fail(f"{binary} needs a library this machine lacks: {line.strip()}")
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def run_version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{binary} --version failed: {out.stderr.strip()}")
    # The first line is "etcdguard X.Y.Z"; more lines (commit, build time) follow.
    first = out.stdout.splitlines()[0].split() if out.stdout.strip() else []
    if len(first) != 2 or first[0] != "etcdguard":
        fail(f"{binary} --version printed {out.stdout[:80]!r}, not 'etcdguard VERSION'")
    return first[1]


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class Layer:
    """A tar layer built in memory with fixed metadata."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # path inside the image -> (TarInfo, bytes or None)

    def _info(self, path, kind, mode, size=0, uid=0, gid=0):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.size = kind, mode, size
        info.mtime, info.uid, info.gid, info.uname, info.gname = self.mtime, uid, gid, "", ""
        return info

    def dir(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = (self._info(p, tarfile.DIRTYPE, mode if i == len(parts) else 0o755), None)

    def file(self, path, data, mode=0o644):
        self.dir(os.path.dirname(path))
        p = path.lstrip("/")
        self.entries[p] = (self._info(p, tarfile.REGTYPE, mode, len(data)), data)

    def host_file(self, src, dest, mode=None):
        with open(src, "rb") as f:
            data = f.read()
        self.file(dest, data, mode if mode is not None else os.stat(src).st_mode & 0o777)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for p in sorted(self.entries):
                info, data = self.entries[p]
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", required=True, help="the etcdguard binary to ship")
    ap.add_argument("--etcd-dir", required=True, help="folder with etcd and etcdutl")
    ap.add_argument("--out", required=True, help="the OCI archive to write")
    args = ap.parse_args()

    for path in [args.binary] + [os.path.join(args.etcd_dir, b) for b in ("etcd", "etcdutl")]:
        if not os.access(path, os.X_OK):
            fail(f"{path} is not an executable file (etcd/etcdutl: run `bash .ci/install-go-peers` or set ETCD_DIR)")
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    version = run_version(args.binary)

    layer = Layer(mtime)
    layer.host_file(args.binary, "/usr/local/bin/etcdguard", 0o755)
    for b in ("etcd", "etcdutl"):
        path = os.path.join(args.etcd_dir, b)
        layer.host_file(path, f"/usr/local/bin/{b}", 0o755)
        for lib in shared_libraries(path):
            layer.host_file(lib, lib, 0o755)
    for lib in shared_libraries(args.binary):
        layer.host_file(lib, lib, 0o755)
    if os.path.isfile(CA_BUNDLE):
        layer.host_file(CA_BUNDLE, CA_BUNDLE, 0o644)
    else:
        fail(f"{CA_BUNDLE} is missing (apt-get install ca-certificates): the image needs it for TLS to object stores")
    layer.file("/etc/passwd", (f"root:x:0:0:root:/root:/sbin/nologin\n"
                               f"{USER}:x:{UID}:{GID}:{USER}:/home/{USER}:/sbin/nologin\n").encode())
    layer.file("/etc/group", f"root:x:0:\n{USER}:x:{GID}:\n".encode())
    layer.file("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    layer.dir("/tmp", 0o1777)
    layer.dir("/scratch", 0o1777)  # the agent's --scratch-dir when no volume is mounted there
    layer.dir(f"/home/{USER}")
    layer.entries[f"home/{USER}"][0].uid = UID
    layer.entries[f"home/{USER}"][0].gid = GID

    raw = layer.tar()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as g:
        g.write(raw)
    layer_blob = gz.getvalue()

    labels = {
        "org.opencontainers.image.title": "etcdguard",
        "org.opencontainers.image.description": "etcd backup, verification and restore for Kubernetes control planes",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels["org.opencontainers.image.created"] = created
    revision = git_revision()
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{UID}:{GID}",
            "Entrypoint": ["/usr/local/bin/etcdguard"],
            "Cmd": ["--help"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/etcdguard"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": created, "created_by": "scripts/image"}],
    }
    config_blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()

    def descriptor(media_type, blob):
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, config_blob),
        "layers": [descriptor(LAYER_TYPE, layer_blob)],
        "annotations": {k: v for k, v in labels.items() if k != "org.opencontainers.image.description"},
    }
    manifest_blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_desc = descriptor(MANIFEST_TYPE, manifest_blob)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": version}
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}

    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode()}
    for blob in (layer_blob, config_blob, manifest_blob):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp.{os.getpid()}"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            t.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, mtime
            t.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, args.out)
    print(json.dumps({"archive": args.out, "version": version, "manifest": manifest_desc["digest"],
                      "layer_bytes": len(layer_blob)}))


if __name__ == "__main__":
    main()
