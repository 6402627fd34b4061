// Verifying a result's attestation against a policy (ATTESTATION.md §5, §6, §9).
//
// Done here, natively: the DSSE envelope and its strict Ed25519 signature, the execution
// statement and every check that ties it to the result, the policy's worker measurements and
// evidence age, and software evidence. TPM quotes and SEV-SNP reports (certificate chains to
// pinned AMD roots, quote structures) are delegated to the `dtee verify` binary, which runs the
// same library as the Rust verifier.

import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { verifyEd25519Strict, pae } from './ed25519.js';
import { canonicalBytes, parseStrict } from './jcs.js';
import { digestOf, isDigest } from './digest.js';
import { CanonicalError, MalformedResultError, VerifyError } from './errors.js';
import { parseToml, writeToml } from './toml.js';

/** The DSSE payload type of execution statements. */
export const EXECUTION_PAYLOAD_TYPE = 'application/vnd.dtee.execution+json';
/** The schema of execution statements. */
export const EXECUTION_SCHEMA = 'dtee.execution/v1';

const POLICY_KEYS = ['allow_software', 'worker_measurements', 'max_evidence_age_secs', 'tpm', 'snp'];
const TPM_KEYS = ['allowed_aks', 'pcrs', 'measurement_pcr'];
const SNP_KEYS = ['allowed_measurements', 'vmpl', 'allow_debug', 'allow_migration_agent', 'min_report_version', 'min_tcb', 'products'];

/**
 * Checks a policy object and fills in its defaults; unknown keys are refused, as `dtee verify`
 * refuses them, so that a misspelled key is an error and not a weaker policy.
 * @param {object} policy
 * @param {string} [where]
 * @returns {object}
 */
export function normalizePolicy(policy, where = 'policy') {
  const fail = (why) => {
    throw new VerifyError(`${where}: ${why}`);
  };
  if (!policy || typeof policy !== 'object' || Array.isArray(policy)) fail('a policy is an object');
  const unknown = (table, known, name) => {
    for (const key of Object.keys(table)) if (!known.includes(key)) fail(`unknown key ${JSON.stringify(key)}${name ? ` in [${name}]` : ''}`);
  };
  unknown(policy, POLICY_KEYS);
  const out = {
    allow_software: policy.allow_software ?? false,
    worker_measurements: policy.worker_measurements ?? [],
  };
  if (typeof out.allow_software !== 'boolean') fail('allow_software must be true or false');
  if (!Array.isArray(out.worker_measurements) || !out.worker_measurements.every(isDigest)) {
    fail('worker_measurements must be a list of digests (sha256: and 64 lowercase hex digits)');
  }
  if (policy.max_evidence_age_secs !== undefined && policy.max_evidence_age_secs !== null) {
    if (!Number.isSafeInteger(policy.max_evidence_age_secs) || policy.max_evidence_age_secs < 0) {
      fail('max_evidence_age_secs must be a whole number of seconds');
    }
    out.max_evidence_age_secs = policy.max_evidence_age_secs;
  }
  for (const [name, known] of [['tpm', TPM_KEYS], ['snp', SNP_KEYS]]) {
    const table = policy[name];
    if (table === undefined || table === null) continue;
    if (typeof table !== 'object' || Array.isArray(table)) fail(`[${name}] must be a table`);
    unknown(table, known, name);
    out[name] = structuredClone(table);
  }
  if (out.tpm && !Array.isArray(out.tpm.allowed_aks)) fail('[tpm] needs allowed_aks, a list of AK fingerprints');
  const pcr = out.tpm?.measurement_pcr;
  if (pcr !== undefined && pcr !== null && (!Number.isInteger(pcr) || pcr < 0 || pcr > 23)) {
    fail('[tpm] measurement_pcr must be a PCR index, 0 to 23');
  }
  return out;
}

