// Building `dtee.job/v1` specs with typed helpers, and their ids (PROTOCOL.md §2, §3).
//
// The builder writes a field only when it was given, exactly as the Rust types serialize
// (schemas/src/job/mod.rs): `buffers`, `params` and `limits` only when not empty,
// `may_be_absent` only when true, `max_size` only when set. Any other spelling is a different
// job id (PROTOCOL.md §2, "What the id covers").

import { canonicalize } from './jcs.js';
import { digestOf, isDigest } from './digest.js';
import { CanonicalError, InvalidJobError } from './errors.js';
import { parseStateKey } from './state.js';

/** The job schema. */
export const JOB_SCHEMA = 'dtee.job/v1';

const NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/;
const TARGET = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const FORMATS = ['wasm', 'ptx', 'hsaco'];
/** How a wasm kernel runs: fuel metered and canonical NaN bits (the default), or the deadline only. */
const PROFILES = ['deterministic', 'fast'];
const MODES = ['read_only', 'write_only', 'read_write', 'append_only'];
const PLATFORMS = ['any', 'tpm', 'snp', 'any-hardware'];
const LIMITS = { timeoutMs: 'timeout_ms', memoryBytes: 'memory_bytes', fuel: 'fuel', outputBytes: 'output_bytes' };
const MAX_F32 = 3.4028234663852886e38;
const RANGES = {
  i32: [-(2 ** 31), 2 ** 31 - 1],
  u32: [0, 2 ** 32 - 1],
  i64: [-(2 ** 53), 2 ** 53],
  u64: [0, 2 ** 53],
};

function refuse(why) {
  throw new InvalidJobError(why);
}

function given(value, what) {
  if (value === null || value === undefined) refuse(`${what} is ${value}: null is not allowed in a job`);
  return value;
}

function checkName(name, what) {
  given(name, `${what} name`);
  if (typeof name !== 'string' || !NAME.test(name)) {
    refuse(`${what} name ${JSON.stringify(name)} must match ^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`);
  }
  return name;
}

function checkCount(value, what) {
  given(value, what);
  if (!Number.isSafeInteger(value) || value < 1) refuse(`${what} must be an integer of at least 1, not ${value}`);
  return value;
}

function toBytes(bytes, what) {
  given(bytes, what);
  if (bytes instanceof ArrayBuffer) return new Uint8Array(bytes);
  if (ArrayBuffer.isView(bytes)) return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return refuse(`${what} must be a Uint8Array, Buffer or ArrayBuffer`);
}

/**
 * Packs numbers as little-endian f32 (each rounded to the nearest f32).
 * @param {Iterable<number>} values
 * @returns {Buffer}
 */
export function f32Bytes(values) {
  const list = Array.from(given(values, 'values'));
  const out = Buffer.alloc(list.length * 4);
  list.forEach((value, i) => {
    if (typeof value !== 'number') refuse(`f32 value ${i} is not a number`);
    out.writeFloatLE(value, i * 4);
  });
  return out;
}

/**
 * Reads little-endian f32 values.
 * @param {Uint8Array} bytes
 * @returns {number[]}
 */
export function readF32(bytes) {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = [];
  for (let i = 0; i + 4 <= buffer.length; i += 4) out.push(buffer.readFloatLE(i));
  return out;
}

/**
 * Builds a `dtee.job/v1` spec with one typed helper per field. Every helper returns the
 * builder, so calls chain. Buffers and parameters keep the order of the calls.
 *
 * @example
 * const spec = job(kernel, 'saxpy')
 *   .inputF32('x', [1, 2, 3, 4]).inputBlob('y', yDigest)
 *   .output('out', 16).param('a', 'f32', 2)
 *   .limits({ timeoutMs: 2000 }).nonce('run-1');
 * spec.id(); // "sha256:…"
 */
export class JobBuilder {
  #kernel;
  #buffers = [];
  #params = [];
  #launch;
  #limits = {};
  #attestation;
  #nonce;

