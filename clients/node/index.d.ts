// Type declarations of the dtee Node.js client (hand-written; the package has no build step).

/// <reference types="node" />

// ---------------------------------------------------------------------------------------------
// Wire types (schemas/PROTOCOL.md §3, §6; schemas/ATTESTATION.md)
// ---------------------------------------------------------------------------------------------

/** `sha256:` followed by 64 lowercase hex digits. */
export type Digest = string;

export type KernelFormat = 'wasm' | 'ptx' | 'hsaco';
export type ScalarType = 'i32' | 'u32' | 'i64' | 'u64' | 'f32' | 'f64';
export type AccessMode = 'read_only' | 'write_only' | 'read_write' | 'append_only';
export type PlatformRequirement = 'any' | 'tpm' | 'snp' | 'any-hardware';

export type JobBuffer =
  | { kind: 'input'; name: string; inline: string }
  | { kind: 'input'; name: string; blob: Digest }
  | { kind: 'output'; name: string; size: number }
  | { kind: 'state'; name: string; key: string; mode: AccessMode; may_be_absent?: true; max_size?: number };

/** A `dtee.job/v1` spec, with the wire's field names. */
export interface JobSpec {
  schema: 'dtee.job/v1';
  kernel: { digest: Digest; format: KernelFormat; entry: string; target: string };
  buffers?: JobBuffer[];
  params?: Array<{ name: string; type: ScalarType; value: number }>;
  launch?: { grid: [number, number, number]; block: [number, number, number]; shared_mem_bytes?: number };
  limits?: { timeout_ms?: number; memory_bytes?: number; fuel?: number; output_bytes?: number };
  attestation?: { platform: PlatformRequirement };
  nonce?: string;
}

export interface OutputData {
  name: string;
  /** Bytes written. */
  size: number;
  digest: Digest;
  /** Standard base64. */
  data: string;
}

export interface StateReport {
  read: Array<{ name: string; key: string; version: number; digest: Digest }>;
  written: Array<{ name: string; key: string; version: number; digest: Digest }>;
}

export interface DsseEnvelope {
  payload: string;
  payloadType: string;
  signatures: Array<{ keyid: string; sig: string }>;
}

export interface WorkerIdentity {
  worker_id: string;
  public_key: string;
  measurement: Digest;
  evidence_created_at_unix_ms: number;
  evidence: { platform: 'software' | 'tpm' | 'snp'; [field: string]: unknown };
}

