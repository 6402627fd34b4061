// The client conformance suite (clients/conformance/README.md): one test per case, named as
// there. Offline cases need nothing; live cases need RabbitMQ, Redis and a worker:
//
//   DTEE_NAMESPACE=conf-node npm test
//
// DTEE_AMQP_URL, DTEE_REDIS_URL, DTEE_KERNELS and DTEE_BIN have defaults (below; DTEE_TLS_CA_FILE,
// DTEE_TLS_CERT_FILE and DTEE_TLS_KEY_FILE for amqps and rediss). A live case
// that finds no broker FAILS. Set DTEE_TEST_OFFLINE=1 to skip the live cases on purpose.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, randomUUID, sign } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { connectAmqp } from '../src/amqp.js';
import { connectRedis } from '../src/redis.js';
import {
  BrokerRefusedError,
  CanonicalError,
  Client,
  DEFAULT_NACK_RETRIES,
  InvalidJobError,
  JobFailedError,
  MalformedResultError,
  NoRouteError,
  TimeoutError,
  canonicalize,
  digestOf,
  f32Bytes,
  job,
  loadTls,
  outputBytes,
  pae,
  parseStateKey,
  parseStrict,
  prepareJob,
  readF32,
  verify,
  verifyEd25519Strict,
} from '../src/index.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const VECTORS = join(REPO, 'schemas', 'vectors');
const env = {
  amqpUrl: process.env.DTEE_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f',
  redisUrl: process.env.DTEE_REDIS_URL ?? 'redis://127.0.0.1:6379',
  namespace: process.env.DTEE_NAMESPACE,
  kernels: process.env.DTEE_KERNELS ?? join(REPO, 'kernels', 'wasm'),
  dteeBin: process.env.DTEE_BIN ?? join(REPO, 'target', 'debug', 'dtee'),
  tls: {
    caFile: process.env.DTEE_TLS_CA_FILE || undefined,
    certFile: process.env.DTEE_TLS_CERT_FILE || undefined,
    keyFile: process.env.DTEE_TLS_KEY_FILE || undefined,
  },
};
const OFFLINE_ONLY = process.env.DTEE_TEST_OFFLINE === '1';
const TIMEOUT_MS = 60_000;

// ---------------------------------------------------------------------------------------------
// Offline cases
// ---------------------------------------------------------------------------------------------

test('jcs_vectors', () => {
  const dir = join(VECTORS, 'jcs');
  const digests = new Map(
    readFileSync(join(dir, 'digests.txt'), 'utf8')
      .trim()
      .split('\n')
      .map((line) => {
        const [digest, name] = line.split('  ');
        return [name, digest];
      }),
  );
  const names = readdirSync(dir)
    .filter((f) => f.endsWith('.input.json'))
    .map((f) => f.slice(0, -'.input.json'.length));
  assert.ok(names.length >= 18, `only ${names.length} cases found in ${dir}`);
  for (const name of names) {
    const input = readFileSync(join(dir, `${name}.input.json`));
    const expected = readFileSync(join(dir, `${name}.canonical.json`));
    const canonical = Buffer.from(canonicalize(parseStrict(input)), 'utf8');
    assert.ok(canonical.equals(expected), `${name}: got ${canonical.toString()}`);
    assert.equal(digestOf(canonical), digests.get(name), `${name}: digest`);
    const again = Buffer.from(canonicalize(parseStrict(expected)), 'utf8');
    assert.ok(again.equals(expected), `${name}: canonicalizing the canonical bytes changed them`);
  }
  const invalid = readdirSync(join(dir, 'invalid'));
  assert.ok(invalid.length >= 21, `only ${invalid.length} invalid cases found`);
  for (const file of invalid) {
    const bytes = readFileSync(join(dir, 'invalid', file));
    assert.throws(() => canonicalize(parseStrict(bytes)), CanonicalError, `invalid/${file} was accepted`);
  }
  // A string given directly is held to the same rules.
  assert.throws(() => parseStrict('{"a":1,"\\u0061":2}'), CanonicalError);
  assert.throws(() => parseStrict('"\ud800"'), CanonicalError);
  assert.throws(() => parseStrict('\ufeff{}'), CanonicalError);
  assert.throws(() => canonicalize({ a: undefined }), CanonicalError);
  assert.throws(() => canonicalize(Number.NaN), CanonicalError);
  assert.equal(canonicalize(parseStrict('{"__proto__":1,"b":[-0.0,1E2,1e21]}')), '{"__proto__":1,"b":[0,100,1e+21]}');
});

