// Unit tests beyond the conformance cases: the builder's checks, policies and their TOML,
// native verification of results made here, and timeouts (live, when DTEE_NAMESPACE is set).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  Client,
  DteeError,
  InvalidJobError,
  MalformedResultError,
  TimeoutError,
  VerifyError,
  amqpUser,
  amqpUrls,
  isClusterUrl,
  loadTls,
  parseClusterUrl,
  canonicalBytes,
  digestOf,
  job,
  nackBackoffMs,
  jobRoutingKey,
  loadPolicy,
  normalizePolicy,
  pae,
  verify,
} from '../src/index.js';
import { parseToml, writeToml } from '../src/toml.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const KERNEL = digestOf(Buffer.from('kernel'));

test('the builder refuses what the worker would refuse', () => {
  assert.throws(() => job('sha256:ABC', 'main'), InvalidJobError);
  assert.throws(() => job(KERNEL.toUpperCase(), 'main'), InvalidJobError);
  assert.throws(() => job(KERNEL, ''), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main', { target: 'Wasm' }), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main', { format: 'elf' }), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').output('out', 1).output('out', 2), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').output('1out', 1), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').output('out', 0), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').output('out', 1.5), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').param('a', 'u32', -1), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').param('a', 'i32', 2 ** 31), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').param('a', 'u64', 2 ** 53 + 2), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').param('a', 'f32', 1e39), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').param('a', 'f64', Infinity), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').param('a', 'f16', 1), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').param('a', 'f32', 1).param('a', 'f32', 2), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').state('s', 'nokey', 'read_only'), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').state('s', 'guest/x', 'rw'), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').state('s', 'guest/x', 'read_only', { maxSize: 0 }), InvalidJobError);
  // Each state key once (a commit checks each binding on its own).
  assert.throws(() => job(KERNEL, 'main').state('a', 'guest/x', 'append_only').state('b', 'guest/x', 'read_only'), InvalidJobError);
  assert.doesNotThrow(() => job(KERNEL, 'main').state('a', 'guest/x', 'append_only').state('b', 'guest/y', 'read_only'));
  assert.throws(() => job(KERNEL, 'main').limits({ timeout: 5 }), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').limits({ fuel: 0 }), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main', { profile: 'turbo' }), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main', { format: 'ptx', profile: 'fast' }), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main', { profile: 'fast' }).limits({ fuel: 5 }), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').attestation('sgx'), InvalidJobError);
  assert.throws(() => job(KERNEL, 'main').nonce('x'.repeat(257)), InvalidJobError);
  assert.doesNotThrow(() => job(KERNEL, 'main').nonce('é'.repeat(128)));
  assert.throws(() => job(KERNEL, 'main').nonce('é'.repeat(129)), InvalidJobError);
});

test('fields are written only when given, as the Rust types serialize', () => {
  const spec = job(KERNEL, 'main')
    .state('a', 'guest/a', 'read_only')
    .state('b', 'guest/b', 'read_write', { mayBeAbsent: false, maxSize: 8 })
    .limits({ fuel: 10 })
    .limits({ timeoutMs: 5 })
    .toSpec();
  assert.deepEqual(spec.buffers, [
    { kind: 'state', name: 'a', key: 'guest/a', mode: 'read_only' },
    { kind: 'state', name: 'b', key: 'guest/b', mode: 'read_write', max_size: 8 },
  ]);
  assert.deepEqual(spec.limits, { fuel: 10, timeout_ms: 5 });
  assert.equal('params' in spec, false);
  assert.equal('attestation' in spec, false);
  assert.equal('nonce' in spec, false);
  assert.deepEqual(job(KERNEL, 'main').limits({}).toSpec(), job(KERNEL, 'main').toSpec());
  // `attestation('any')` is written (a different id from leaving it out), but routes the same.
  const any = job(KERNEL, 'main').attestation('any');
  assert.notEqual(any.id(), job(KERNEL, 'main').id());
  assert.equal(jobRoutingKey(any.toSpec()), 'wasm');
  assert.equal(jobRoutingKey(job(KERNEL, 'main').attestation('any-hardware').toSpec()), 'wasm.any-hardware');
  // Launch geometry for GPU kernels.
  const gpu = job(KERNEL, 'saxpy', { target: 'cuda', format: 'ptx' }).launch({ grid: [1, 1, 1], block: [64, 1, 1] }).toSpec();
  assert.deepEqual(gpu.launch, { grid: [1, 1, 1], block: [64, 1, 1] });
});