/** A `dtee.result/v1` result. Unknown fields may appear: ignore them. */
export interface JobResult {
  schema: 'dtee.result/v1';
  job_id: Digest;
  /** `succeeded` or `failed`; treat anything else as a failure. */
  status: 'succeeded' | 'failed' | string;
  /** Present exactly when `failed`. Branch on `code`; `message` is for people. */
  error?: { code: string; message: string };
  outputs: OutputData[];
  state?: StateReport;
  limits?: { timeout_ms: number; memory_bytes: number; fuel: number; output_bytes: number };
  resources?: { fuel_consumed: number; peak_memory_bytes: number; wall_time_us: number; output_bytes: number };
  execution?: {
    execution_id: string;
    worker_id: string;
    backend: string;
    started_at_unix_ms: number;
    finished_at_unix_ms: number;
    attempts: number;
    [field: string]: unknown;
  };
  attestation?: { envelope: DsseEnvelope; identity: WorkerIdentity };
  [field: string]: unknown;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** The base class of every error this package throws. */
export class DteeError extends Error {}
/** JSON the strict parser refuses, or a value without a canonical form. */
export class CanonicalError extends DteeError {}
/** A job refused before anything was sent (including `null` anywhere in it). */
export class InvalidJobError extends DteeError {}
/** No queue serves the job's routing key: the broker returned it; it was not accepted. */
export class NoRouteError extends DteeError {
  routingKey: string;
  namespace: string;
}
/** The broker refused the job (nack). Publish it again later. */
export class BrokerRefusedError extends DteeError {
  jobId: string;
}
/** The AMQP user name cannot prefix a routing key. */
export class UnroutableUserError extends DteeError {
  user: string;
}
/** No result arrived in time. */
export class TimeoutError extends DteeError {
  jobId: string;
  timeoutMs: number;
}
/** The result says `failed`. */
export class JobFailedError extends DteeError {
  /** `error.code` of the result, e.g. `kernel_trapped`. */
  code: string;
  /** `error.message` of the result (not stable, not signed). */
  errorMessage: string;
  result: JobResult;
}
/** A result that is not `dtee.result/v1` JSON. */
export class MalformedResultError extends DteeError {}
/** A policy that cannot be read, or `dtee verify` that cannot be run. */
export class VerifyError extends DteeError {}

// ---------------------------------------------------------------------------------------------
// Canonical JSON and digests
// ---------------------------------------------------------------------------------------------

export const MAX_SAFE_MAGNITUDE: number;

/** Strict JSON parsing (see README: duplicates, lone surrogates, BOM, big integers are refused). */
export function parseStrict(input: Uint8Array | ArrayBuffer | string): unknown;
/** RFC 8785 canonical JSON text. `refuseNull` refuses `null` anywhere (used for jobs). */
export function canonicalize(value: unknown, options?: { refuseNull?: boolean }): string;
/** RFC 8785 canonical JSON as UTF-8 bytes. */
export function canonicalBytes(value: unknown, options?: { refuseNull?: boolean }): Buffer;
/** Whether a string has no lone surrogate. */
export function isWellFormed(text: string): boolean;
/** `sha256:` + lowercase hex of the SHA-256 of the bytes (a string is hashed as UTF-8). */
export function digestOf(bytes: Uint8Array | ArrayBuffer | string): Digest;
export function isDigest(text: unknown): boolean;

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

export const JOB_SCHEMA: 'dtee.job/v1';

export interface StateOptions {
  /** Default false; written only when true. */
  mayBeAbsent?: boolean;
  /** Written only when given. */
  maxSize?: number;
}

export interface Limits {
  timeoutMs?: number;
  memoryBytes?: number;
  fuel?: number;
  outputBytes?: number;
}

/** Builds a job with one typed helper per field; buffers and params keep call order. */
export class JobBuilder {
  constructor(kernel: Digest, entry: string, options?: { target?: string; format?: KernelFormat });
  inputF32(name: string, values: Iterable<number>): this;
  inputBytes(name: string, bytes: Uint8Array | ArrayBuffer): this;
  inputBlob(name: string, digest: Digest): this;
  output(name: string, size: number): this;
  param(name: string, type: ScalarType, value: number): this;
  state(name: string, key: string, mode: AccessMode, options?: StateOptions): this;
  /** A secret buffer (PROTOCOL.md §12): `tenant`'s secret at `version`, read by the kernel as the input `name`. */
  secret(name: string, tenant: string, secret: string, version: number): this;
  /** Later calls override the fields they give. */
  limits(limits: Limits): this;
  launch(launch: { grid: number[]; block: number[]; sharedMemBytes?: number }): this;
  attestation(platform: PlatformRequirement): this;
  nonce(text: string): this;
  toSpec(): JobSpec;
  /** The canonical JSON text that is published. */
  canonical(): string;
  /** `sha256:` + hex(sha256(canonical bytes)). */
  id(): Digest;
}

/** Starts a job (target and format `wasm` unless given). */
export function job(kernel: Digest, entry: string, options?: { target?: string; format?: KernelFormat }): JobBuilder;

export interface PreparedJob {
  spec: JobSpec;
  body: Buffer;
  jobId: Digest;
  /** The job routing key: target, plus `.<platform>` unless `any`. */
  routingKey: string;
}

export function prepareJob(jobOrSpec: JobBuilder | JobSpec | object): PreparedJob;
export function jobId(jobOrSpec: JobBuilder | JobSpec | object): Digest;
export function jobRoutingKey(spec: JobSpec): string;
/** Little-endian f32 bytes. */
export function f32Bytes(values: Iterable<number>): Buffer;
/** Reads little-endian f32 values. */
export function readF32(bytes: Uint8Array): number[];
/** The decoded bytes of a result's output, or undefined. */
export function outputBytes(result: JobResult, name: string): Buffer | undefined;

// ---------------------------------------------------------------------------------------------
// State keys
// ---------------------------------------------------------------------------------------------

export interface StateKey {
  key: string;
  tenant: string;
  path: string;
  group: string | null;
  hashTag: string;
  valueKey(namespace: string): string;
  versionKey(namespace: string): string;
}

export function parseStateKey(key: string): StateKey;
export function isValidTenant(tenant: string): boolean;
export function isRoutableTenant(tenant: string): boolean;
export function isValidNamespace(name: string): boolean;

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

export const DEFAULT_AMQP_URL: string;
export const DEFAULT_REDIS_URL: string;
export const DEFAULT_NAMESPACE: string;
export const DEFAULT_TIMEOUT_MS: number;
export const DEFAULT_CANCEL_TTL_SECS: number;
/** How many times a client publishes a nacked job again by default. */
export const DEFAULT_NACK_RETRIES: number;
/** The pause in ms before the `attempt`-th resend of a nacked job (100, 400, 1600, ..., at most 5000). */
export function nackBackoffMs(attempt: number): number;
export const HEADER_SUBMITTED_AT: string;

/** The user name of an AMQP URL, `guest` when it has none. */
export function amqpUser(url: string): string;

/** The URLs of an AMQP setting (a comma-separated string or an array); throws on a bad one. */
export function amqpUrls(setting: string | string[]): string[];

/** PEM files for amqps and rediss. A client certificate needs its key. */
export interface TlsFiles {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
}

/** Reads TLS files: `{ca, cert, key}`, absent where no file is named. */
export function loadTls(files?: TlsFiles): { ca?: Buffer; cert?: Buffer; key?: Buffer };

/** Whether a Redis URL asks for Redis Cluster (`redis+cluster://`, `rediss+cluster://`). */
export function isClusterUrl(url: string): boolean;

/** A cluster URL's seed nodes (port 6379 when absent), credentials and TLS. */
export function parseClusterUrl(url: string): {
  nodes: { host: string; port: number }[];
  username?: string;
  password?: string;
  tls: boolean;
};

export interface ConnectOptions {
  /**
   * Default `amqp://guest:guest@127.0.0.1:5672/%2f`. Its user name is the jobs' tenant. Several
   * nodes of a RabbitMQ cluster (comma-separated, or an array, all with the same user): the first
   * that answers is used.
   */
  amqpUrl?: string | string[];
  /**
   * Default `redis://127.0.0.1:6379`; must be the primary. `redis+cluster://` or
   * `rediss+cluster://user:password@host:port,host:port` selects Redis Cluster (reads go to
   * primaries).
   */
  redisUrl?: string;
  /** TLS files for `amqps://` and `rediss://`; host names are verified. */
  tls?: TlsFiles;
  /** Default `dtee`. */
  namespace?: string;
  /** Default 10000. */
  connectTimeoutMs?: number;
}

export interface WaitOptions {
  /** Default 60000. */
  timeoutMs?: number;
  /** Default true: reject with JobFailedError when the result says `failed`. */
  throwOnFailure?: boolean;
}

export class Client {
  private constructor();
  /** Connects to RabbitMQ (one connection) and Redis. */
  static connect(options?: ConnectOptions): Promise<Client>;
  readonly namespace: string;
  /** The AMQP user name: the tenant of the jobs this client publishes. */
  readonly user: string;
  /** Resends of a nacked job before BrokerRefusedError (default DEFAULT_NACK_RETRIES; 0: none). */
  nackRetries: number;
  /** Stores bytes under their digest (SET NX) and returns the digest. */
  putBlob(bytes: Uint8Array | ArrayBuffer): Promise<Digest>;
  /** Publishes (mandatory, confirmed) without waiting; returns the job id. */
  submit(job: JobBuilder | JobSpec | object): Promise<Digest>;
  /** Bind, read the result key, publish if needed, wait. */
  run(job: JobBuilder | JobSpec | object, options?: WaitOptions): Promise<JobResult>;
  /** Runs jobs concurrently on one queue; failed results are returned, not thrown. */
  runMany(jobs: Array<JobBuilder | JobSpec | object>, options?: { timeoutMs?: number }): Promise<JobResult[]>;
  /** Waits for a job published elsewhere (bind, MGET result and failure keys, wait). */
  wait(jobId: Digest, options?: WaitOptions): Promise<JobResult>;
  /** SET `<ns>:revoked:<user>:<job id>` 1 EX ttlSecs (default 604800). */
  cancel(jobId: Digest, ttlSecs?: number): Promise<void>;
  /** The cached success or final failure, or null. */
  cachedResult(jobId: Digest): Promise<JobResult | null>;
  /** A state value and its version (0 when absent). */
  stateGet(key: string): Promise<{ value: Buffer | null; version: number }>;
  /** Writes a state value and bumps its version atomically; returns the new version. */
  statePut(key: string, bytes: Uint8Array): Promise<number>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Verification (schemas/ATTESTATION.md §9)
// ---------------------------------------------------------------------------------------------

export const EXECUTION_PAYLOAD_TYPE: 'application/vnd.dtee.execution+json';
export const EXECUTION_SCHEMA: 'dtee.execution/v1';

export interface Policy {
  allow_software?: boolean;
  worker_measurements?: Digest[];
  max_evidence_age_secs?: number;
  tpm?: { allowed_aks: string[]; pcrs?: Array<{ index: number; value: string }>; measurement_pcr?: number };
  snp?: {
    allowed_measurements?: string[];
    vmpl?: number;
    allow_debug?: boolean;
    allow_migration_agent?: boolean;
    min_report_version?: number;
    min_tcb?: { bootloader: number; tee: number; snp: number; microcode: number; fmc?: number };
    products?: Array<'milan' | 'genoa' | 'turin'>;
  };
}

export interface Check {
  name: string;
  /** True also for a skipped check. */
  passed: boolean;
  skipped?: boolean;
  why?: string;
}

export interface Verdict {
  /** No check failed. */
  accepted: boolean;
  checks: Check[];
  /** Whether `dtee verify` was run. */
  delegated: boolean;
}

export interface VerifyOptions {
  /** Verification time, Unix seconds (default now). */
  at?: number;
  /** The `dtee` binary for TPM and SNP evidence (default `$DTEE_BIN`, else `dtee` on the PATH). */
  dteeBin?: string;
  /** `always`: also run `dtee verify` for software evidence, as the check `dtee.verify`. */
  delegate?: 'auto' | 'always';
}

/** Verifies a result against a policy object or a TOML policy file. */
export function verify(result: JobResult | string | Uint8Array, policy: Policy | string, options?: VerifyOptions): Promise<Verdict>;
/** Reads a TOML policy file. */
export function loadPolicy(path: string): Promise<Required<Pick<Policy, 'allow_software' | 'worker_measurements'>> & Policy>;
/** Checks a policy object (unknown keys refused) and fills in defaults. */
export function normalizePolicy(policy: Policy, where?: string): Required<Pick<Policy, 'allow_software' | 'worker_measurements'>> & Policy;
/** Strict Ed25519 verification (ATTESTATION.md §5). */
export function verifyEd25519Strict(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): { ok: true } | { ok: false; why: string };
/** DSSE pre-authentication encoding. */
export function pae(payloadType: string, payload: Uint8Array): Buffer;