/** Builds a case of clients/conformance/jobs.json, one helper call per step. */
function buildCase(c) {
  const b = job(c.kernel, c.entry, c.profile === undefined ? undefined : { profile: c.profile });
  for (const step of c.steps) {
    const [[helper, a], ...rest] = Object.entries(step);
    assert.equal(rest.length, 0, 'a step is one helper call');
    switch (helper) {
      case 'input_f32':
        b.inputF32(a.name, a.values);
        break;
      case 'input_bytes':
        b.inputBytes(a.name, Buffer.from(a.bytes, 'base64'));
        break;
      case 'input_blob':
        b.inputBlob(a.name, a.digest);
        break;
      case 'output':
        b.output(a.name, a.size);
        break;
      case 'param':
        b.param(a.name, a.type, a.value);
        break;
      case 'state':
        b.state(a.name, a.key, a.mode, { mayBeAbsent: a.may_be_absent, maxSize: a.max_size });
        break;
      case 'secret':
        b.secret(a.name, a.tenant, a.secret, a.version);
        break;
      case 'limits':
        b.limits({ timeoutMs: a.timeout_ms, memoryBytes: a.memory_bytes, fuel: a.fuel, outputBytes: a.output_bytes });
        break;
      case 'attestation':
        b.attestation(a);
        break;
      case 'nonce':
        b.nonce(a);
        break;
      default:
        assert.fail(`unknown helper ${helper}`);
    }
  }
  return b;
}

test('job_ids', async (t) => {
  // The complete example of PROTOCOL.md §3, whose id the page gives.
  const example = job('sha256:8697cb4795bd6b690a70ba7d2fdd14d80067c96c924996601795730a11af40e8', 'saxpy')
    .inputF32('x', [1, 2, 3, 4])
    .inputBlob('y', 'sha256:1dc5c8e021c663cd8f7ecf1fb0c6d4112bc8d7f3c9e0095cd26bd7af7b8d7f13')
    .output('out', 16)
    .param('a', 'f32', 2.0)
    .limits({ timeoutMs: 2000, fuel: 100000000 })
    .attestation('any')
    .nonce('example-1');
  assert.equal(example.id(), 'sha256:3a4f37cc3eb0c594f5f9542ecc56c2fb95587af3060d1de46cb99adc46550eb3');

  const file = JSON.parse(readFileSync(join(REPO, 'clients', 'conformance', 'jobs.json'), 'utf8'));
  assert.ok(file.cases.length >= 4);
  for (const c of file.cases) {
    await t.test(c.name, (t) => {
      const built = buildCase(c);
      const canonical = built.canonical();
      const id = built.id();
      assert.equal(id, digestOf(Buffer.from(canonical, 'utf8')));
      assert.equal(canonicalize(parseStrict(canonical)), canonical);
      assert.equal(prepareJob(built.toSpec()).jobId, id);
      if (c.canonical === '' && c.job_id === '') {
        // Not blessed yet: the Rust side writes these (DTEE_BLESS=1 cargo test -p dtee-submitter
        // --test conformance). Until then there is nothing to compare with.
        t.diagnostic(`built ${id} ${canonical}`);
        t.todo('jobs.json has no canonical bytes or job id for this case yet');
        return;
      }
      assert.equal(canonical, c.canonical);
      assert.equal(id, c.job_id);
    });
  }
});