test('the tenant is the AMQP user name', () => {
  assert.equal(amqpUser('amqp://guest:guest@127.0.0.1:5672/%2f'), 'guest');
  assert.equal(amqpUser('amqp://al%40ice:pw@host/vhost'), 'al@ice');
  assert.equal(amqpUser('amqp://host'), 'guest');
});

test('policy files parse, and unknown keys are refused', async () => {
  const dir = join(REPO, 'deploy', 'policies');
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.toml'))) {
    const policy = await loadPolicy(join(dir, file));
    assert.equal(typeof policy.allow_software, 'boolean', file);
  }
  assert.deepEqual(await loadPolicy(join(dir, 'software-dev.toml')), { allow_software: true, worker_measurements: [] });
  assert.throws(() => normalizePolicy({ allow_sofware: true }), VerifyError);
  assert.throws(() => normalizePolicy({ tpm: { allowed_aks: [], pcr: [] } }), VerifyError);
  assert.equal(normalizePolicy({ tpm: { allowed_aks: [], measurement_pcr: 16 } }).tpm.measurement_pcr, 16);
  for (const bad of ['16', -1, 24, 1.5]) {
    assert.throws(() => normalizePolicy({ tpm: { allowed_aks: [], measurement_pcr: bad } }), VerifyError);
  }
  assert.throws(() => normalizePolicy({ worker_measurements: ['sha256:ABC'] }), VerifyError);
  await assert.rejects(loadPolicy(join(dir, 'no-such-policy.toml')), VerifyError);
  const text = `
# a comment
allow_software = false   # trailing
worker_measurements = [
  "sha256:${'a'.repeat(64)}",   # one
]
max_evidence_age_secs = 86_400

[tpm]
allowed_aks = ['ABCDEF']
pcrs = [{ index = 23, value = "00ff" }, {index=0,value="\\u0041"}]

[snp]
min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
`;
  const parsed = parseToml(text);
  assert.deepEqual(parsed, {
    allow_software: false,
    worker_measurements: [`sha256:${'a'.repeat(64)}`],
    max_evidence_age_secs: 86400,
    tpm: { allowed_aks: ['ABCDEF'], pcrs: [{ index: 23, value: '00ff' }, { index: 0, value: 'A' }] },
    snp: { min_tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 } },
  });
  assert.deepEqual(parseToml(writeToml(parsed)), parsed);
  for (const bad of ['a = 1\na = 2', 'a = 1 b = 2', 'a = ', '[x\n', 'a = "unterminated']) {
    assert.throws(() => parseToml(bad), VerifyError, bad);
  }
});

/** A software-attested result made and signed here, as a worker would. */
function forge({ evidence, tamper } = {}) {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const key = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32).toString('hex');
  const measurement = digestOf(Buffer.from('binary'));
  const data = randomBytes(16);
  const theEvidence = evidence ?? { platform: 'software', statement: 'software identity: test', measurement };
  const created = Date.now() - 10_000;
  const limits = { timeout_ms: 1, memory_bytes: 2, fuel: 3, output_bytes: 4 };
  const statement = {
    schema: 'dtee.execution/v1',
    job_id: digestOf(Buffer.from('job')),
    inputs: [],
    outputs: [{ name: 'out', size: 16, digest: digestOf(data) }],
    limits,
    status: 'succeeded',
    execution_id: '0'.repeat(32),
    started_at_unix_ms: 1,
    finished_at_unix_ms: 2,
    worker: {
      worker_id: 'w-1',
      public_key: key,
      measurement,
      platform: theEvidence.platform,
      evidence_digest: digestOf(canonicalBytes(theEvidence)),
      evidence_created_at_unix_ms: created,
    },
    tcb: { hardware_rooted: theEvidence.platform !== 'software', memory_protected: theEvidence.platform === 'snp', gpu_in_tcb: false, backend: 'wasm' },
  };
  tamper?.(statement);
  const payload = canonicalBytes(statement);
  const type = 'application/vnd.dtee.execution+json';
  return {
    schema: 'dtee.result/v1',
    job_id: statement.job_id,
    status: 'succeeded',
    outputs: [{ name: 'out', size: 16, digest: digestOf(data), data: data.toString('base64') }],
    limits,
    execution: { execution_id: '0'.repeat(32), worker_id: 'w-1', backend: 'wasm', started_at_unix_ms: 1, finished_at_unix_ms: 2, attempts: 1 },
    attestation: {
      envelope: { payload: payload.toString('base64'), payloadType: type, signatures: [{ keyid: `ed25519:${key}`, sig: sign(null, pae(type, payload), privateKey).toString('base64') }] },
      identity: { worker_id: 'w-1', public_key: key, measurement, evidence_created_at_unix_ms: created, evidence: theEvidence },
    },
  };
}