  /**
   * @param {string} kernel the kernel's digest (`sha256:…`), as stored with putBlob
   * @param {string} entry the exported function to call
   * @param {{target?: string, format?: 'wasm'|'ptx'|'hsaco', profile?: 'deterministic'|'fast'}} [options]
   *   default target and format `wasm`; `profile` (wasm only): `deterministic` (what leaving it
   *   out means, though another job id: fuel metered, canonical NaN bit patterns) or `fast` (the
   *   wall-clock deadline only, no fuel limit, NaN bit patterns as the host CPU makes them)
   */
  constructor(kernel, entry, { target = 'wasm', format = 'wasm', profile } = {}) {
    given(kernel, 'kernel digest');
    if (!isDigest(kernel)) refuse(`kernel digest ${JSON.stringify(kernel)} is not sha256: and 64 lowercase hex digits`);
    given(entry, 'kernel entry');
    if (typeof entry !== 'string' || Buffer.byteLength(entry) < 1 || Buffer.byteLength(entry) > 128) {
      refuse('kernel entry must be 1 to 128 bytes');
    }
    given(target, 'kernel target');
    if (typeof target !== 'string' || !TARGET.test(target)) {
      refuse(`kernel target ${JSON.stringify(target)} must match ^[a-z0-9][a-z0-9._-]{0,63}$`);
    }
    if (!FORMATS.includes(format)) refuse(`kernel format ${JSON.stringify(format)} is not one of ${FORMATS.join(', ')}`);
    this.#kernel = { digest: kernel, format, entry, target };
    if (profile !== undefined) {
      if (!PROFILES.includes(profile)) refuse(`kernel profile ${JSON.stringify(profile)} is not one of ${PROFILES.join(', ')}`);
      if (format !== 'wasm') refuse('kernel profile applies to wasm kernels only');
      this.#kernel.profile = profile;
    }
  }

  #addBuffer(buffer) {
    if (this.#buffers.some((b) => b.name === buffer.name)) refuse(`two buffers are named ${JSON.stringify(buffer.name)}`);
    this.#buffers.push(buffer);
    return this;
  }

  /**
   * An input of f32 values, packed little-endian and sent inline (base64).
   * @param {string} name
   * @param {Iterable<number>} values
   */
  inputF32(name, values) {
    return this.inputBytes(name, f32Bytes(values));
  }

  /**
   * An input of raw bytes, sent inline (base64). Use inputBlob for anything large.
   * @param {string} name
   * @param {Uint8Array | ArrayBuffer} bytes
   */
  inputBytes(name, bytes) {
    checkName(name, 'buffer');
    const data = toBytes(bytes, `input ${name}`);
    return this.#addBuffer({ kind: 'input', name, inline: Buffer.from(data).toString('base64') });
  }

  /**
   * An input read from a stored blob.
   * @param {string} name
   * @param {string} digest the blob's digest (Client#putBlob)
   */
  inputBlob(name, digest) {
    checkName(name, 'buffer');
    given(digest, `input ${name} digest`);
    if (!isDigest(digest)) refuse(`input ${name}: ${JSON.stringify(digest)} is not a digest`);
    return this.#addBuffer({ kind: 'input', name, blob: digest });
  }

  /**
   * An output of at most `size` bytes.
   * @param {string} name
   * @param {number} size
   */
  output(name, size) {
    checkName(name, 'buffer');
    return this.#addBuffer({ kind: 'output', name, size: checkCount(size, `output ${name} size`) });
  }