test('state_keys', async (t) => {
  // Cases of schemas/src/state.rs and PROTOCOL.md §7, always run.
  const ns = 'dtee';
  const hits = parseStateKey('alice/counters/hits');
  assert.equal(hits.tenant, 'alice');
  assert.equal(hits.group, null);
  assert.equal(hits.valueKey(ns), 'dtee:state:{alice}:counters/hits');
  assert.equal(hits.versionKey(ns), 'dtee:ver:{alice}:counters/hits');
  const orders = parseStateKey('alice/{eu}/orders');
  assert.equal(orders.group, 'eu');
  assert.equal(orders.valueKey(ns), 'dtee:state:{alice/eu}:{eu}/orders');
  assert.equal(orders.versionKey(ns), 'dtee:ver:{alice/eu}:{eu}/orders');
  assert.equal(parseStateKey('alice/{}x{y}').group, null, 'an empty first group is no group');
  assert.equal(parseStateKey('alice/{orders}/42').group, 'orders');
  for (const bad of ['', 'alice', 'alice/', '/x', 'al ice/x', 'alice/{a/b}x', 'a\u0007/x', 'alice/x\u0085', `${'a'.repeat(65)}/x`, `a/${'x'.repeat(255)}`]) {
    assert.throws(() => parseStateKey(bad), InvalidJobError, JSON.stringify(bad));
  }
  assert.doesNotThrow(() => parseStateKey(`a/${'x'.repeat(254)}`));

  // The shared vectors, when they exist. Expected format:
  // {"namespace": "dtee", "cases": [{"key", "valid" (or "accepted"), "group", "value_key", "version_key"}]}
  const path = join(VECTORS, 'state-keys.json');
  if (!existsSync(path)) {
    t.todo(`${path} does not exist yet; only the built-in cases ran`);
    return;
  }
  const file = JSON.parse(readFileSync(path, 'utf8'));
  const cases = Array.isArray(file) ? file : file.cases;
  assert.ok(Array.isArray(cases) && cases.length > 0, `${path}: no cases`);
  for (const c of cases) {
    const namespace = c.namespace ?? file.namespace ?? 'dtee';
    const valid = c.valid ?? c.accepted;
    assert.equal(typeof valid, 'boolean', `${path}: a case without "valid": ${JSON.stringify(c)}`);
    if (!valid) {
      assert.throws(() => parseStateKey(c.key), InvalidJobError, `${JSON.stringify(c.key)} was accepted`);
      continue;
    }
    const key = parseStateKey(c.key);
    if ('group' in c) assert.equal(key.group, c.group ?? null, `${c.key}: group`);
    if ('tenant' in c) assert.equal(key.tenant, c.tenant, `${c.key}: tenant`);
    if ('value_key' in c) assert.equal(key.valueKey(namespace), c.value_key, `${c.key}: value key`);
    if ('version_key' in c) assert.equal(key.versionKey(namespace), c.version_key, `${c.key}: version key`);
  }
});

test('nulls_refused', async () => {
  const kernel = digestOf(Buffer.alloc(0));
  // Every helper refuses null and undefined where a value is needed.
  assert.throws(() => job(null, 'main'), InvalidJobError);
  assert.throws(() => job(kernel, undefined), InvalidJobError);
  assert.throws(() => job(kernel, 'main').inputF32('x', null), InvalidJobError);
  assert.throws(() => job(kernel, 'main').inputBytes('x', null), InvalidJobError);
  assert.throws(() => job(kernel, 'main').inputBlob('x', null), InvalidJobError);
  assert.throws(() => job(kernel, 'main').output('out', null), InvalidJobError);
  assert.throws(() => job(kernel, 'main').param('a', 'f32', null), InvalidJobError);
  assert.throws(() => job(kernel, 'main').param('a', null, 1), InvalidJobError);
  assert.throws(() => job(kernel, 'main').state('s', 'guest/s', 'read_only', { mayBeAbsent: null }), InvalidJobError);
  assert.throws(() => job(kernel, 'main').state('s', 'guest/s', 'read_only', { maxSize: null }), InvalidJobError);
  assert.throws(() => job(kernel, 'main').limits({ fuel: null }), InvalidJobError);
  assert.throws(() => job(kernel, 'main').attestation(null), InvalidJobError);
  assert.throws(() => job(kernel, 'main').nonce(null), InvalidJobError);
  // A plain spec with null anywhere, at any depth, is refused before it is canonicalized.
  const spec = job(kernel, 'main').output('out', 4).toSpec();
  for (const holed of [
    { ...spec, nonce: null },
    { ...spec, limits: { fuel: null } },
    { ...spec, buffers: [{ ...spec.buffers[0], size: null }] },
    { ...spec, buffers: [null] },
    { ...spec, kernel: { ...spec.kernel, entry: null } },
  ]) {
    assert.throws(() => prepareJob(holed), InvalidJobError, JSON.stringify(holed));
    assert.throws(() => canonicalize(holed, { refuseNull: true }), CanonicalError);
  }
  // ... and nothing reaches the broker: a client whose connection throws on any use refuses
  // the job with InvalidJobError, not with the connection's error.
  const untouchable = () => {
    throw new Error('something was sent');
  };
  const client = new Client({
    connection: { createChannel: untouchable, createConfirmChannel: untouchable },
    redis: { mGet: untouchable, get: untouchable, set: untouchable },
    namespace: 'dtee',
    user: 'guest',
  });
  await assert.rejects(client.submit({ ...spec, nonce: null }), InvalidJobError);
  await assert.rejects(client.run({ ...spec, params: [{ name: 'a', type: 'f32', value: null }] }), InvalidJobError);
  await assert.rejects(client.runMany([{ ...spec, attestation: { platform: null } }]), InvalidJobError);
});