const failedChecks = (verdict) => verdict.checks.filter((c) => !c.passed).map((c) => c.name);

test('native verification of a result made here', async () => {
  const result = forge();
  const accepted = await verify(result, { allow_software: true, max_evidence_age_secs: 60, worker_measurements: [result.attestation.identity.measurement] });
  assert.equal(accepted.accepted, true, JSON.stringify(accepted.checks));
  assert.equal(accepted.delegated, false);
  assert.deepEqual(
    accepted.checks.map((c) => c.name),
    ['attestation.present', 'envelope.payload_type', 'envelope.signature', 'statement.schema', 'statement.worker_key', 'statement.worker_measurement', 'statement.worker_identity', 'statement.evidence_digest', 'statement.platform', 'result.job_id', 'result.status', 'result.outputs_listed', 'result.output_data', 'result.state_limits_resources', 'result.execution', 'policy.worker_measurement', 'policy.evidence_age', 'software.allowed', 'software.measurement'],
  );
  // The same, as JSON text.
  assert.equal((await verify(JSON.stringify(result), { allow_software: true })).accepted, true);
  await assert.rejects(verify('{"a":1,"a":2}', {}), MalformedResultError);

  assert.deepEqual(failedChecks(await verify(result, { allow_software: true, max_evidence_age_secs: 5 })), ['policy.evidence_age']);
  assert.deepEqual(failedChecks(await verify(result, { allow_software: true, worker_measurements: [digestOf(Buffer.from('other'))] })), ['policy.worker_measurement']);
  const changed = (edit) => {
    const copy = structuredClone(result);
    edit(copy);
    return copy;
  };
  const cases = [
    [(r) => (r.attestation.envelope.payloadType = 'text/plain'), ['envelope.payload_type', 'envelope.signature']],
    [(r) => (r.limits.fuel = 4), ['result.state_limits_resources']],
    [(r) => (r.execution.finished_at_unix_ms = 3), ['result.execution']],
    [(r) => (r.execution.backend = 'cuda'), ['result.execution']],
    [(r) => (r.execution.device = { vendor: 'nvidia', name: 'NVIDIA H200', arch: 'sm_90', driver: 'cuda 13000' }), ['result.execution']],
    [(r) => (r.status = 'failed'), ['result.status']],
    [(r) => (r.outputs[0].size = 15), ['result.outputs_listed', 'result.output_data']],
    [(r) => (r.attestation.identity.worker_id = 'w-2'), ['statement.worker_identity']],
    [(r) => (r.attestation.identity.evidence.statement = 'trust me'), ['statement.evidence_digest']],
    [(r) => (r.attestation.identity.public_key = 'ab'), ['identity.public_key']],
    [(r) => (r.attestation.envelope.signatures[0].keyid = 'ed25519:00'), ['envelope.signature']],
    [(r) => delete r.attestation, ['attestation.present']],
  ];
  for (const [edit, expected] of cases) {
    assert.deepEqual(failedChecks(await verify(changed(edit), { allow_software: true })), expected, edit.toString());
  }
  // What the Rust verifier reads as the same record is the same here: absent GPU counters are
  // 0, unknown fields are ignored, an absent state report's list is empty.
  const base = { fuel_consumed: 1, peak_memory_bytes: 2, wall_time_us: 3, output_bytes: 4 };
  const pairs = [
    [(s) => (s.resources = base), (r) => (r.resources = { ...base, device_memory_bytes: 0, kernel_time_us: 0 })],
    [() => {}, (r) => (r.limits = { ...r.limits, unknown_field: 1 })],
    [(s) => (s.state = { read: [], written: [] }), (r) => (r.state = { read: [] })],
    [
      (s) => (s.tcb.device = { vendor: 'amd', name: 'MI210', arch: 'gfx90a', driver: 'hip 50422' }),
      (r) => (r.execution.device = { vendor: 'amd', name: 'MI210', arch: 'gfx90a', driver: 'hip 50422', ordinal: null }),
    ],
  ];
  for (const [signedEdit, resultEdit] of pairs) {
    const edited = forge({ tamper: signedEdit });
    resultEdit(edited);
    assert.deepEqual(failedChecks(await verify(edited, { allow_software: true })), [], resultEdit.toString());
  }
  // Software evidence with a field Rust's verifier refuses to read is refused here too.
  const extra = forge({ evidence: { platform: 'software', statement: 'software identity: test', measurement: digestOf(Buffer.from('binary')), extra: 1 } });
  assert.deepEqual(failedChecks(await verify(extra, { allow_software: true })), ['software.measurement']);
  // A difference that is one stays one.
  const differs = forge({ tamper: (s) => (s.resources = base) });
  differs.resources = { ...base, kernel_time_us: 7 };
  assert.deepEqual(failedChecks(await verify(differs, { allow_software: true })), ['result.state_limits_resources']);
  // A software statement claiming what only hardware gives, signed as well as any: refused.
  for (const flag of ['hardware_rooted', 'memory_protected', 'gpu_in_tcb']) {
    assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => (s.tcb[flag] = true) }), { allow_software: true })), ['statement.platform'], flag);
  }
  // A statement signed with another schema, or that is not a statement at all.
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => (s.schema = 'x') }), { allow_software: true })), ['statement.schema']);
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => delete s.worker }), { allow_software: true })), ['statement.parse']);
  // Fields of the wrong type are malformed, as the Rust verifier's parse fails on them; a null
  // error code is an absent one, as serde reads an Option.
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => (s.started_at_unix_ms = '1') }), { allow_software: true })), ['statement.parse']);
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => (s.error_code = 3) }), { allow_software: true })), ['statement.parse']);
  // The tcb's flags are booleans and its backend a string, as Rust's parse reads them.
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => (s.tcb.hardware_rooted = 1) }), { allow_software: true })), ['statement.parse']);
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => delete s.tcb.memory_protected }), { allow_software: true })), ['statement.parse']);
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => (s.tcb.backend = 1) }), { allow_software: true })), ['statement.parse']);
  assert.deepEqual(failedChecks(await verify(forge({ tamper: (s) => (s.error_code = null) }), { allow_software: true })), []);
});

