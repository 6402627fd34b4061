// The dtee client: blobs in Redis, jobs published to RabbitMQ with publisher confirms, results
// awaited without a race (PROTOCOL.md §5, §7, §9). One AMQP connection carries a confirm
// channel for publishing and one channel with the result queue.

import { amqpUser, connectAmqp, loadTls } from './amqp.js';
import { commandOptionsFor, connectRedis, getMany } from './redis.js';
import { digestOf, isDigest } from './digest.js';
import { prepareJob } from './job.js';
import { isRoutableTenant, isValidNamespace, parseStateKey } from './state.js';
import { ResultWaiter, storedResult } from './waiter.js';
import {
  BrokerRefusedError,
  DteeError,
  InvalidJobError,
  JobFailedError,
  NoRouteError,
  UnroutableUserError,
} from './errors.js';

/** The default AMQP URL. */
export const DEFAULT_AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672/%2f';
/** The default Redis URL. */
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
/** The default namespace. */
export const DEFAULT_NAMESPACE = 'dtee';
/** Header with the publication time, Unix milliseconds (a signed 64-bit integer). */
export const HEADER_SUBMITTED_AT = 'dtee-submitted-unix-ms';
/** Default time to wait for a result. */
export const DEFAULT_TIMEOUT_MS = 60_000;
/** Default lifetime of a revocation (`cancel`): 7 days. */
export const DEFAULT_CANCEL_TTL_SECS = 604_800;

export { amqpUser };

function noNamespace(namespace, error) {
  return new DteeError(`namespace ${JSON.stringify(namespace)} does not exist on this broker (no worker has ever started in it): ${error.message}`, { cause: error });
}

function refuseBadDigest(jobId) {
  if (!isDigest(jobId)) throw new InvalidJobError(`${JSON.stringify(jobId)} is not a job id (sha256: and 64 lowercase hex digits)`);
}

/**
 * A connection to a dtee deployment: one AMQP connection and one Redis connection.
 * Create it with `Client.connect`, end it with `close()`.
 */
/** How many times a client publishes a nacked job again by default (`client.nackRetries`). */
export const DEFAULT_NACK_RETRIES = 2;

/** The pause before the `attempt`-th resend of a nacked job: 100 ms, 400 ms, 1.6 s, ..., at most 5 s. */
export function nackBackoffMs(attempt) {
  return Math.min(100 * 4 ** (attempt - 1), 5_000);
}

export class Client {
  #connection;
  #redis;
  #waiter;
  #publisher = null; // Promise<{channel, inflight, error}>
  #closed = false;

  /** @private Use Client.connect. */
  constructor({ connection, redis, namespace, user }) {
    this.#connection = connection;
    this.#redis = redis;
    /** The namespace of every exchange, queue and Redis key used. */
    this.namespace = namespace;
    /** The AMQP user name: the tenant of every job this client publishes. */
    this.user = user;
    this.#waiter = new ResultWaiter(connection, { namespace, user, redis });
    /**
     * How many times a job the broker nacks is published again (after 100 ms, then 400 ms)
     * before BrokerRefusedError. A queue at its length limit refuses every resend too, but a
     * quorum queue also nacks when it could not register the publisher in time on a busy
     * broker, and a resend then goes through. A resend of a job the broker kept after all is a
     * duplicate the workers answer once. `0`: no resend.
     */
    this.nackRetries = DEFAULT_NACK_RETRIES;
  }