/** Hex of a 32-byte little-endian integer. */
function le32(n) {
  const out = Buffer.alloc(32);
  for (let i = 0; i < 32; i++) {
    out[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return out;
}

test('dsse_vectors', async (t) => {
  // The PAE example of the DSSE specification (ATTESTATION.md §5).
  assert.equal(pae('http://example.com/HelloWorld', Buffer.from('hello world')).toString(), 'DSSEv1 29 http://example.com/HelloWorld 11 hello world');

  // RFC 8032 §7.1, test 1.
  const rfcKey = Buffer.from('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a', 'hex');
  const rfcSig = Buffer.from('e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b', 'hex');
  assert.deepEqual(verifyEd25519Strict(rfcKey, Buffer.alloc(0), rfcSig), { ok: true });

  // Cases made here, of each kind the vectors cover.
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const key = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const message = Buffer.from('dtee conformance');
  const signature = sign(null, message, privateKey);
  assert.deepEqual(verifyEd25519Strict(key, message, signature), { ok: true });
  const L = 2n ** 252n + 27742317777372353535851937790883648493n;
  const P = 2n ** 255n - 19n;
  let s = 0n;
  for (let i = 63; i >= 32; i--) s = (s << 8n) | BigInt(signature[i]);
  const nonCanonicalS = Buffer.concat([signature.subarray(0, 32), le32(s + L)]);
  const refusals = [
    ['non-canonical S', key, message, nonCanonicalS, /S >= L/],
    ['small-order key (identity)', Buffer.from('01'.padEnd(64, '0'), 'hex'), message, signature, /small order/],
    ['small-order key (order 8)', Buffer.from('c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a', 'hex'), message, signature, /small order/],
    ['non-canonical key (y = p + 1)', le32(P + 1n), message, signature, /not a canonical encoding/],
    ['non-canonical key (x = 0, sign bit set)', Buffer.from('0100000000000000000000000000000000000000000000000000000000000080', 'hex'), message, signature, /not a canonical encoding/],
    ['non-canonical R', key, message, Buffer.concat([le32(P + 2n), signature.subarray(32)]), /R is not a canonical encoding/],
    ['small-order R', key, message, Buffer.concat([Buffer.from('ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', 'hex'), signature.subarray(32)]), /R is a point of small order/],
    ['wrong message', key, Buffer.from('dtee conformancf'), signature, /does not verify/],
    ['short signature', key, message, signature.subarray(0, 63), /64 bytes/],
  ];
  for (const [name, k, m, sig, why] of refusals) {
    const outcome = verifyEd25519Strict(k, m, sig);
    assert.equal(outcome.ok, false, `${name} was accepted`);
    assert.match(outcome.why, why, name);
  }
  // Many honest signatures all verify.
  for (let i = 0; i < 32; i++) {
    const pair = generateKeyPairSync('ed25519');
    const m = randomBytes(i * 7);
    const k = pair.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    assert.equal(verifyEd25519Strict(k, m, sign(null, m, pair.privateKey)).ok, true);
  }

  // The shared vectors: {"cases": [{"name", "public_key", "message", "signature" (hex), "valid", "why"}]}.
  const path = join(VECTORS, 'ed25519', 'vectors.json');
  if (!existsSync(path)) {
    t.todo(`${path} does not exist yet; only the cases made here ran`);
    return;
  }
  const { cases } = JSON.parse(readFileSync(path, 'utf8'));
  assert.ok(Array.isArray(cases) && cases.length > 0, `${path}: no cases`);
  for (const c of cases) {
    const outcome = verifyEd25519Strict(Buffer.from(c.public_key, 'hex'), Buffer.from(c.message, 'hex'), Buffer.from(c.signature, 'hex'));
    assert.equal(outcome.ok, c.valid, `${c.name} (${c.why ?? ''}): ${outcome.why ?? 'accepted'}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Live cases
// ---------------------------------------------------------------------------------------------

let clientPromise = null;
const blobs = new Map();

/** The shared client of the live cases; it fails (never skips) without a broker. */
function live() {
  if (!env.namespace) throw new Error('DTEE_NAMESPACE must be set for the live cases (a namespace a worker serves)');
  clientPromise ??= Client.connect({ amqpUrl: env.amqpUrl, redisUrl: env.redisUrl, namespace: env.namespace, tls: env.tls });
  return clientPromise;
}

async function kernel(name) {
  if (!blobs.has(name)) {
    const client = await live();
    blobs.set(name, await client.putBlob(readFileSync(join(env.kernels, `${name}.wasm`))));
  }
  return blobs.get(name);
}

const nonce = (what) => `node-${what}-${randomUUID()}`;
const liveTest = (name, fn) => test(name, { skip: OFFLINE_ONLY && 'DTEE_TEST_OFFLINE=1' }, fn);

after(async () => {
  const client = await clientPromise?.catch(() => null);
  await client?.close();
});

async function saxpyJob(x, tag) {
  const client = await live();
  const y = await client.putBlob(f32Bytes(x.map(() => 0.5)));
  return job(await kernel('saxpy'), 'saxpy').inputF32('x', x).inputBlob('y', y).output('out', 4 * x.length).param('a', 'f32', 2).nonce(nonce(tag));
}

let saxpyResult = null;

liveTest('saxpy', async () => {
  const client = await live();
  const spec = await saxpyJob([1, 2, 3, 4], 'saxpy');
  const result = await client.run(spec, { timeoutMs: TIMEOUT_MS });
  assert.equal(result.status, 'succeeded');
  assert.equal(result.job_id, spec.id());
  const out = outputBytes(result, 'out');
  assert.deepEqual(readF32(out), [2.5, 4.5, 6.5, 8.5]);
  const output = result.outputs.find((o) => o.name === 'out');
  assert.equal(output.size, 16);
  assert.equal(output.digest, `sha256:${createHash('sha256').update(out).digest('hex')}`);
  saxpyResult = result;
});

liveTest('sha256', async () => {
  const client = await live();
  const data = randomBytes(1 << 20);
  const blob = await client.putBlob(data);
  const result = await client.run(job(await kernel('sha256'), 'sha256').inputBlob('data', blob).output('digest', 32), { timeoutMs: TIMEOUT_MS });
  assert.equal(result.status, 'succeeded');
  assert.deepEqual(outputBytes(result, 'digest'), createHash('sha256').update(data).digest());
});

liveTest('dedup', async () => {
  const client = await live();
  const spec = await saxpyJob([3, 1, 4, 1], 'dedup');
  const first = await client.run(spec, { timeoutMs: TIMEOUT_MS });
  const second = await client.run(spec, { timeoutMs: TIMEOUT_MS });
  assert.equal(first.status, 'succeeded');
  assert.equal(second.execution.execution_id, first.execution.execution_id);
  assert.deepEqual(second, first);
});

liveTest('state_increments', async () => {
  const client = await live();
  const key = `${client.user}/${randomUUID()}/counter`;
  const increment = await kernel('increment');
  const jobs = Array.from({ length: 20 }, (_, i) =>
    job(increment, 'increment').state('counter', key, 'read_write', { mayBeAbsent: true }).nonce(nonce(`inc-${i}`)),
  );
  const results = await client.runMany(jobs, { timeoutMs: 120_000 });
  assert.equal(results.length, 20);
  for (const [i, result] of results.entries()) {
    assert.equal(result.status, 'succeeded', `job ${i}: ${result.error?.code} ${result.error?.message}`);
    assert.equal(result.job_id, jobs[i].id());
  }
  const { value, version } = await client.stateGet(key);
  assert.equal(value.length, 8);
  assert.equal(value.readBigUInt64LE(0), 20n);
  assert.equal(version, 20);
});

liveTest('failed_code', async () => {
  const client = await live();
  const spec = job(await kernel('trap'), 'boom').nonce(nonce('trap'));
  await assert.rejects(client.run(spec, { timeoutMs: TIMEOUT_MS }), (error) => {
    assert.ok(error instanceof JobFailedError, `${error}`);
    assert.equal(error.code, 'kernel_trapped');
    assert.equal(error.result.status, 'failed');
    assert.equal(error.result.error.code, 'kernel_trapped');
    assert.equal(error.result.job_id, spec.id());
    return true;
  });
  // Without throwing, the failed result comes back as it is.
  const result = await client.run(spec, { timeoutMs: TIMEOUT_MS, throwOnFailure: false });
  assert.equal(result.error.code, 'kernel_trapped');
});

liveTest('wait_after_result', async () => {
  const client = await live();
  const spec = await saxpyJob([5, 6, 7, 8], 'wait');
  const ran = await client.run(spec, { timeoutMs: TIMEOUT_MS });
  // A new waiter, on a connection of its own, opened after the result was cached.
  const other = await Client.connect({ amqpUrl: env.amqpUrl, redisUrl: env.redisUrl, namespace: env.namespace, tls: env.tls });
  try {
    const started = Date.now();
    const waited = await other.wait(spec.id(), { timeoutMs: 5_000 });
    assert.ok(Date.now() - started < 5_000);
    assert.deepEqual(waited, ran);
  } finally {
    await other.close();
  }
});

liveTest('result_of_another_job_refused', async () => {
  const client = await live();
  const spec = await saxpyJob([9, 9, 9, 9], 'genuine');
  const genuine = await client.run(spec, { timeoutMs: TIMEOUT_MS });
  const other = await saxpyJob([1, 1, 1, 1], 'another');
  const otherId = other.id();
  // Whoever can write Redis stores one job's genuine result as another job's.
  const redis = await connectRedis(env.redisUrl, loadTls(env.tls));
  const key = `${env.namespace}:result:${otherId}`;
  try {
    await redis.set(key, JSON.stringify(genuine), { EX: 60 });
    await assert.rejects(client.cachedResult(otherId), MalformedResultError);
    await assert.rejects(client.wait(otherId, { timeoutMs: 2_000 }), MalformedResultError);
  } finally {
    await redis.del(key);
    await redis.quit().catch(() => redis.disconnect().catch(() => {}));
  }
  // Published under the other job's routing key, it is not taken as that job's answer.
  const waiting = client.wait(otherId, { timeoutMs: 1_500 });
  await new Promise((resolve) => setTimeout(resolve, 300));
  const { connection } = await connectAmqp(env.amqpUrl, loadTls(env.tls), {});
  try {
    const channel = await connection.createChannel();
    channel.publish(`${env.namespace}.results`, `${client.user}.${otherId}`, Buffer.from(JSON.stringify(genuine)));
    await channel.close();
  } finally {
    await connection.close();
  }
  await assert.rejects(waiting, TimeoutError);
});

liveTest('many_on_one_queue', async () => {
  const client = await live();
  const inputs = Array.from({ length: 10 }, (_, i) => [i, i + 1, i + 2, i + 3]);
  const jobs = await Promise.all(inputs.map((x, i) => saxpyJob(x, `many-${i}`)));
  const results = await client.runMany(jobs, { timeoutMs: TIMEOUT_MS });
  for (const [i, result] of results.entries()) {
    assert.equal(result.status, 'succeeded');
    assert.equal(result.job_id, jobs[i].id());
    assert.deepEqual(readF32(outputBytes(result, 'out')), inputs[i].map((x) => Math.fround(Math.fround(2 * x) + 0.5)));
  }
});

liveTest('cancel', async () => {
  const client = await live();
  const spec = await saxpyJob([1, 1, 1, 1], 'cancel');
  await client.cancel(spec.id(), 3600);
  await assert.rejects(client.run(spec, { timeoutMs: TIMEOUT_MS }), (error) => {
    assert.ok(error instanceof JobFailedError, `${error}`);
    assert.equal(error.code, 'cancelled');
    return true;
  });
});

liveTest('no_route', async () => {
  const client = await live();
  const spec = job(await kernel('saxpy'), 'saxpy', { target: 'no-worker-serves-this' }).nonce(nonce('noroute'));
  await assert.rejects(client.submit(spec), NoRouteError);
  await assert.rejects(client.run(spec, { timeoutMs: 5_000 }), NoRouteError);
  // So is a platform no worker of the namespace attests with.
  await assert.rejects(client.submit((await saxpyJob([1], 'snp')).attestation('snp')), NoRouteError);
});

liveTest('nack_resent_then_refused', async () => {
  // A quorum queue of this test's own, bound to the tenant's routing key for a target no worker
  // serves, holds one job and refuses publishes beyond: each publish is nacked.
  const client = await live();
  const target = `nack-node-${randomUUID().slice(0, 8)}`;
  const queue = `${env.namespace}.test.${target}`;
  const { connection } = await connectAmqp(env.amqpUrl, loadTls(env.tls), {});
  const channel = await connection.createChannel();
  await channel.assertQueue(queue, {
    durable: true,
    arguments: { 'x-queue-type': 'quorum', 'x-max-length': 1, 'x-overflow': 'reject-publish' },
  });
  await channel.bindQueue(queue, `${env.namespace}.jobs`, `${client.user}.${target}`);
  const echo = await kernel('echo');
  const spec = (label) => job(echo, 'echo', { target }).output('out', 8).nonce(nonce(label));
  try {
    // A quorum queue takes publishes until it is over its limit: fill it until it refuses one.
    // Without resends, the first nack is the answer.
    client.nackRetries = 0;
    let kept = 0;
    let atOnce;
    for (;;) {
      const started = Date.now();
      try {
        await client.submit(spec(`fill-${kept}`));
      } catch (error) {
        assert.ok(error instanceof BrokerRefusedError, `${error}`);
        atOnce = Date.now() - started;
        break;
      }
      kept += 1;
      assert.ok(kept <= 5, `a queue limited to one job took ${kept}`);
    }
    let started;
    // The default: two resends, after 100 ms and 400 ms, each refused as well.
    client.nackRetries = DEFAULT_NACK_RETRIES;
    started = Date.now();
    await assert.rejects(client.submit(spec('thrice')), BrokerRefusedError);
    const afterResends = Date.now() - started;
    assert.ok(afterResends >= 500 && afterResends > atOnce, `refused after ${afterResends} ms (at once: ${atOnce} ms)`);
    assert.equal((await channel.checkQueue(queue)).messageCount, kept, 'a refused job was kept');
  } finally {
    client.nackRetries = DEFAULT_NACK_RETRIES;
    await channel.deleteQueue(queue);
    await connection.close();
  }
});

liveTest('verify', async () => {
  const client = await live();
  const result = saxpyResult ?? (await client.run(await saxpyJob([1, 2, 3, 4], 'verify'), { timeoutMs: TIMEOUT_MS }));
  const policy = join(REPO, 'deploy', 'policies', 'software-dev.toml');
  const failed = (verdict) => verdict.checks.filter((c) => !c.passed).map((c) => c.name);

  const verdict = await verify(result, policy);
  assert.equal(verdict.accepted, true, JSON.stringify(verdict.checks));
  assert.ok(verdict.checks.some((c) => c.name === 'envelope.signature' && c.passed));
  // The dtee binary agrees (the call-out used for TPM and SEV-SNP evidence).
  const outside = await verify(result, policy, { delegate: 'always', dteeBin: env.dteeBin });
  assert.equal(outside.accepted, true, JSON.stringify(outside.checks));
  assert.ok(outside.delegated);

  const tampered = structuredClone(result);
  const data = Buffer.from(tampered.outputs[0].data, 'base64');
  data[0] ^= 1;
  tampered.outputs[0].data = data.toString('base64');
  const otherJob = { ...structuredClone(result), job_id: digestOf(Buffer.from('another job')) };
  const flipped = structuredClone(result);
  const sig = Buffer.from(flipped.attestation.envelope.signatures[0].sig, 'base64');
  sig[5] ^= 0x40;
  flipped.attestation.envelope.signatures[0].sig = sig.toString('base64');
  for (const [name, changed, check] of [
    ['output data changed', tampered, 'result.output_data'],
    ['another job_id', otherJob, 'result.job_id'],
    ['a signature byte flipped', flipped, 'envelope.signature'],
  ]) {
    const rejected = await verify(changed, policy);
    assert.equal(rejected.accepted, false, name);
    assert.deepEqual(failed(rejected), [check], name);
    const rejectedOutside = await verify(changed, policy, { delegate: 'always', dteeBin: env.dteeBin });
    assert.equal(rejectedOutside.accepted, false, `${name} (dtee verify)`);
  }
  const strict = await verify(result, {});
  assert.equal(strict.accepted, false);
  assert.deepEqual(failed(strict), ['software.allowed']);
});
