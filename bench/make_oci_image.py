#!/usr/bin/env python3
"""Writes an OCI image layout holding one incompressible layer of SIZE_MB (an uncompressed tar
of random bytes), so push/pull benchmarks move exactly that many bytes with no recompression.
Usage: make_oci_image.py DIR SIZE_MB"""
import hashlib
import io
import json
import os
import sys
import tarfile


def main():
    out, size_mb = sys.argv[1], int(sys.argv[2])
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    tmp = os.path.join(out, "layer.tmp")
    payload = size_mb << 20
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w") as tar:
            info = tarfile.TarInfo("data.bin")
            info.size = payload

            class Random(io.RawIOBase):
                left = payload

                def readable(self):
                    return True

                def readinto(self, b):
                    n = min(len(b), self.left, 1 << 20)
                    b[:n] = os.urandom(n)
                    self.left -= n
                    return n

            tar.addfile(info, io.BufferedReader(Random(), 1 << 20))
    h = hashlib.sha256()
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    layer_digest, layer_size = h.hexdigest(), os.path.getsize(tmp)
    os.replace(tmp, os.path.join(blobs, layer_digest))

    def put(doc):
        data = json.dumps(doc).encode()
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return d, len(data)

    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]}}
    cd, cs = put(config)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{cd}", "size": cs},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{layer_digest}", "size": layer_size}]}
    md, ms = put(manifest)
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": f"sha256:{md}", "size": ms, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(layer_size)


if __name__ == "__main__":
    main()