  /**
   * Connects to RabbitMQ and Redis.
   * @param {{amqpUrl?: string | string[], redisUrl?: string, namespace?: string, connectTimeoutMs?: number,
   *   tls?: {caFile?: string, certFile?: string, keyFile?: string}}} [options]
   *   defaults: `amqp://guest:guest@127.0.0.1:5672/%2f`, `redis://127.0.0.1:6379`, `dtee`, 10 s.
   *   `amqpUrl` may list several RabbitMQ nodes (comma-separated or an array): the first that
   *   answers is used. `redisUrl` `redis+cluster://` or `rediss+cluster://host:port,host:port`
   *   selects Redis Cluster. `amqps://` and `rediss://` use `tls` (PEM files: a CA, a client
   *   certificate and key); host names are verified.
   * @returns {Promise<Client>}
   */
  static async connect({
    amqpUrl = DEFAULT_AMQP_URL,
    redisUrl = DEFAULT_REDIS_URL,
    namespace = DEFAULT_NAMESPACE,
    connectTimeoutMs = 10_000,
    tls = {},
  } = {}) {
    if (!isValidNamespace(namespace)) {
      throw new DteeError(`namespace ${JSON.stringify(namespace)} must be 1 to 48 of a-z, 0-9, '_', '-', starting with a letter or digit`);
    }
    const material = loadTls(tls);
    const { connection, url } = await connectAmqp(amqpUrl, material, {
      timeout: connectTimeoutMs,
      clientProperties: { connection_name: 'dtee node client' },
    });
    connection.on('error', () => {}); // reported through the channels and 'close'
    let redis;
    try {
      redis = await connectRedis(redisUrl, material, {
        connectTimeout: connectTimeoutMs,
        // Give up after a few attempts instead of retrying forever, so that a Redis that is
        // down fails the call instead of hanging it.
        reconnectStrategy: (retries, cause) => (retries >= 5 ? cause : Math.min(100 * 2 ** retries, 2000)),
      });
    } catch (error) {
      await connection.close().catch(() => {});
      throw error;
    }
    return new Client({ connection, redis, namespace, user: amqpUser(url) });
  }