/**
 * Reads a policy file (TOML, as `dtee verify --policy` takes).
 * @param {string} path
 * @returns {Promise<object>} the normalized policy
 */
export async function loadPolicy(path) {
  let text;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new VerifyError(`cannot read policy ${path}: ${error.message}`, { cause: error });
  }
  return normalizePolicy(parseToml(text, path), path);
}

/**
 * One check of a verdict.
 * @typedef {object} Check
 * @property {string} name e.g. `envelope.signature`
 * @property {boolean} passed true also for a skipped check
 * @property {boolean} [skipped] the check did not apply
 * @property {string} [why] why it failed or was skipped
 */

const pass = (name) => ({ name, passed: true });
const fail = (name, why) => ({ name, passed: false, why });
const skip = (name, why) => ({ name, passed: true, skipped: true, why });
const check = (name, ok, why) => (ok ? pass(name) : fail(name, why()));

// Standard base64 with padding, decoded only when it is in canonical form (as Rust's STANDARD
// engine requires); null otherwise.
function decodeBase64(text) {
  if (typeof text !== 'string') return null;
  const bytes = Buffer.from(text, 'base64');
  return bytes.toString('base64') === text ? bytes : null;
}

// Equality of two JSON values (absent = undefined), by their canonical form.
function sameJson(a, b) {
  if (a === undefined || b === undefined) return a === b;
  try {
    return canonicalBytes(a).equals(canonicalBytes(b));
  } catch {
    return false;
  }
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

// A record as the Rust verifier reads it (serde): the required fields, the defaulted ones with
// their defaults, nothing else; absent and null are both "none". Throws on a missing field.
function pick(value, required, defaults = {}) {
  if (!isObject(value)) throw new Error('not an object');
  const out = {};
  for (const key of required) {
    if (!(key in value)) throw new Error(`a field ${key} is missing`);
    out[key] = value[key];
  }
  for (const [key, fallback] of Object.entries(defaults)) out[key] = value[key] ?? fallback;
  return out;
}
const BINDING = ['name', 'key', 'version', 'digest'];
const GPU_RESOURCES = { device_memory_bytes: 0, kernel_time_us: 0, copied_bytes: 0, copy_time_us: 0 };
const records = {
  state: (value) => {
    if (value === undefined || value === null) return null;
    const report = pick(value, [], { read: [], written: [] });
    return { read: report.read.map((r) => pick(r, BINDING)), written: report.written.map((w) => pick(w, BINDING)) };
  },
  limits: (value) => (value === undefined || value === null ? null : pick(value, ['timeout_ms', 'memory_bytes', 'fuel', 'output_bytes'])),
  resources: (value) =>
    value === undefined || value === null ? null : pick(value, ['fuel_consumed', 'peak_memory_bytes', 'wall_time_us', 'output_bytes'], GPU_RESOURCES),
};

// A GPU device record as the Rust verifier reads it (absent and null are none; the four named
// fields and an optional ordinal, no other field); throws on anything else.
const DEVICE = ['vendor', 'name', 'arch', 'driver'];
function deviceRecord(value) {
  if (value === undefined || value === null) return null;
  if (!isObject(value) || Object.keys(value).some((key) => !DEVICE.includes(key) && key !== 'ordinal')) throw new Error('not a GPU device record');
  return pick(value, DEVICE, { ordinal: null });
}

// Whether the result names the device the statement names.
function sameDevice(result, statement) {
  try {
    return sameJson(deviceRecord(result), deviceRecord(statement));
  } catch {
    return false;
  }
}

// Whether the statement's and the result's state, limits and resources are the same records,
// read as the Rust verifier reads them (absent `read`/`written` are empty, absent GPU counters
// 0, unknown fields ignored).
function sameRecords(statement, result) {
  try {
    return Object.entries(records).every(([field, read]) => sameJson(read(statement[field]), read(result[field])));
  } catch {
    return false;
  }
}
const isCount = (value) => Number.isSafeInteger(value) && value >= 0;

// Why a statement does not have the shape of dtee.execution/v1, or null.
function statementProblem(s) {
  if (!isObject(s)) return 'the statement is not a JSON object';
  for (const field of ['schema', 'execution_id', 'status']) if (typeof s[field] !== 'string') return `the statement has no string ${field}`;
  if (!isDigest(s.job_id)) return 'the statement has no job_id digest';
  if (!Array.isArray(s.inputs) || !Array.isArray(s.outputs)) return 'the statement has no inputs or outputs';
  if (!isCount(s.started_at_unix_ms) || !isCount(s.finished_at_unix_ms)) return 'the statement has no timestamps';
  const w = s.worker;
  if (!isObject(w)) return 'the statement has no worker';
  for (const field of ['worker_id', 'public_key', 'platform']) if (typeof w[field] !== 'string') return `the statement's worker has no ${field}`;
  if (!isDigest(w.measurement) || !isDigest(w.evidence_digest)) return "the statement's worker has no measurement or evidence digest";
  if (!isCount(w.evidence_created_at_unix_ms)) return "the statement's worker has no evidence time";
  if (!isObject(s.tcb)) return 'the statement has no tcb';
  // As Rust's parse reads them: three booleans and the backend's name.
  for (const flag of ['hardware_rooted', 'memory_protected', 'gpu_in_tcb']) {
    if (typeof s.tcb[flag] !== 'boolean') return `tcb.${flag} is not a boolean`;
  }
  if (typeof s.tcb.backend !== 'string') return 'tcb.backend is not a string';
  for (const o of s.outputs) if (!isObject(o) || typeof o.name !== 'string' || !isCount(o.size) || !isDigest(o.digest)) return 'a statement output is malformed';
  if (s.error_code !== undefined && s.error_code !== null && typeof s.error_code !== 'string') return 'the error code is not a string';
  return null;
}

function checkSignature(envelope, publicKey, keyHex) {
  const payload = decodeBase64(envelope.payload);
  if (payload === null) return { why: 'payload is not base64' };
  const message = pae(String(envelope.payloadType), payload);
  const wanted = `ed25519:${keyHex}`;
  const reasons = [];
  for (const signature of Array.isArray(envelope.signatures) ? envelope.signatures : []) {
    if (!isObject(signature) || signature.keyid !== wanted) continue;
    const bytes = decodeBase64(signature.sig);
    if (bytes === null) {
      reasons.push('signature is not base64');
      continue;
    }
    const outcome = verifyEd25519Strict(publicKey, message, bytes);
    if (outcome.ok) return { payload };
    reasons.push(`signature does not verify: ${outcome.why}`);
  }
  return { why: reasons.length > 0 ? reasons.join('; ') : `no signature by ${wanted}` };
}

/**
 * The checks that need no platform-specific code, in the order of ATTESTATION.md §9.
 * Returns the checks and, when it got that far, the evidence.
 */
function commonChecks(result, policy, now) {
  const checks = [];
  const attestation = result.attestation;
  if (!isObject(attestation) || !isObject(attestation.envelope) || !isObject(attestation.identity)) {
    checks.push(fail('attestation.present', 'the result carries no attestation'));
    return { checks };
  }
  checks.push(pass('attestation.present'));
  const { envelope, identity } = attestation;
  checks.push(check('envelope.payload_type', envelope.payloadType === EXECUTION_PAYLOAD_TYPE, () => `payload type is ${JSON.stringify(envelope.payloadType)}, not ${JSON.stringify(EXECUTION_PAYLOAD_TYPE)}`));
  if (typeof identity.public_key !== 'string' || !/^[0-9a-fA-F]{64}$/.test(identity.public_key)) {
    checks.push(fail('identity.public_key', 'the worker public key is not 32 bytes of hex'));
    return { checks };
  }
  const publicKey = Buffer.from(identity.public_key, 'hex');
  const signed = checkSignature(envelope, publicKey, publicKey.toString('hex'));
  if (!signed.payload) {
    checks.push(fail('envelope.signature', signed.why));
    return { checks };
  }
  checks.push(pass('envelope.signature'));
  let statement;
  try {
    statement = parseStrict(signed.payload);
  } catch (error) {
    checks.push(fail('statement.parse', `the payload is not an execution statement: ${error.message}`));
    return { checks };
  }
  const problem = statementProblem(statement);
  if (problem) {
    checks.push(fail('statement.parse', `the payload is not an execution statement: ${problem}`));
    return { checks };
  }
  const worker = statement.worker;
  const evidence = identity.evidence;
  checks.push(check('statement.schema', statement.schema === EXECUTION_SCHEMA, () => `schema is ${JSON.stringify(statement.schema)}`));
  checks.push(check('statement.worker_key', worker.public_key === identity.public_key, () => 'the statement names another worker key'));
  checks.push(check('statement.worker_measurement', worker.measurement === identity.measurement, () => 'the statement names another measurement'));
  checks.push(check('statement.worker_identity', worker.worker_id === identity.worker_id && worker.evidence_created_at_unix_ms === identity.evidence_created_at_unix_ms, () => 'the statement names another worker id or evidence time'));
  let evidenceDigest = null;
  try {
    evidenceDigest = isObject(evidence) ? digestOf(canonicalBytes(evidence)) : null;
  } catch {
    evidenceDigest = null;
  }
  checks.push(check('statement.evidence_digest', evidenceDigest !== null && worker.evidence_digest === evidenceDigest, () => `the statement names evidence ${worker.evidence_digest}, the result carries ${evidenceDigest ?? 'no evidence'}`));
  const platform = isObject(evidence) ? evidence.platform : undefined;
  // The platform, and what the statement says it protected: no more than the evidence gives.
  const tcb = statement.tcb;
  const tcbHonest = tcb.hardware_rooted === (platform === 'tpm' || platform === 'snp')
    && tcb.memory_protected === (platform === 'snp')
    && tcb.gpu_in_tcb === false;
  checks.push(check('statement.platform', worker.platform === platform && tcbHonest, () => `the statement says ${worker.platform} (hardware_rooted ${tcb.hardware_rooted}, memory_protected ${tcb.memory_protected}, gpu_in_tcb ${tcb.gpu_in_tcb}), the evidence is ${platform}`));
  checks.push(check('result.job_id', statement.job_id === result.job_id, () => `the statement is about ${statement.job_id}, the result about ${result.job_id}`));
  const errorCode = isObject(result.error) ? result.error.code : undefined;
  checks.push(check('result.status', statement.status === result.status && (statement.error_code ?? undefined) === errorCode, () => 'status or error code differ from the statement'));
  const outputs = Array.isArray(result.outputs) ? result.outputs : [];
  const listed = outputs.map((o) => ({ name: o?.name, size: o?.size, digest: o?.digest }));
  const signedOutputs = statement.outputs.map((o) => ({ name: o.name, size: o.size, digest: o.digest }));
  // Absent outputs are none, as Rust reads them (`#[serde(default)]`).
  checks.push(check('result.outputs_listed', (result.outputs === undefined || Array.isArray(result.outputs)) && sameJson(listed, signedOutputs), () => "the result's outputs (names, sizes, digests) differ from the statement's"));
  let dataProblem = null;
  for (const output of outputs) {
    const bytes = decodeBase64(output?.data);
    if (bytes === null) {
      dataProblem = `output ${JSON.stringify(output?.name)}: not base64`;
      break;
    }
    if (bytes.length !== output.size || digestOf(bytes) !== output.digest) {
      dataProblem = `output ${JSON.stringify(output.name)}: its bytes do not match its size and digest`;
      break;
    }
  }
  checks.push(dataProblem ? fail('result.output_data', dataProblem) : pass('result.output_data'));
  checks.push(check('result.state_limits_resources', sameRecords(statement, result), () => 'state, limits or resources differ from the statement'));
  const e = result.execution;
  const sameExecution =
    isObject(e) &&
    e.execution_id === statement.execution_id &&
    e.worker_id === worker.worker_id &&
    e.started_at_unix_ms === statement.started_at_unix_ms &&
    e.finished_at_unix_ms === statement.finished_at_unix_ms &&
    typeof e.backend === 'string' &&
    e.backend === statement.tcb.backend &&
    sameDevice(e.device, statement.tcb.device);
  checks.push(check('result.execution', sameExecution, () => 'the execution record (id, worker, times, backend, device) differs from the statement'));

  if (policy.worker_measurements.length === 0) {
    checks.push(skip('policy.worker_measurement', 'the policy accepts any worker measurement'));
  } else {
    checks.push(check('policy.worker_measurement', policy.worker_measurements.includes(identity.measurement), () => `worker measurement ${identity.measurement} is not allowed`));
  }
  if (policy.max_evidence_age_secs !== undefined) {
    const created = Number.isFinite(identity.evidence_created_at_unix_ms) ? identity.evidence_created_at_unix_ms : 0;
    let age = now - Math.floor(created / 1000);
    // Evidence from more than five minutes in the future is as suspect as old evidence.
    if (age < -300) age = Infinity;
    checks.push(check('policy.evidence_age', age <= policy.max_evidence_age_secs, () => `the evidence is ${age} s old; the policy accepts ${policy.max_evidence_age_secs} s`));
  }
  return { checks, evidence, identity };
}

/**
 * Runs `dtee verify RESULT --policy FILE --at NOW`; resolves to its exit code and checks.
 * @returns {Promise<{code: number, checks: Check[], output: string}>}
 */
async function runDtee(bin, result, policyFile, policy, now) {
  const dir = await mkdtemp(join(tmpdir(), 'dtee-verify-'));
  try {
    const resultFile = join(dir, 'result.json');
    await writeFile(resultFile, JSON.stringify(result));
    let file = policyFile;
    if (!file) {
      file = join(dir, 'policy.toml');
      await writeFile(file, writeToml(policy));
    }
    const { code, stdout, stderr } = await new Promise((resolve, reject) => {
      execFile(bin, ['verify', resultFile, '--policy', file, '--at', String(now)], { maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
        if (error && typeof error.code !== 'number') {
          reject(new VerifyError(`cannot run ${bin} (set DTEE_BIN or the dteeBin option): ${error.message}`, { cause: error }));
        } else {
          resolve({ code: error ? error.code : 0, stdout, stderr });
        }
      });
    });
    if (code !== 0 && code !== 1) throw new VerifyError(`${bin} verify exited with ${code}: ${stderr.trim() || stdout.trim()}`);
    const checks = [];
    for (const line of stdout.split('\n')) {
      const match = /^(PASS|FAIL|SKIP) {2}([^:\s]+)(?:: (.*))?$/.exec(line);
      if (!match) continue;
      const [, outcome, name, why] = match;
      checks.push(outcome === 'PASS' ? pass(name) : outcome === 'FAIL' ? fail(name, why ?? '') : skip(name, why ?? ''));
    }
    return { code, checks, output: stdout };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The outcome of verifying a result.
 * @typedef {object} Verdict
 * @property {boolean} accepted no check failed (skipped checks are fine)
 * @property {Check[]} checks every check, in the order of ATTESTATION.md §9
 * @property {boolean} delegated whether `dtee verify` was run
 */

/**
 * Verifies a result's attestation against a policy, offline (ATTESTATION.md §9).
 *
 * Natively: the payload type, the strict Ed25519 signature over the DSSE PAE, the statement
 * and every `statement.*` and `result.*` check, `policy.worker_measurement`,
 * `policy.evidence_age`, and `software.allowed`/`software.measurement`. For `tpm` and `snp`
 * evidence the `tpm.*`/`snp.*` checks come from the `dtee verify` binary (path from
 * `options.dteeBin`, else `DTEE_BIN`, else `dtee` on the PATH); it is given the policy file, or a
 * TOML rendering of the policy object.
 *
 * An ACCEPTED verdict does not say the result is for your job: compare `result.job_id` with the
 * id you submitted.
 *
 * @param {object | string | Uint8Array} result a `dtee.result/v1` object, or its JSON text
 * @param {object | string} policy a policy object (`allow_software`, `worker_measurements`,
 *   `max_evidence_age_secs`, `tpm`, `snp`) or the path of a TOML policy file
 * @param {{at?: number, dteeBin?: string, delegate?: 'auto' | 'always'}} [options]
 *   at: verification time in Unix seconds (default now); delegate `always` also runs `dtee verify`
 *   when the evidence is not TPM or SEV-SNP, and adds its verdict as the check `dtee.verify`
 * @returns {Promise<Verdict>}
 */
export async function verify(result, policy, options = {}) {
  if (typeof result === 'string' || result instanceof Uint8Array) {
    try {
      result = parseStrict(result);
    } catch (error) {
      if (error instanceof CanonicalError) throw new MalformedResultError(`the result is not JSON: ${error.message}`, { cause: error });
      throw error;
    }
  }
  if (!isObject(result)) throw new MalformedResultError('the result is not a JSON object');
  const policyFile = typeof policy === 'string' ? policy : undefined;
  const rules = policyFile ? await loadPolicy(policyFile) : normalizePolicy(policy);
  const now = options.at ?? Math.floor(Date.now() / 1000);
  const bin = options.dteeBin ?? process.env.DTEE_BIN ?? 'dtee';

  const { checks, evidence, identity } = commonChecks(result, rules, now);
  let delegated = false;
  if (identity) {
    const platform = evidence?.platform;
    if (platform === 'software') {
      checks.push(check('software.allowed', rules.allow_software, () => `the policy does not accept software evidence (${evidence.statement})`));
      // Exactly these fields, as the Rust verifier reads software evidence (it refuses others).
      const exact = Object.keys(evidence).sort().join(',') === 'measurement,platform,statement' && typeof evidence.statement === 'string';
      checks.push(check('software.measurement', exact && evidence.measurement === identity.measurement, () => (exact ? 'the evidence states another measurement than the identity' : 'software evidence holds exactly platform, statement (a string) and measurement')));
    } else if (platform === 'tpm' || platform === 'snp') {
      if (!rules[platform]) {
        checks.push(fail(`${platform}.allowed`, `the policy has no [${platform}] section`));
      } else {
        checks.push(pass(`${platform}.allowed`));
        delegated = true;
        const outside = await runDtee(bin, result, policyFile, rules, now);
        const own = outside.checks.filter((c) => c.name.startsWith(`${platform}.`) && c.name !== `${platform}.allowed`);
        checks.push(...own);
        // dtee verify ran the common checks too; if it rejected for a reason not listed above,
        // say so rather than accept.
        if (outside.code !== 0 && !checks.some((c) => !c.passed)) {
          checks.push(fail('dtee.verify', `dtee verify rejected the result:\n${outside.output.trim()}`));
        }
      }
    } else {
      checks.push(fail('evidence.platform', `unknown evidence platform ${JSON.stringify(platform)}`));
    }
  }
  if (options.delegate === 'always' && !delegated) {
    delegated = true;
    const outside = await runDtee(bin, result, policyFile, rules, now);
    checks.push(check('dtee.verify', outside.code === 0, () => `dtee verify rejected the result:\n${outside.output.trim()}`));
  }
  return { accepted: checks.length > 0 && checks.every((c) => c.passed), checks, delegated };
}
