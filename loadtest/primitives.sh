#!/usr/bin/env bash
# The host primitives (schemas/KERNEL_ABI.md, "Host primitives") measured on their own, through
# the worker's backend (`dtee-worker exec --repeat`: instantiation, copies, fuel and the epoch
# deadline all on): SHA-256 of 1 MiB hashed in WebAssembly (sha256.wasm) and by the host
# (sha256_host.wasm), an Ed25519 verification of a 1 KiB message (ed25519_verify.wasm), and a
# trivial run (echo.wasm, 16 bytes) as the floor every run pays. Prints median µs per run and
# the fuel each run was charged.
#
# Usage: loadtest/primitives.sh [RUNS]   (default 200; needs target/release/dtee-worker)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
worker=${DTEE_WORKER_BIN:-target/release/dtee-worker}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/blobs"
"${PYTHON:-clients/python/.venv/bin/python}" - "$tmp" <<'PY'
import hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
tmp = sys.argv[1]
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    open(f"{tmp}/blobs/{digest}", "wb").write(data)
    return "sha256:" + digest
def job(name, kernel, entry, buffers):
    spec = {"schema": "dtee.job/v1",
            "kernel": {"digest": blob(open(f"kernels/wasm/{kernel}.wasm", "rb").read()),
                       "format": "wasm", "entry": entry, "target": "wasm"},
            "buffers": buffers}
    json.dump(spec, open(f"{tmp}/{name}.json", "w"))
def inp(name, data): return {"kind": "input", "name": name, "blob": blob(data)}
def out(name, size): return {"kind": "output", "name": name, "size": size}
data = bytes((31 * i + 7) % 256 for i in range(1 << 20))
job("sha256-wasm", "sha256", "sha256", [inp("data", data), out("digest", 32)])
job("sha256-host", "sha256_host", "sha256", [inp("data", data), out("digest", 32)])
key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
message = bytes(1024)
public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
job("ed25519-verify", "ed25519_verify", "verify",
    [inp("public_key", public), inp("signature", key.sign(message)), inp("message", message), out("valid", 1)])
job("echo", "echo", "echo", [inp("in", bytes(16)), out("out", 16)])
PY
printf '%-16s %10s %14s  %s\n' run "median µs" fuel output
for name in echo sha256-wasm sha256-host ed25519-verify; do
  us=$(DTEE_ATTESTATION=software "$worker" exec "$tmp/$name.json" --blobs "$tmp/blobs" --repeat "$runs" \
      2>&1 >"$tmp/$name.result" | sed -n 's/.*median \([0-9]*\) us.*/\1/p')
  python3 - "$name" "$us" "$tmp/$name.result" <<'PY'
import base64, json, sys
name, us, path = sys.argv[1:4]
r = json.load(open(path))
assert r["status"] == "succeeded", r
data = base64.b64decode(r["outputs"][-1]["data"])
print(f"{name:<16} {us:>10} {r['resources']['fuel_consumed']:>14,}  {data[:8].hex()}")
PY
done