test('TPM and SEV-SNP evidence is delegated to dtee verify', async (t) => {
  const tpm = forge({ evidence: { platform: 'tpm', ak_public: 'AA==', quote: 'AA==', signature: 'AA==', pcr_bank: 'sha256', pcrs: [], nonce: 'AA==' } });
  // Without a [tpm] section nothing is delegated: the policy refuses TPM evidence.
  const refused = await verify(tpm, { allow_software: true });
  assert.deepEqual(failedChecks(refused), ['tpm.allowed']);
  assert.equal(refused.delegated, false);
  await assert.rejects(verify(tpm, { tpm: { allowed_aks: [] } }, { dteeBin: '/nonexistent/dtee' }), VerifyError);
  const bin = process.env.DTEE_BIN ?? join(REPO, 'target', 'debug', 'dtee');
  if (!existsSync(bin)) {
    t.skip(`no dtee binary at ${bin}`);
    return;
  }
  // The binary runs the nine TPM checks; this made-up quote fails them.
  const verdict = await verify(tpm, { tpm: { allowed_aks: ['00'] } }, { dteeBin: bin });
  assert.equal(verdict.delegated, true);
  assert.equal(verdict.accepted, false);
  assert.ok(verdict.checks.some((c) => c.name === 'tpm.allowed' && c.passed));
  assert.deepEqual(
    verdict.checks.filter((c) => c.name.startsWith('tpm.') && c.name !== 'tpm.allowed').map((c) => c.name),
    ['tpm.ak_pinned', 'tpm.ak_public', 'tpm.signature', 'tpm.quote_format', 'tpm.qualifying_data', 'tpm.pcr_selection', 'tpm.pcr_digest', 'tpm.pcr_values', 'tpm.measurement'],
  );
});

