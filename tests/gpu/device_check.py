#!/usr/bin/env python3
"""The GPU device check (see device-check.sh): runs GPU jobs through `dtee-worker exec` on a real
NVIDIA GPU, checks their outputs against CPU references, and prints what it measured."""

import atexit
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

WORKER = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = tempfile.mkdtemp(prefix="dtee-device-check-")
atexit.register(shutil.rmtree, WORK, ignore_errors=True)  # the blobs take a few hundred MB
BLOBS = os.path.join(WORK, "blobs")
os.makedirs(BLOBS)
ENV = dict(
    os.environ,
    DTEE_ATTESTATION="software",
    DTEE_MAX_MEMORY_BYTES=str(1 << 30),
    DTEE_MAX_OUTPUT_BYTES=str(256 << 20),
    DTEE_MAX_INPUT_BYTES=str(512 << 20),
    DTEE_LOG="warn",
)
failures = []
figures = []


def check(ok, what):
    print(("   ok: " if ok else "   FAIL: ") + what, flush=True)
    if not ok:
        failures.append(what)


def blob(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(BLOBS, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def kernel(name: str) -> str:
    with open(os.path.join(ROOT, "kernels", "ptx", name + ".ptx"), "rb") as f:
        return blob(f.read())


def job(name, buffers, params, grid, block, limits=None, shared=0):
    spec = {
        "schema": "dtee.job/v1",
        "kernel": {"digest": kernel(name), "format": "ptx", "entry": name, "target": "cuda"},
        "buffers": buffers,
        "params": params,
        "launch": {"grid": list(grid), "block": list(block), "shared_mem_bytes": shared},
    }
    if limits:
        spec["limits"] = limits
    return spec


def inp(name, data: bytes):
    if len(data) <= 1 << 16:
        return {"kind": "input", "name": name, "inline": base64.b64encode(data).decode()}
    return {"kind": "input", "name": name, "blob": blob(data)}


def out(name, size):
    return {"kind": "output", "name": name, "size": size}


def u32(name, value):
    return {"name": name, "type": "u32", "value": value}


def f32(name, value):
    return {"name": name, "type": "f32", "value": value}


def run(*specs, repeat=0):
    """Runs the jobs in one dtee-worker process; returns (results, stderr, seconds)."""
    paths = []
    for i, spec in enumerate(specs):
        path = os.path.join(WORK, f"job-{time.monotonic_ns()}-{i}.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        paths.append(path)
    args = [WORKER, "exec", *paths, "--blobs", BLOBS]
    if repeat:
        args += ["--repeat", str(repeat)]
    started = time.monotonic()
    proc = subprocess.run(args, env=ENV, capture_output=True, timeout=240)
    took = time.monotonic() - started
    if proc.returncode not in (0, 1):
        print(proc.stderr.decode(), file=sys.stderr)
        raise SystemExit(f"dtee-worker exec failed ({proc.returncode})")
    text = proc.stdout.decode()
    results = [json.loads(text)] if len(specs) == 1 else [json.loads(l) for l in text.splitlines() if l]
    return results, proc.stderr.decode(), took


def output(result, name, dtype=np.float32):
    for o in result["outputs"]:
        if o["name"] == name:
            return np.frombuffer(base64.b64decode(o["data"]), dtype=dtype)
    raise KeyError(name)


def code(result):
    return (result.get("error") or {}).get("code")


print("== doctor")
ran = subprocess.run([WORKER, "doctor", "--json"], env=ENV, capture_output=True)
if ran.returncode != 0:
    sys.exit(f"device-check: {WORKER} doctor failed (exit {ran.returncode}); a binary built on another "
             f"machine may need a newer glibc here:\n{ran.stderr.decode(errors='replace')}")
doctor = json.loads(ran.stdout)
cuda = [g for g in doctor["gpus"] if g["driver"] == "cuda"][0]
check(bool(cuda["devices"]), f"a CUDA device: {cuda['devices'][:1] or cuda['detail']}")
if not cuda["devices"]:
    raise SystemExit("device-check: no CUDA device; nothing more to check")
device = cuda["devices"][0]

rng = np.random.default_rng(7)
print("== kernels against CPU references")
n = 1 << 20
x = rng.standard_normal(n, dtype=np.float32)
y = rng.standard_normal(n, dtype=np.float32)
a = np.float32(2.5)
saxpy = job("saxpy", [inp("x", x.tobytes()), inp("y", y.tobytes()), out("out", 4 * n)],
            [f32("a", float(a)), u32("n", n)], ((n + 255) // 256, 1, 1), (256, 1, 1))
vadd = job("vadd", [inp("a", x.tobytes()), inp("b", y.tobytes()), out("out", 4 * n)],
           [u32("n", n)], ((n + 255) // 256, 1, 1), (256, 1, 1))
m, k, nn = 300, 200, 260
ma = rng.standard_normal((m, k), dtype=np.float32)
mb = rng.standard_normal((k, nn), dtype=np.float32)
matmul = job("matmul", [inp("a", ma.tobytes()), inp("b", mb.tobytes()), out("c", 4 * m * nn)],
             [u32("m", m), u32("n", nn), u32("k", k)], ((nn + 15) // 16, (m + 15) // 16, 1), (16, 16, 1))
groups = 120
reduce_ = job("reduce", [inp("x", x.tobytes()), out("out", 4 * groups)], [u32("n", n)],
              (groups, 1, 1), (256, 1, 1))
count = 4096
messages = rng.integers(0, 256, size=64 * count, dtype=np.uint8).tobytes()
sha = job("sha256", [inp("messages", messages), out("digests", 32 * count)], [u32("n", count)],
          ((count + 127) // 128, 1, 1), (128, 1, 1))
results, _, _ = run(saxpy, vadd, matmul, reduce_, sha)
r_saxpy, r_vadd, r_matmul, r_reduce, r_sha = results
check(r_saxpy["status"] == "succeeded" and np.array_equal(output(r_saxpy, "out"), a * x + y),
      "saxpy matches a * x + y bit for bit")
check(r_vadd["status"] == "succeeded" and np.array_equal(output(r_vadd, "out"), x + y),
      "vadd matches x + y bit for bit")
reference = ma.astype(np.float64) @ mb.astype(np.float64)
got = output(r_matmul, "c").reshape(m, nn) if r_matmul["status"] == "succeeded" else None
check(got is not None and np.allclose(got, reference, rtol=1e-4, atol=1e-3),
      "matmul 300×200×260 matches a float64 reference (rtol 1e-4)")
partial = output(r_reduce, "out") if r_reduce["status"] == "succeeded" else None
check(partial is not None and abs(float(partial.astype(np.float64).sum()) - float(x.astype(np.float64).sum())) < 1e-2,
      "reduce: the partial sums add up to sum(x)")
expected = b"".join(hashlib.sha256(messages[64 * i:64 * i + 64]).digest() for i in range(count))
check(r_sha["status"] == "succeeded" and output(r_sha, "digests", np.uint8).tobytes() == expected,
      f"sha256 of {count} 64-byte messages matches hashlib")
check(r_saxpy["execution"]["device"]["vendor"] == "nvidia", f"the result names the device: {r_saxpy['execution']['device']}")

print("== the watchdog, faults and limits")
spin = job("spin", [out("out", 4)], [], (1, 1, 1), (1, 1, 1), limits={"timeout_ms": 500})
oob = job("oob", [out("out", 4)], [], (1, 1, 1), (1, 1, 1))
small = job("vadd", [inp("a", x[:256].tobytes()), inp("b", y[:256].tobytes()), out("out", 1024)],
            [u32("n", 256)], (1, 1, 1), (256, 1, 1))
(r_spin, r_after_spin, r_oob, r_after_oob), _, _ = run(spin, small, oob, small)
spin_s = r_spin["resources"]["wall_time_us"] / 1e6 if r_spin.get("resources") else float("inf")
check(code(r_spin) == "execution_timeout" and spin_s < 2.0,
      f"spin with a 500 ms limit: {code(r_spin)} after {spin_s:.3f} s")
check(r_after_spin["status"] == "succeeded", "the next job succeeds on a fresh device host")
check(code(r_oob) == "kernel_trapped", f"oob: {code(r_oob)}: {(r_oob.get('error') or {}).get('message')}")
check(r_after_oob["status"] == "succeeded", "the next job after the fault succeeds")
big = job("vadd", [inp("a", x.tobytes()), inp("b", y.tobytes()), out("out", 4 * n)],
          [u32("n", n)], ((n + 255) // 256, 1, 1), (256, 1, 1), limits={"memory_bytes": 4 << 20})
(r_big,), _, _ = run(big)
check(code(r_big) == "memory_limit_exceeded" and not (r_big.get("resources") or {}).get("device_memory_bytes"),
      f"a job over its device-memory limit is refused before allocation: {code(r_big)}")
# One scalar fewer than the PTX entry declares: refused before the driver reads arguments the
# host never passed.
short = job("vadd", [inp("a", b"\0" * 4), inp("b", b"\0" * 4), out("out", 4)], [], (1, 1, 1), (32, 1, 1))
(r_short,), _, _ = run(short)
check(code(r_short) == "kernel_link_failed" and not (r_short.get("resources") or {}).get("device_memory_bytes"),
      f"a launch missing an argument the entry declares is refused before the device: {code(r_short)}")

print("== figures")
trivial = job("vadd", [inp("a", b"\0" * 4), inp("b", b"\0" * 4), out("out", 4)], [u32("n", 1)],
              (1, 1, 1), (32, 1, 1))
_, stderr, _ = run(trivial, repeat=1000)
line = [l for l in stderr.splitlines() if l.startswith("exec --repeat")]
figures.append(("trivial GPU job through the device host, per job (median of 1,000)", line[0] if line else stderr[-200:]))

size = 4096
A = rng.standard_normal((size, size), dtype=np.float32)
B = rng.standard_normal((size, size), dtype=np.float32)
big_mm = job("matmul", [inp("a", A.tobytes()), inp("b", B.tobytes()), out("c", 4 * size * size)],
             [u32("m", size), u32("n", size), u32("k", size)], (size // 16, size // 16, 1), (16, 16, 1),
             limits={"memory_bytes": 3 * 4 * size * size, "output_bytes": 4 * size * size, "timeout_ms": 60000})
(r_mm,), _, _ = run(big_mm)
check(r_mm["status"] == "succeeded", f"matmul 4096³: {r_mm['status']} {code(r_mm) or ''}")
dtee_ms = r_mm["resources"].get("kernel_time_us", 0) / 1000 if r_mm["status"] == "succeeded" else float("nan")
if r_mm["status"] == "succeeded":
    C = output(r_mm, "c").reshape(size, size)
    rows = rng.integers(0, size, 16)
    cols = rng.integers(0, size, 16)
    want = np.array([A[i].astype(np.float64) @ B[:, j].astype(np.float64) for i, j in zip(rows, cols)])
    check(np.allclose(C[rows, cols], want, rtol=1e-3, atol=1e-2), "matmul 4096³: 16 sampled elements match float64")

try:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    ta = torch.from_numpy(A).cuda()
    tb = torch.from_numpy(B).cuda()
    for _ in range(3):
        torch.matmul(ta, tb)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(ta, tb)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    torch_ms = sorted(times)[len(times) // 2]
except Exception as error:  # noqa: BLE001
    torch_ms = float("nan")
    print(f"   (torch unavailable: {error})")
figures.append(("matmul 4096³ f32, dtee tiled kernel (device events)", f"{dtee_ms:.2f} ms"))
figures.append(("torch.matmul 4096³ f32, TF32 off (median of 10)", f"{torch_ms:.2f} ms"))
figures.append(("ratio dtee / torch", f"{dtee_ms / torch_ms:.1f}×"))

print(f"\n| figure ({device['name']}, {device['arch']}, {device['driver']}) | value |\n|---|---|")
for name, value in figures:
    print(f"| {name} | {value} |")
print(f"\ndevice-check: {'all checks passed' if not failures else str(len(failures)) + ' failed: ' + '; '.join(failures)}")
sys.exit(1 if failures else 0)
