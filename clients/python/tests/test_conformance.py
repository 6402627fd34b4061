"""The client conformance suite (clients/conformance/README.md) for the Python client.

One test per case, named ``test_<case>``. Offline cases need nothing; live cases need RabbitMQ,
Redis and a worker serving ``wasm`` in ``$DTEE_NAMESPACE``, and FAIL (never skip) without them:

    DTEE_AMQP_URL   default amqp://guest:guest@127.0.0.1:5672/%2f
    DTEE_REDIS_URL  default redis://127.0.0.1:6379
    DTEE_NAMESPACE  required for live cases
    DTEE_KERNELS    default <repo>/kernels/wasm
    DTEE_BIN        default <repo>/target/debug/dtee (the verification call-out)
    DTEE_TLS_CA_FILE, DTEE_TLS_CERT_FILE, DTEE_TLS_KEY_FILE   TLS files (amqps, rediss)

Run from the repository root: ``python -m unittest discover -s clients/python/tests -v``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))  # the package, when it is not installed

import dtee  # noqa: E402
from dtee import jcs  # noqa: E402
from dtee.keys import StateKey  # noqa: E402
from dtee.verifier import _delegate, ed25519_verify_strict  # noqa: E402

VECTORS = REPO / "schemas" / "vectors"
JOBS = REPO / "clients" / "conformance" / "jobs.json"
SOFTWARE_POLICY = REPO / "deploy" / "policies" / "software-dev.toml"


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


AMQP_URL = env("DTEE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS_URL = env("DTEE_REDIS_URL", "redis://127.0.0.1:6379")
NAMESPACE = env("DTEE_NAMESPACE")
KERNELS = Path(env("DTEE_KERNELS", str(REPO / "kernels" / "wasm")))
DTEE_BIN = env("DTEE_BIN", str(REPO / "target" / "debug" / "dtee"))
TLS = dtee.Tls(env("DTEE_TLS_CA_FILE"), env("DTEE_TLS_CERT_FILE"), env("DTEE_TLS_KEY_FILE"))
TIMEOUT = 60.0


def fresh(label: str) -> str:
    """A nonce no earlier run used."""
    return f"py-conformance {label} {uuid.uuid4()}"


def f32(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# -- jobs.json: one helper call per step -------------------------------------------------------------


def build_case(case: dict) -> dtee.Job:
    """Builds a case of jobs.json with the typed helpers, one call per step."""
    job = dtee.Job(case["kernel"], case["entry"], profile=case.get("profile"))
    for step in case["steps"]:
        ((helper, args),) = step.items()
        if helper == "input_f32":
            job.input_f32(args["name"], args["values"])
        elif helper == "input_bytes":
            job.input_bytes(args["name"], base64.b64decode(args["bytes"], validate=True))
        elif helper == "input_blob":
            job.input_blob(args["name"], args["digest"])
        elif helper == "output":
            job.output(args["name"], args["size"])
        elif helper == "param":
            job.param(args["name"], args["type"], args["value"])
        elif helper == "state":
            job.state(args["name"], args["key"], args["mode"], args["may_be_absent"], args.get("max_size"))
        elif helper == "secret":
            job.secret(args["name"], args["tenant"], args["secret"], args["version"])
        elif helper == "limits":
            job.limits(**args)
        elif helper == "attestation":
            job.attestation(args)
        elif helper == "nonce":
            job.nonce(args)
        else:
            raise AssertionError(f"unknown helper {helper}")
    return job


# -- offline cases -------------------------------------------------------------------------------------


class OfflineConformance(unittest.TestCase):
    """Cases that need no broker."""

    def test_jcs_vectors(self):
        directory = VECTORS / "jcs"
        digests = {}
        for line in (directory / "digests.txt").read_text().splitlines():
            value, _, name = line.partition("  ")
            digests[name] = value
        names = sorted(p.name[: -len(".input.json")] for p in directory.glob("*.input.json"))
        self.assertGreaterEqual(len(names), 12)
        for name in names:
            with self.subTest(vector=name):
                value = jcs.parse_strict((directory / f"{name}.input.json").read_bytes())
                canonical = jcs.canonicalize(value)
                expected = (directory / f"{name}.canonical.json").read_bytes()
                self.assertEqual(canonical, expected)
                self.assertEqual(jcs.digest(canonical), digests[name])
                self.assertEqual(jcs.canonicalize(jcs.parse_strict(expected)), expected)
        invalid = sorted((directory / "invalid").iterdir())
        self.assertGreaterEqual(len(invalid), 10)
        for path in invalid:
            with self.subTest(invalid=path.name):
                with self.assertRaises(dtee.CanonicalizationError):
                    jcs.canonicalize(jcs.parse_strict(path.read_bytes()))

    def test_job_ids(self):
        cases = json.loads(JOBS.read_bytes())["cases"]
        self.assertGreaterEqual(len(cases), 4)
        for case in cases:
            with self.subTest(job=case["name"]):
                self.assertTrue(case["canonical"] and case["job_id"],
                                "jobs.json is not blessed (DTEE_BLESS=1 cargo test -p dtee-submitter --test conformance)")
                job = build_case(case)
                canonical = job.canonical()
                self.assertEqual(canonical.decode("utf-8"), case["canonical"])
                self.assertEqual(job.id, case["job_id"])
                self.assertEqual(job.id, jcs.digest(canonical))
                self.assertEqual(jcs.recanonicalize(canonical), canonical)

    def test_state_keys(self):
        vectors = json.loads((VECTORS / "state-keys.json").read_bytes())
        namespace = vectors.get("namespace", "dtee")
        self.assertGreaterEqual(len(vectors["cases"]), 10)
        for case in vectors["cases"]:
            with self.subTest(key=case["key"]):
                if not case["valid"]:
                    with self.assertRaises(dtee.InvalidStateKeyError):
                        StateKey.parse(case["key"])
                    continue
                key = StateKey.parse(case["key"])
                self.assertEqual(key.tenant, case["tenant"])
                self.assertEqual(key.group, case["group"])
                self.assertEqual(key.value_key(namespace), case["value_key"])
                self.assertEqual(key.version_key(namespace), case["version_key"])
                self.assertEqual(str(key), case["key"])

    def test_nulls_refused(self):
        kernel = "sha256:" + "ab" * 32
        base = dtee.Job(kernel, "echo").input_bytes("in", b"x").output("out", 8).limits(fuel=1000).spec
        dtee.job_body(base)  # without null: fine
        mutations = {
            "nonce": lambda s: s.__setitem__("nonce", None),
            "attestation": lambda s: s.__setitem__("attestation", None),
            "limits.fuel": lambda s: s["limits"].__setitem__("fuel", None),
            "buffers[0].blob": lambda s: s["buffers"][0].__setitem__("blob", None),
            "buffers[1].size": lambda s: s["buffers"][1].__setitem__("size", None),
            "kernel.entry": lambda s: s["kernel"].__setitem__("entry", None),
            "params": lambda s: s.__setitem__("params", [None]),
            "the job": lambda s: None,
        }
        for path, mutate in mutations.items():
            with self.subTest(null=path):
                spec = copy.deepcopy(base)
                if path == "the job":
                    spec = None
                else:
                    mutate(spec)
                with self.assertRaises(dtee.InvalidJobError) as raised:
                    dtee.job_body(spec)
                self.assertIn("null", str(raised.exception))
                with self.assertRaises(dtee.CanonicalizationError):
                    dtee.canonicalize_job(spec)
                # Nothing is sent: submit refuses before it touches a connection (this client
                # has none at all).
                offline = dtee.Client.__new__(dtee.Client)
                with self.assertRaises(dtee.InvalidJobError):
                    offline.submit(spec)
                with self.assertRaises(dtee.InvalidJobError):
                    offline.run(spec)
        # JSON text holding null, and the typed helpers given None.
        with self.assertRaises(dtee.InvalidJobError):
            dtee.job_body(json.dumps({**base, "nonce": None}))
        for build in (
            lambda: dtee.Job(kernel, "echo").nonce(None),
            lambda: dtee.Job(kernel, "echo").input_bytes("in", None),
            lambda: dtee.Job(kernel, "echo").input_blob("in", None),
            lambda: dtee.Job(kernel, "echo").attestation(None),
            lambda: dtee.Job(kernel, "echo").param("a", "f32", None),
            lambda: dtee.Job(kernel, None),
            # The wasm profiles: a known name, wasm only, and no fuel for the fast one.
            lambda: dtee.Job(kernel, "echo", profile="turbo"),
            lambda: dtee.Job(kernel, "echo", format="ptx", profile="fast"),
            lambda: dtee.Job(kernel, "echo", profile="fast").limits(fuel=5),
            # Each state key once (a commit checks each binding on its own).
            lambda: dtee.Job(kernel, "echo")
            .state("a", "guest/x", "append_only")
            .state("b", "guest/x", "read_only"),
        ):
            with self.assertRaises(dtee.InvalidJobError):
                build()
        # Limits left out are not written as null: they are absent.
        self.assertEqual(dtee.Job(kernel, "e").limits(fuel=5).spec["limits"], {"fuel": 5})
        # Canonicalizing other JSON keeps null (the `literals` vector).
        self.assertEqual(jcs.canonicalize({"a": None}), b'{"a":null}')

    def test_dsse_vectors(self):
        vectors = json.loads((VECTORS / "ed25519" / "vectors.json").read_bytes())
        cases = vectors["cases"]
        self.assertGreaterEqual(len(cases), 8)
        for case in cases:
            with self.subTest(case=case["name"]):
                why = ed25519_verify_strict(
                    bytes.fromhex(case["public_key"]),
                    bytes.fromhex(case["message"]),
                    bytes.fromhex(case["signature"]),
                )
                if case["valid"]:
                    self.assertIsNone(why, case.get("why"))
                else:
                    self.assertIsNotNone(why, f"accepted: {case.get('why')}")
        # The DSSE layer: PAE as the specification's example gives it.
        self.assertEqual(
            dtee.verifier.pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world",
        )


# -- live cases ------------------------------------------------------------------------------------------


class LiveConformance(unittest.TestCase):
    """Cases against RabbitMQ, Redis and a worker. They fail when any is unreachable."""

    _client: dtee.Client | None = None
    _connect_error: BaseException | None = None
    _saxpy: tuple[dtee.Job, dtee.Result] | None = None

    @classmethod
    def tearDownClass(cls):
        if cls._client is not None:
            cls._client.close()
            cls._client = None

    def client(self) -> dtee.Client:
        cls = type(self)
        if not NAMESPACE:
            self.fail("DTEE_NAMESPACE is not set: live cases need the namespace of a running worker")
        if cls._client is None:
            if cls._connect_error is not None:
                self.fail(f"cannot reach the broker: {cls._connect_error!r}")
            try:
                cls._client = dtee.Client(AMQP_URL, REDIS_URL, NAMESPACE, tls=TLS)
                cls._client.check_topology()
                cls._client.redis.ping()
            except Exception as error:  # noqa: BLE001 - reported as a failure, not a skip
                cls._connect_error = error
                if cls._client is not None:
                    cls._client.close()
                    cls._client = None
                self.fail(f"cannot reach RabbitMQ/Redis/the namespace: {error!r}")
        return cls._client

    def kernel(self, name: str) -> str:
        return self.client().put_file(KERNELS / name)

    def saxpy(self) -> tuple[dtee.Job, dtee.Result]:
        cls = type(self)
        if cls._saxpy is None:
            client = self.client()
            y = client.put_blob(f32([0.5, 0.5, 0.5, 0.5]))
            job = (
                dtee.Job(self.kernel("saxpy.wasm"), "saxpy")
                .input_f32("x", [1, 2, 3, 4])
                .input_blob("y", y)
                .output("out", 16)
                .param("a", "f32", 2)
                .nonce(fresh("saxpy"))
            )
            cls._saxpy = (job, client.run(job, TIMEOUT))
        return cls._saxpy

    def test_saxpy(self):
        job, result = self.saxpy()
        self.assertEqual(result.job_id, job.id)
        self.assertEqual(result.status, "succeeded", result.raw.get("error"))
        self.assertEqual(result.output_f32("out"), [2.5, 4.5, 6.5, 8.5])
        out = result.output("out")
        self.assertEqual(out.size, 16)
        self.assertEqual(out.digest, "sha256:" + hashlib.sha256(out.bytes).hexdigest())

    def test_sha256(self):
        client = self.client()
        data = os.urandom(1 << 20)
        job = (
            dtee.Job(self.kernel("sha256.wasm"), "sha256")
            .input_blob("data", client.put_blob(data))
            .output("digest", 32)
        )
        result = client.run(job, TIMEOUT, check=True)
        self.assertEqual(result.output_bytes("digest"), hashlib.sha256(data).digest())

    def test_dedup(self):
        client = self.client()
        job = dtee.Job(self.kernel("echo.wasm"), "echo").input_bytes("in", b"dedup").output("out", 16)
        job.nonce(fresh("dedup"))
        first = client.run(job, TIMEOUT, check=True)
        second = client.run(job, TIMEOUT, check=True)
        self.assertEqual(second.job_id, first.job_id)
        self.assertIsNotNone(first.execution_id)
        self.assertEqual(second.execution_id, first.execution_id)
        self.assertTrue(second.from_cache)

    def test_state_increments(self):
        client = self.client()
        key = f"{client.user}/py-{uuid.uuid4().hex}/counter"
        kernel = self.kernel("increment.wasm")
        jobs = [
            dtee.Job(kernel, "increment").state("counter", key, "read_write", may_be_absent=True).nonce(fresh(f"inc {i}"))
            for i in range(20)
        ]
        self.assertEqual(len({job.id for job in jobs}), 20)
        results = client.run_many(jobs, TIMEOUT * 2)
        for job, result in zip(jobs, results):
            self.assertEqual(result.job_id, job.id)
            self.assertEqual(result.status, "succeeded", result.raw.get("error"))
        value, version = client.state_get(key)
        self.assertEqual(value, (20).to_bytes(8, "little"))
        self.assertEqual(version, 20)

    def test_failed_code(self):
        client = self.client()
        # kernels/README.md: trap.wasm exports `boom` (clients/conformance/README.md says `trap`).
        job = dtee.Job(self.kernel("trap.wasm"), "boom").nonce(fresh("trap"))
        result = client.run(job, TIMEOUT)
        self.assertEqual(result.status, "failed")
        self.assertEqual(result.error_code, "kernel_trapped")
        with self.assertRaises(dtee.JobFailedError) as raised:
            result.raise_for_status()
        self.assertEqual(raised.exception.code, "kernel_trapped")
        self.assertIs(raised.exception.result, result)
        with self.assertRaises(dtee.JobFailedError) as raised:
            client.run(job, TIMEOUT, check=True)
        self.assertEqual(raised.exception.code, "kernel_trapped")

    def test_wait_after_result(self):
        client = self.client()
        job = dtee.Job(self.kernel("echo.wasm"), "echo").input_bytes("in", b"late").output("out", 8)
        job.nonce(fresh("wait-after"))
        first = client.run(job, TIMEOUT, check=True)
        # A new waiter (another connection and queue), opened after the result was cached.
        with dtee.Client(AMQP_URL, REDIS_URL, NAMESPACE, tls=TLS) as other:
            started = time.monotonic()
            again = other.wait(job.id, timeout=5.0)
            elapsed = time.monotonic() - started
        self.assertLess(elapsed, 2.0)
        self.assertTrue(again.from_cache)
        self.assertEqual(again.raw, first.raw)
        self.assertEqual(again.output_bytes("out"), b"late")

    def test_result_of_another_job_refused(self):
        client = self.client()
        _, genuine = self.saxpy()
        other = dtee.Job(self.kernel("echo.wasm"), "echo").input_bytes("in", b"x").output("out", 8)
        other.nonce(fresh("another"))
        # Whoever can write Redis stores one job's genuine result as another job's.
        key = f"{NAMESPACE}:result:{other.id}"
        client.redis.set(key, genuine.body, ex=60)
        try:
            with self.assertRaises(dtee.MalformedResultError):
                client.cached_result(other.id)
            with self.assertRaises(dtee.MalformedResultError):
                client.wait(other.id, timeout=2.0)
        finally:
            client.redis.delete(key)
        # Published under the other job's routing key, it is not taken as that job's answer.
        waiter = client.waiter
        watch = waiter.watch(other.id, accept_failure=False)
        channel = client._connection.channel()
        channel.basic_publish(
            f"{NAMESPACE}.results", f"{client.user}.{other.id}", genuine.body
        )
        channel.close()
        with self.assertRaises(dtee.WaitTimeoutError):
            waiter.wait([watch], timeout=1.5)

    def test_many_on_one_queue(self):
        client = self.client()
        kernel = self.kernel("echo.wasm")
        tag = uuid.uuid4().hex
        payloads = [f"job {i} {tag}".encode() for i in range(10)]
        jobs = [dtee.Job(kernel, "echo").input_bytes("in", p).output("out", 64) for p in payloads]
        queue = client.waiter.queue
        results = client.run_many(jobs, TIMEOUT, check=True)
        self.assertEqual(client.waiter.queue, queue)  # one queue throughout
        self.assertEqual(len(results), 10)
        for job, payload, result in zip(jobs, payloads, results):
            self.assertEqual(result.job_id, job.id)
            self.assertEqual(result.output_bytes("out"), payload)
        # The waits' bindings are gone; the queue stays for the next wait.
        self.assertEqual(client.waiter._bound, set())

    def test_cancel(self):
        client = self.client()
        job = dtee.Job(self.kernel("echo.wasm"), "echo").input_bytes("in", b"never").output("out", 8)
        job.nonce(fresh("cancel"))
        client.cancel(job.id, ttl_secs=600)
        ttl = client.redis.ttl(f"{NAMESPACE}:revoked:{client.user}:{job.id}")
        self.assertTrue(0 < ttl <= 600, ttl)
        result = client.run(job, TIMEOUT)
        self.assertEqual(result.status, "failed")
        self.assertEqual(result.error_code, "cancelled")

    def test_no_route(self):
        client = self.client()
        job = dtee.Job(self.kernel("echo.wasm"), "echo", target="no-such-target-py").output("out", 8)
        with self.assertRaises(dtee.NoRouteError) as raised:
            client.submit(job)
        self.assertEqual(raised.exception.routing_key, f"{client.user}.no-such-target-py")
        with self.assertRaises(dtee.NoRouteError):
            client.run(job, 5.0)
        # A platform no worker of the namespace serves is not routed either.
        tpm = dtee.Job(self.kernel("echo.wasm"), "echo").output("out", 8).attestation("tpm").nonce(fresh("tpm"))
        with self.assertRaises(dtee.NoRouteError):
            client.submit(tpm)
        # The client still works afterwards.
        self.assertTrue(self.saxpy()[1].succeeded)

    def test_nack_resent_then_refused(self):
        # A quorum queue of this test's own, bound to the tenant's routing key for a target no
        # worker serves, holds one job and refuses publishes beyond: each publish is nacked.
        client = self.client()
        target = f"nack-py-{uuid.uuid4().hex[:8]}"
        queue = f"{NAMESPACE}.test.{target}"
        channel = client._connection.channel()
        channel.queue_declare(
            queue,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"},
        )
        channel.queue_bind(queue, f"{NAMESPACE}.jobs", routing_key=f"{client.user}.{target}")
        echo = self.kernel("echo.wasm")

        def job(label):
            return dtee.Job(echo, "echo", target=target).output("out", 8).nonce(fresh(label))

        try:
            # A quorum queue takes publishes until it is over its limit: fill it until it
            # refuses one. Without resends, the first nack is the answer.
            client.nack_retries = 0
            kept = 0
            while True:
                started = time.monotonic()
                try:
                    client.submit(job(f"fill {kept}"))
                except dtee.BrokerRefusedError:
                    at_once = time.monotonic() - started
                    break
                kept += 1
                self.assertLessEqual(kept, 5, "a queue limited to one job took more than five")
            # The default: two resends, after 0.1 s and 0.4 s, each refused as well.
            client.nack_retries = dtee.client.DEFAULT_NACK_RETRIES
            started = time.monotonic()
            with self.assertRaises(dtee.BrokerRefusedError):
                client.submit(job("refused thrice"))
            after_resends = time.monotonic() - started
            self.assertGreaterEqual(after_resends, 0.5)
            self.assertGreater(after_resends, at_once)
            depth = channel.queue_declare(queue, passive=True).method.message_count
            self.assertEqual(depth, kept, "a refused job was kept")
        finally:
            client.nack_retries = dtee.client.DEFAULT_NACK_RETRIES
            channel.queue_delete(queue)
            channel.close()

    def test_verify(self):
        _, result = self.saxpy()
        verdict = dtee.verify(result, SOFTWARE_POLICY)
        self.assertTrue(verdict.accepted, str(verdict))
        self.assertTrue(dtee.verify(result, {"allow_software": True}).accepted)

        def tampered(change) -> dtee.Result:
            raw = copy.deepcopy(result.raw)
            change(raw)
            return dtee.Result(raw)

        def other_data(raw):
            raw["outputs"][0]["data"] = base64.b64encode(f32([2.5, 4.5, 6.5, 9.5])).decode()

        def other_job(raw):
            raw["job_id"] = "sha256:" + hashlib.sha256(b"another job").hexdigest()

        def flip_signature(raw):
            signature = raw["attestation"]["envelope"]["signatures"][0]
            sig = bytearray(base64.b64decode(signature["sig"]))
            sig[10] ^= 0x01
            signature["sig"] = base64.b64encode(bytes(sig)).decode()

        def extra_evidence_field(raw):
            raw["attestation"]["identity"]["evidence"]["extra"] = 1

        def other_backend(raw):
            raw["execution"]["backend"] = "cuda"

        def device_claimed(raw):
            raw["execution"]["device"] = {"vendor": "nvidia", "name": "NVIDIA H200", "arch": "sm_90",
                                          "driver": "cuda 13000"}

        def re_signed(flag):
            # Signed anew under a fresh key, as anyone can with a software identity, claiming
            # what only hardware gives.
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
            from dtee.verifier import pae

            def change(raw):
                key = Ed25519PrivateKey.generate()
                public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
                envelope = raw["attestation"]["envelope"]
                statement = json.loads(base64.b64decode(envelope["payload"]))
                statement["worker"]["public_key"] = public
                if flag:
                    statement["tcb"][flag] = True
                payload = jcs.canonicalize(statement)
                envelope["payload"] = base64.b64encode(payload).decode()
                envelope["signatures"] = [{
                    "keyid": f"ed25519:{public}",
                    "sig": base64.b64encode(key.sign(pae(envelope["payloadType"], payload))).decode(),
                }]
                raw["attestation"]["identity"]["public_key"] = public
            return change

        with self.subTest(re_signed="honestly"):
            self.assertTrue(dtee.verify(tampered(re_signed(None)), {"allow_software": True}).accepted)
        for flag in ("hardware_rooted", "memory_protected", "gpu_in_tcb"):
            with self.subTest(re_signed=flag):
                verdict = dtee.verify(tampered(re_signed(flag)), {"allow_software": True})
                self.assertEqual([c.name for c in verdict.checks if not c.passed],
                                 ["statement.platform"], str(verdict))

        for label, change, check in (
            ("an extra software evidence field", extra_evidence_field, "software.measurement"),
            ("output data changed", other_data, "result.output_data"),
            ("another job_id", other_job, "result.job_id"),
            ("a signature byte flipped", flip_signature, "envelope.signature"),
            ("another backend named", other_backend, "result.execution"),
            ("a device claimed", device_claimed, "result.execution"),
        ):
            with self.subTest(tampered=label):
                verdict = dtee.verify(tampered(change), SOFTWARE_POLICY)
                self.assertFalse(verdict.accepted, str(verdict))
                self.assertFalse(verdict.check(check).passed, str(verdict))
        with self.subTest(policy="without allow_software"):
            verdict = dtee.verify(result, {})
            self.assertFalse(verdict.accepted)
            self.assertFalse(verdict.check("software.allowed").passed)
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
                handle.write("allow_software = false\n")
            try:
                self.assertFalse(dtee.verify(result, handle.name).accepted)
            finally:
                os.unlink(handle.name)

        # The verification call-out: `dtee verify` agrees, through the same code path that TPM
        # and SEV-SNP evidence take.
        with self.subTest(call_out="dtee verify"):
            self.assertTrue(DTEE_BIN and Path(DTEE_BIN).exists(), f"no dtee binary at {DTEE_BIN}")
            policy = dtee.Policy.load(SOFTWARE_POLICY)
            checks = _delegate(result, policy, "software", int(time.time()), DTEE_BIN)
            self.assertTrue(checks[-1].passed, checks)
            dict_policy = dtee.Policy.load({"allow_software": True, "worker_measurements": []})
            self.assertTrue(_delegate(result, dict_policy, "software", int(time.time()), DTEE_BIN)[-1].passed)
            refused = _delegate(tampered(other_data), policy, "software", int(time.time()), DTEE_BIN)
            self.assertFalse(refused[-1].passed, refused)
            refused = _delegate(result, dtee.Policy.load({}), "software", int(time.time()), DTEE_BIN)
            self.assertFalse(refused[-1].passed, refused)
            # A policy read from a file and changed since is handed over as it is now.
            changed = dtee.Policy.load(SOFTWARE_POLICY)
            self.assertIsNotNone(changed.path)
            changed.allow_software = False
            refused = _delegate(result, changed, "software", int(time.time()), DTEE_BIN)
            self.assertFalse(refused[-1].passed, refused)


if __name__ == "__main__":
    unittest.main()