test('waiting ends with TimeoutError', { skip: !process.env.DTEE_NAMESPACE && 'live: set DTEE_NAMESPACE' }, async () => {
  const client = await Client.connect({
    amqpUrl: process.env.DTEE_AMQP_URL,
    redisUrl: process.env.DTEE_REDIS_URL,
    namespace: process.env.DTEE_NAMESPACE,
    tls: { caFile: process.env.DTEE_TLS_CA_FILE, certFile: process.env.DTEE_TLS_CERT_FILE, keyFile: process.env.DTEE_TLS_KEY_FILE },
  });
  try {
    const id = digestOf(randomBytes(32));
    await assert.rejects(client.wait(id, { timeoutMs: 300 }), TimeoutError);
    // The waiter still works afterwards, and two waits of one id share the binding.
    const both = [client.wait(id, { timeoutMs: 300 }), client.wait(id, { timeoutMs: 400 })];
    for (const outcome of await Promise.allSettled(both)) assert.ok(outcome.reason instanceof TimeoutError);
    await assert.rejects(client.wait('sha256:nope'), InvalidJobError);
  } finally {
    await client.close();
  }
});

test('AMQP settings: node lists, schemes, one tenant', () => {
  assert.deepEqual(amqpUrls(' amqp://a@h1/%2f, amqps://a@h2:5671/%2f ,'), ['amqp://a@h1/%2f', 'amqps://a@h2:5671/%2f']);
  assert.deepEqual(amqpUrls(['amqp://u@x/v']), ['amqp://u@x/v']);
  for (const bad of ['', ' , ', [], 'http://u:p@h/']) assert.throws(() => amqpUrls(bad), DteeError);
  assert.throws(() => amqpUrls('https://u:secret@h/'), (error) => !error.message.includes('secret'));
});

test('AMQP URLs naming different users are refused before connecting', async () => {
  await assert.rejects(
    Client.connect({ amqpUrl: 'amqp://alice:p@127.0.0.1:1/%2f,amqp://bob:p@127.0.0.1:1/%2f' }),
    /different users/,
  );
});

test('TLS files: a certificate needs its key', () => {
  assert.throws(() => loadTls({ certFile: 'client.pem' }), DteeError);
  assert.throws(() => loadTls({ keyFile: 'client.key' }), DteeError);
  assert.deepEqual(loadTls({}), { ca: undefined, cert: undefined, key: undefined });
});

test('Redis Cluster URLs give their seed nodes and credentials', () => {
  assert.ok(isClusterUrl('rediss+cluster://h:1'));
  assert.ok(isClusterUrl(' Redis+Cluster://h:1'));
  assert.ok(!isClusterUrl('redis://h:1'));
  assert.deepEqual(parseClusterUrl('rediss+cluster://dtee-worker:p%40ss@10.0.0.1:7001, node-b:7002,[::1]:7003,node-c/'), {
    nodes: [
      { host: '10.0.0.1', port: 7001 },
      { host: 'node-b', port: 7002 },
      { host: '::1', port: 7003 },
      { host: 'node-c', port: 6379 },
    ],
    username: 'dtee-worker',
    password: 'p@ss',
    tls: true,
  });
  assert.deepEqual(parseClusterUrl('redis+cluster://h:1'), { nodes: [{ host: 'h', port: 1 }], username: undefined, password: undefined, tls: false });
  for (const bad of ['redis://h:1', 'redis+cluster://', 'redis+cluster://h:port', 'redis+cluster://h:0', 'redis+cluster://u:p@,']) {
    assert.throws(() => parseClusterUrl(bad), DteeError, bad);
  }
});

test('nack resends back off fourfold up to five seconds', () => {
  assert.deepEqual([1, 2, 3, 4, 5].map(nackBackoffMs), [100, 400, 1600, 5000, 5000]);
});