  /** The confirm channel, created on first use and again after it closed. */
  #publishChannel() {
    if (this.#publisher) return this.#publisher;
    const publisher = (async () => {
      const channel = await this.#connection.createConfirmChannel();
      const state = { channel, inflight: [], error: null };
      channel.on('error', (error) => {
        state.error = error;
      });
      channel.on('close', () => {
        if (this.#publisher === publisher) this.#publisher = null;
      });
      // A mandatory job that no queue takes comes back before its confirm. Returns arrive in
      // publication order, so the first unconfirmed publication with the same id and routing
      // key is the one returned.
      channel.on('return', (message) => {
        const entry = state.inflight.find(
          (e) => !e.returned && e.messageId === message.properties.messageId && e.routingKey === message.fields.routingKey,
        );
        if (entry) entry.returned = true;
      });
      return state;
    })();
    this.#publisher = publisher;
    publisher.catch(() => {
      if (this.#publisher === publisher) this.#publisher = null;
    });
    return publisher;
  }

  async #publish(prepared) {
    // Every resend carries the first publication's time, as the Rust and Python clients do.
    const submittedAt = Date.now();
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.#publishOnce(prepared, submittedAt);
      } catch (error) {
        if (!(error instanceof BrokerRefusedError) || attempt >= this.nackRetries) throw error;
        await new Promise((resolve) => setTimeout(resolve, nackBackoffMs(attempt + 1)));
      }
    }
  }

  async #publishOnce(prepared, submittedAt) {
    if (!isRoutableTenant(this.user)) throw new UnroutableUserError(this.user);
    const state = await this.#publishChannel();
    const exchange = `${this.namespace}.jobs`;
    const routingKey = `${this.user}.${prepared.routingKey}`;
    const entry = { messageId: prepared.jobId, routingKey, returned: false };
    state.inflight.push(entry);
    try {
      await new Promise((resolve, reject) => {
        const confirmed = (error) => {
          if (!error) {
            if (entry.returned) reject(new NoRouteError(routingKey, this.namespace));
            else resolve();
          } else if (/nack/i.test(error.message)) {
            reject(new BrokerRefusedError(prepared.jobId, { cause: error }));
          } else if (state.error?.code === 404) {
            reject(noNamespace(this.namespace, state.error));
          } else {
            const why = state.error ? state.error.message : error.message;
            reject(new DteeError(`job ${prepared.jobId} was not confirmed (its outcome is unknown; publishing it again is safe): ${why}`, { cause: state.error ?? error }));
          }
        };
        try {
          state.channel.publish(
            exchange,
            routingKey,
            prepared.body,
            {
              mandatory: true,
              messageId: prepared.jobId,
              userId: this.user,
              contentType: 'application/json',
              type: 'dtee.job/v1',
              deliveryMode: 2,
              headers: { [HEADER_SUBMITTED_AT]: { '!': 'long', value: submittedAt } },
            },
            confirmed,
          );
        } catch (error) {
          reject(new DteeError(`cannot publish job ${prepared.jobId}: ${error.message}`, { cause: error }));
        }
      });
    } finally {
      state.inflight.splice(state.inflight.indexOf(entry), 1);
    }
  }

  /**
   * Stores bytes (a kernel or a large input) under their digest, if that key is absent
   * (`SET <ns>:blob:<digest> NX`). Store blobs before submitting the jobs that name them.
   * @param {Uint8Array | ArrayBuffer} bytes
   * @returns {Promise<string>} the digest
   */
  async putBlob(bytes) {
    const data = bytes instanceof ArrayBuffer ? Buffer.from(bytes) : bytes;
    if (!(data instanceof Uint8Array)) throw new TypeError('putBlob takes a Uint8Array, Buffer or ArrayBuffer');
    const buffer = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const digest = digestOf(buffer);
    await this.#redis.set(`${this.namespace}:blob:${digest}`, buffer, { NX: true });
    return digest;
  }

  /**
   * Publishes a job (its canonical bytes, mandatory, with a publisher confirm) and returns its
   * id without waiting for the result. Rejects with NoRouteError when no queue serves its
   * routing key, BrokerRefusedError on a nack that lasted through `nackRetries` resends.
   * @param {import('./job.js').JobBuilder | object} jobOrSpec
   * @returns {Promise<string>} the job id
   */
  async submit(jobOrSpec) {
    const prepared = prepareJob(jobOrSpec);
    await this.#publish(prepared);
    return prepared.jobId;
  }

  async #watch(jobId, acceptFailure) {
    try {
      return await this.#waiter.watch(jobId, { acceptFailure });
    } catch (error) {
      throw error?.code === 404 ? noNamespace(this.namespace, error) : error;
    }
  }

  #outcome(result, throwOnFailure) {
    if (result.status !== 'succeeded' && throwOnFailure) {
      const code = typeof result.error?.code === 'string' ? result.error.code : 'unknown';
      const message = typeof result.error?.message === 'string' ? result.error.message : `status ${result.status}`;
      throw new JobFailedError(code, message, result);
    }
    return result;
  }

  /**
   * Submits a job and waits for its result without a race: binds the result queue to the id,
   * reads the cached result (result key only), and publishes only when none is cached.
   * @param {import('./job.js').JobBuilder | object} jobOrSpec
   * @param {{timeoutMs?: number, throwOnFailure?: boolean}} [options] timeoutMs default 60 s;
   *   throwOnFailure (default true): reject with JobFailedError when the result says `failed`
   * @returns {Promise<object>} the `dtee.result/v1` result
   */
  async run(jobOrSpec, { timeoutMs = DEFAULT_TIMEOUT_MS, throwOnFailure = true } = {}) {
    const prepared = prepareJob(jobOrSpec);
    if (!isRoutableTenant(this.user)) throw new UnroutableUserError(this.user);
    const watch = await this.#watch(prepared.jobId, false);
    if (!watch.cached) {
      try {
        await this.#publish(prepared);
      } catch (error) {
        await watch.cancel();
        throw error;
      }
    }
    return this.#outcome(await watch.result(timeoutMs), throwOnFailure);
  }

  /**
   * Runs several jobs at once on this connection's one result queue. Resolves to their
   * results in the order of `jobs`, failed results included (no JobFailedError); rejects with
   * the first other error (no route, nack, timeout) once every job has settled.
   * @param {Array<import('./job.js').JobBuilder | object>} jobs
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<object[]>}
   */
  async runMany(jobs, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const settled = await Promise.allSettled(jobs.map((j) => this.run(j, { timeoutMs, throwOnFailure: false })));
    const failure = settled.find((s) => s.status === 'rejected');
    if (failure) throw failure.reason;
    return settled.map((s) => s.value);
  }

  /**
   * Waits for the result of a job published elsewhere (or earlier): binds the id, then reads
   * the result and failure keys (MGET) and takes the result key's value, else the failure
   * key's, else the first message.
   * @param {string} jobId
   * @param {{timeoutMs?: number, throwOnFailure?: boolean}} [options]
   * @returns {Promise<object>}
   */
  async wait(jobId, { timeoutMs = DEFAULT_TIMEOUT_MS, throwOnFailure = true } = {}) {
    refuseBadDigest(jobId);
    const watch = await this.#watch(jobId, true);
    return this.#outcome(await watch.result(timeoutMs), throwOnFailure);
  }

  /**
   * Cancels this tenant's job: `SET <ns>:revoked:<user>:<job id> 1 EX ttlSecs`. A worker that
   * takes the job afterwards answers `cancelled` without running it; a job that already has a
   * final result keeps it.
   * @param {string} jobId
   * @param {number} [ttlSecs] default 604800 (7 days)
   */
  async cancel(jobId, ttlSecs = DEFAULT_CANCEL_TTL_SECS) {
    refuseBadDigest(jobId);
    if (!Number.isSafeInteger(ttlSecs) || ttlSecs < 1) throw new DteeError('ttlSecs must be a whole number of seconds, at least 1');
    await this.#redis.set(`${this.namespace}:revoked:${this.user}:${jobId}`, '1', { EX: ttlSecs });
  }

  /**
   * The cached success or final failure of a job, or null.
   * @param {string} jobId
   * @returns {Promise<object | null>}
   */
  async cachedResult(jobId) {
    refuseBadDigest(jobId);
    const bytes = await this.#redis.get(commandOptionsFor(), `${this.namespace}:result:${jobId}`);
    return bytes ? storedResult(jobId, bytes) : null;
  }

  /**
   * Reads a state value and its version with one MGET.
   * @param {string} key `<tenant>/<path>`
   * @returns {Promise<{value: Buffer | null, version: number}>}
   */
  async stateGet(key) {
    const parsed = parseStateKey(key);
    const [value, version] = await getMany(this.#redis, commandOptionsFor(), [parsed.valueKey(this.namespace), parsed.versionKey(this.namespace)]);
    return { value: value ?? null, version: version ? Number(version.toString()) : 0 };
  }

  /**
   * Writes a state value and bumps its version in one transaction (MULTI SET INCR EXEC), as
   * `dtee state put` does; never write state without its version.
   * @param {string} key `<tenant>/<path>`
   * @param {Uint8Array} bytes
   * @returns {Promise<number>} the new version
   */
  async statePut(key, bytes) {
    const parsed = parseStateKey(key);
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const replies = await this.#redis
      .multi()
      .set(parsed.valueKey(this.namespace), buffer)
      .incr(parsed.versionKey(this.namespace))
      .exec();
    return Number(replies[1]);
  }

  /** Closes the channels and both connections. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    await this.#waiter.close();
    const publisher = this.#publisher;
    this.#publisher = null;
    if (publisher) {
      try {
        await (await publisher).channel.close();
      } catch {
        // Already closed.
      }
    }
    await this.#connection.close().catch(() => {});
    await this.#redis.quit().catch(() => this.#redis.disconnect().catch(() => {}));
  }
}
