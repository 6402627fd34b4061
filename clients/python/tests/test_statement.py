"""Offline tests of how the verifier reads an execution statement (dtee/verifier.py): a statement
whose fields have the wrong JSON types is malformed, as it is for the Rust verifier (whose parse
fails) and the Node.js verifier. No signature is involved: the statement is parsed after the
signature over it verified, so a worker's key is what such a statement would need."""

from __future__ import annotations

import base64
import copy
import json
import unittest

from dtee.verifier import _Malformed, _parse_statement

DIGEST = "sha256:" + "ab" * 32
STATEMENT = {
    "schema": "dtee.execution/v1",
    "job_id": DIGEST,
    "inputs": [{"name": "x", "digest": DIGEST}],
    "outputs": [{"name": "out", "size": 16, "digest": DIGEST}],
    "status": "succeeded",
    "execution_id": "e1",
    "started_at_unix_ms": 1,
    "finished_at_unix_ms": 2,
    "worker": {
        "worker_id": "w1",
        "public_key": "00" * 32,
        "measurement": DIGEST,
        "platform": "software",
        "evidence_digest": DIGEST,
        "evidence_created_at_unix_ms": 3,
    },
    "tcb": {"hardware_rooted": False, "memory_protected": False, "gpu_in_tcb": False, "backend": "wasm"},
}


def envelope(statement: dict) -> dict:
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    return {"payload": base64.b64encode(payload).decode(), "payloadType": "x", "signatures": []}


class StatementTypes(unittest.TestCase):
    def test_a_well_typed_statement_parses(self):
        self.assertEqual(_parse_statement(envelope(STATEMENT))["execution_id"], "e1")
        with_code = dict(STATEMENT, status="failed", error_code="kernel_trap")
        self.assertEqual(_parse_statement(envelope(with_code))["error_code"], "kernel_trap")
        # null is an absent error code, as serde reads an Option.
        self.assertIsNone(_parse_statement(envelope(dict(STATEMENT, error_code=None)))["error_code"])

    def test_wrong_types_are_malformed(self):
        def at(path, value):
            statement = copy.deepcopy(STATEMENT)
            target = statement
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            return statement

        for label, statement in (
            ("a string timestamp", at(["started_at_unix_ms"], "1")),
            ("a negative timestamp", at(["finished_at_unix_ms"], -1)),
            ("a boolean timestamp", at(["started_at_unix_ms"], True)),
            ("a timestamp past u64", at(["started_at_unix_ms"], 1 << 64)),
            ("a numeric execution id", at(["execution_id"], 7)),
            ("a job id that is no digest", at(["job_id"], "sha256:ABC")),
            ("inputs not a list", at(["inputs"], {})),
            ("a numeric worker id", at(["worker", "worker_id"], 1)),
            ("a measurement that is no digest", at(["worker", "measurement"], "x")),
            ("a string evidence time", at(["worker", "evidence_created_at_unix_ms"], "3")),
            ("a tcb that is no object", at(["tcb"], [])),
            ("a numeric tcb flag", at(["tcb", "hardware_rooted"], 1)),
            ("a tcb without memory_protected", {**STATEMENT, "tcb": {"hardware_rooted": False, "gpu_in_tcb": False,
                                                                     "backend": "wasm"}}),
            ("a numeric backend", at(["tcb", "backend"], 1)),
            ("an output with a string size", at(["outputs"], [{"name": "out", "size": "16", "digest": DIGEST}])),
            ("an output that is no object", at(["outputs"], ["out"])),
            ("a numeric error code", dict(STATEMENT, error_code=3)),
        ):
            with self.subTest(label), self.assertRaises(_Malformed):
                _parse_statement(envelope(statement))


class TpmPolicyKeys(unittest.TestCase):
    """`[tpm] measurement_pcr` is read as the Rust verifier reads it: a PCR index."""

    def test_measurement_pcr_is_a_pcr_index(self):
        from dtee.verifier import Policy, PolicyError

        policy = Policy.load({"tpm": {"allowed_aks": [], "measurement_pcr": 16}})
        self.assertEqual(policy.tpm["measurement_pcr"], 16)
        for bad in ("16", -1, 24, True, 1.5):
            with self.subTest(bad=bad), self.assertRaises(PolicyError):
                Policy.load({"tpm": {"allowed_aks": [], "measurement_pcr": bad}})
        with self.assertRaises(PolicyError):
            Policy.load({"tpm": {"allowed_aks": [], "measurement_pcrs": 16}})


if __name__ == "__main__":
    unittest.main()
