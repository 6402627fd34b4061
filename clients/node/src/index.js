// dtee: the Node.js client. See README.md, and schemas/PROTOCOL.md for the wire protocol.

export { Client, amqpUser, DEFAULT_NACK_RETRIES, nackBackoffMs, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL, DEFAULT_NAMESPACE, DEFAULT_TIMEOUT_MS, DEFAULT_CANCEL_TTL_SECS, HEADER_SUBMITTED_AT } from './client.js';
export { amqpUrls, loadTls } from './amqp.js';
export { isClusterUrl, parseClusterUrl } from './redis.js';
export { JobBuilder, job, jobId, prepareJob, jobRoutingKey, f32Bytes, readF32, JOB_SCHEMA } from './job.js';
export { canonicalize, canonicalBytes, parseStrict, isWellFormed, MAX_SAFE_MAGNITUDE } from './jcs.js';
export { digestOf, isDigest } from './digest.js';
export { parseStateKey, isValidTenant, isRoutableTenant, isValidNamespace } from './state.js';
export { verify, loadPolicy, normalizePolicy, EXECUTION_PAYLOAD_TYPE, EXECUTION_SCHEMA } from './verify.js';
export { verifyEd25519Strict, pae } from './ed25519.js';
export { outputBytes } from './result.js';
export {
  DteeError,
  CanonicalError,
  InvalidJobError,
  NoRouteError,
  BrokerRefusedError,
  UnroutableUserError,
  TimeoutError,
  JobFailedError,
  MalformedResultError,
  VerifyError,
} from './errors.js';