  /**
   * A scalar parameter.
   * @param {string} name
   * @param {'i32'|'u32'|'i64'|'u64'|'f32'|'f64'} type
   * @param {number} value
   */
  param(name, type, value) {
    checkName(name, 'param');
    given(type, `param ${name} type`);
    given(value, `param ${name} value`);
    if (typeof value !== 'number' || !Number.isFinite(value)) refuse(`param ${name}: the value must be a finite number`);
    if (type === 'f32') {
      if (Math.abs(value) > MAX_F32) refuse(`param ${name}: ${value} is beyond the largest f32`);
    } else if (type in RANGES) {
      const [low, high] = RANGES[type];
      if (!Number.isInteger(value) || value < low || value > high) refuse(`param ${name}: ${value} does not fit ${type}`);
    } else if (type !== 'f64') {
      refuse(`param ${name}: unknown type ${JSON.stringify(type)} (i32, u32, i64, u64, f32, f64)`);
    }
    if (this.#params.some((p) => p.name === name)) refuse(`two params are named ${JSON.stringify(name)}`);
    this.#params.push({ name, type, value });
    return this;
  }

  /**
   * A state binding (PROTOCOL.md §3, "State buffers").
   * @param {string} name the buffer name the kernel uses
   * @param {string} key `<tenant>/<path>`; the tenant must be the submitting AMQP user
   * @param {'read_only'|'write_only'|'read_write'|'append_only'} mode
   * @param {{mayBeAbsent?: boolean, maxSize?: number}} [options] mayBeAbsent default false
   */
  state(name, key, mode, { mayBeAbsent = false, maxSize } = {}) {
    checkName(name, 'buffer');
    given(key, `state ${name} key`);
    parseStateKey(key);
    if (this.#buffers.some((b) => b.kind === 'state' && b.key === key)) {
      refuse(`state key ${JSON.stringify(key)} is bound twice: bind each key once`);
    }
    given(mode, `state ${name} mode`);
    if (!MODES.includes(mode)) refuse(`state ${name}: unknown mode ${JSON.stringify(mode)} (${MODES.join(', ')})`);
    given(mayBeAbsent, `state ${name} mayBeAbsent`);
    if (typeof mayBeAbsent !== 'boolean') refuse(`state ${name}: mayBeAbsent must be a boolean`);
    if (maxSize === null) refuse(`state ${name} maxSize is null: null is not allowed in a job`);
    const buffer = { kind: 'state', name, key, mode };
    if (mayBeAbsent) buffer.may_be_absent = true;
    if (maxSize !== undefined) buffer.max_size = checkCount(maxSize, `state ${name} maxSize`);
    return this.#addBuffer(buffer);
  }

  /**
   * A secret buffer (PROTOCOL.md §12): `tenant`'s secret `secret` at `version`, released by the
   * secret keeper to the worker for this job only, read by the kernel as the input `name`.
   * @param {string} name the buffer name the kernel uses
   * @param {string} tenant the secret's owner: the submitting AMQP user
   * @param {string} secret the secret's name (1 to 128 of A-Z a-z 0-9 _ . -, not starting with .)
   * @param {number} version from 1
   */
  secret(name, tenant, secret, version) {
    checkName(name, 'buffer');
    given(secret, `secret ${name} name`);
    if (typeof secret !== 'string' || !/^(?!\.)[A-Za-z0-9_.-]{1,128}$/.test(secret)) refuse(`secret ${name}: ${JSON.stringify(secret)} is not a secret name`);
    parseStateKey(`${tenant}/x`); // the tenant rule
    return this.#addBuffer({ kind: 'secret', name, secret: `${tenant}/${secret}`, version: checkCount(version, `secret ${name} version`) });
  }

  /**
   * Resource limits; fields left out take the worker's defaults. Later calls override the
   * fields they give and keep the others.
   * @param {{timeoutMs?: number, memoryBytes?: number, fuel?: number, outputBytes?: number}} limits
   */
  limits(limits) {
    given(limits, 'limits');
    for (const [field, value] of Object.entries(limits)) {
      const wire = LIMITS[field];
      if (!wire) refuse(`unknown limit ${JSON.stringify(field)} (${Object.keys(LIMITS).join(', ')})`);
      if (value === undefined) continue;
      if (wire === 'fuel' && this.#kernel.profile === 'fast') refuse('limits.fuel: the fast profile meters no fuel');
      this.#limits[wire] = checkCount(value, `limit ${field}`);
    }
    return this;
  }

  /**
   * GPU launch geometry (required for `ptx` and `hsaco`, refused for `wasm`).
   * @param {{grid: number[], block: number[], sharedMemBytes?: number}} launch
   */
  launch({ grid, block, sharedMemBytes } = {}) {
    const three = (value, what) => {
      given(value, what);
      if (!Array.isArray(value) || value.length !== 3) refuse(`launch ${what} must be three integers`);
      return value.map((n) => checkCount(n, `launch ${what}`));
    };
    const launch = { grid: three(grid, 'grid'), block: three(block, 'block') };
    if (sharedMemBytes === null) refuse('launch sharedMemBytes is null: null is not allowed in a job');
    if (sharedMemBytes !== undefined) {
      if (!Number.isSafeInteger(sharedMemBytes) || sharedMemBytes < 0) refuse('launch sharedMemBytes must be an integer of at least 0');
      launch.shared_mem_bytes = sharedMemBytes;
    }
    this.#launch = launch;
    return this;
  }

  /**
   * What must run the job (PROTOCOL.md §3, "Attestation requirement"); it also picks the routing key.
   * @param {'any'|'tpm'|'snp'|'any-hardware'} platform
   */
  attestation(platform) {
    given(platform, 'attestation platform');
    if (!PLATFORMS.includes(platform)) refuse(`attestation platform ${JSON.stringify(platform)} is not one of ${PLATFORMS.join(', ')}`);
    this.#attestation = { platform };
    return this;
  }

  /**
   * Free text (at most 256 bytes of UTF-8) that makes otherwise identical work a new job.
   * @param {string} text
   */
  nonce(text) {
    given(text, 'nonce');
    if (typeof text !== 'string') refuse('nonce must be a string');
    if (Buffer.byteLength(text, 'utf8') > 256) refuse('nonce must be at most 256 bytes of UTF-8');
    this.#nonce = text;
    return this;
  }

  /**
   * The spec as a plain object, with the wire's field names.
   * @returns {object}
   */
  toSpec() {
    const spec = { schema: JOB_SCHEMA, kernel: { ...this.#kernel } };
    if (this.#buffers.length > 0) spec.buffers = this.#buffers.map((b) => ({ ...b }));
    if (this.#params.length > 0) spec.params = this.#params.map((p) => ({ ...p }));
    if (this.#launch !== undefined) spec.launch = structuredClone(this.#launch);
    if (Object.keys(this.#limits).length > 0) spec.limits = { ...this.#limits };
    if (this.#attestation !== undefined) spec.attestation = { ...this.#attestation };
    if (this.#nonce !== undefined) spec.nonce = this.#nonce;
    return spec;
  }

  /** The canonical JSON text of the spec: what is published. */
  canonical() {
    return canonicalize(this.toSpec(), { refuseNull: true });
  }

  /** The job id: `sha256:` + hex(sha256(canonical bytes)). */
  id() {
    return digestOf(Buffer.from(this.canonical(), 'utf8'));
  }
}

/**
 * Starts a job for `kernel` and `entry` (target and format `wasm` unless given).
 * @param {string} kernel
 * @param {string} entry
 * @param {{target?: string, format?: 'wasm'|'ptx'|'hsaco'}} [options]
 * @returns {JobBuilder}
 */
export function job(kernel, entry, options) {
  return new JobBuilder(kernel, entry, options);
}

/**
 * A job ready to publish: its spec, canonical bytes and id.
 * @typedef {object} PreparedJob
 * @property {object} spec
 * @property {Buffer} body the canonical bytes
 * @property {string} jobId
 * @property {string} routingKey the job routing key: the target, with the platform suffix
 */

/**
 * Canonicalizes a job (a JobBuilder or a plain spec object) for publishing. Refuses `null`
 * anywhere, and a spec without a schema, a kernel target or with an unknown platform; the
 * worker checks the rest (an invalid job is answered `invalid_job`).
 * @param {JobBuilder | object} jobOrSpec
 * @returns {PreparedJob}
 */
export function prepareJob(jobOrSpec) {
  const spec = jobOrSpec instanceof JobBuilder ? jobOrSpec.toSpec() : jobOrSpec;
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) refuse('a job is a JSON object');
  let text;
  try {
    text = canonicalize(spec, { refuseNull: true });
  } catch (error) {
    if (error instanceof CanonicalError) throw new InvalidJobError(`the job has no canonical form: ${error.message}`, { cause: error });
    throw error;
  }
  if (spec.schema !== JOB_SCHEMA) refuse(`schema must be ${JSON.stringify(JOB_SCHEMA)}`);
  const target = spec.kernel?.target;
  if (typeof target !== 'string' || !TARGET.test(target)) refuse('kernel.target must match ^[a-z0-9][a-z0-9._-]{0,63}$');
  const platform = spec.attestation?.platform ?? 'any';
  if (!PLATFORMS.includes(platform)) refuse(`attestation platform ${JSON.stringify(platform)} is not one of ${PLATFORMS.join(', ')}`);
  const body = Buffer.from(text, 'utf8');
  return { spec, body, jobId: digestOf(body), routingKey: jobRoutingKey(spec) };
}

/**
 * The job routing key of a spec: its target, and `.<platform>` unless the platform is `any`.
 * @param {object} spec
 * @returns {string}
 */
export function jobRoutingKey(spec) {
  const platform = spec.attestation?.platform ?? 'any';
  return platform === 'any' ? spec.kernel.target : `${spec.kernel.target}.${platform}`;
}

/**
 * The id of a job (a JobBuilder or a plain spec).
 * @param {JobBuilder | object} jobOrSpec
 * @returns {string}
 */
export function jobId(jobOrSpec) {
  return prepareJob(jobOrSpec).jobId;
}
