"""dtee: the Python client of the dtee job-queue worker pool.

Store WebAssembly kernels and large inputs as blobs in Redis, build content-addressed jobs,
publish them to RabbitMQ, wait for their results without a race, and verify the results'
signed execution attestations. The wire protocol is schemas/PROTOCOL.md; attestation is
schemas/ATTESTATION.md.

>>> import dtee
>>> with dtee.Client("amqp://guest:guest@127.0.0.1:5672/%2f", "redis://127.0.0.1:6379", "dtee") as client:
...     kernel = client.put_file("kernels/wasm/echo.wasm")
...     job = dtee.Job(kernel, "echo").input_bytes("in", b"hello").output("out", 64)
...     result = client.run(job, check=True)
...     result.output_bytes("out")
b'hello'
"""

from .client import Client
from .connect import Tls
from .errors import (
    BrokerError,
    BrokerRefusedError,
    CanonicalizationError,
    DteeError,
    InvalidJobError,
    InvalidStateKeyError,
    JobFailedError,
    MalformedResultError,
    NamespaceNotFoundError,
    NoRouteError,
    PolicyError,
    UnroutableUserError,
    WaitTimeoutError,
)
from .jcs import canonical_digest, canonicalize, canonicalize_job, digest, is_digest, parse_strict
from .job import Job, job_body, validate_spec
from .keys import StateKey
from .result import Output, Result
from .verifier import Check, Policy, Verdict, ed25519_verify_strict, verify
from .waiter import ResultWaiter, Watch

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "BrokerRefusedError",
    "CanonicalizationError",
    "Check",
    "Client",
    "DteeError",
    "InvalidJobError",
    "InvalidStateKeyError",
    "Job",
    "JobFailedError",
    "MalformedResultError",
    "NamespaceNotFoundError",
    "NoRouteError",
    "Output",
    "Policy",
    "PolicyError",
    "Result",
    "ResultWaiter",
    "StateKey",
    "Tls",
    "UnroutableUserError",
    "Verdict",
    "WaitTimeoutError",
    "Watch",
    "canonical_digest",
    "canonicalize",
    "canonicalize_job",
    "digest",
    "ed25519_verify_strict",
    "is_digest",
    "job_body",
    "parse_strict",
    "validate_spec",
    "verify",
]
