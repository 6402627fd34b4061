// Waiting for results without a race (PROTOCOL.md §9): one channel, one exclusive auto-delete
// server-named queue, a binding per awaited job id, results dispatched by routing key.
//
// For each watch: bind `<user>.<job id>` (shared by every watch of that id, removed when the
// last one ends), wait for bind-ok, THEN read Redis: only the result key for a job about to be
// published, the result and failure keys (MGET) for a job published elsewhere.

import { commandOptionsFor, getMany } from './redis.js';
import { parseStrict } from './jcs.js';
import { DteeError, MalformedResultError, TimeoutError } from './errors.js';

function parseResult(bytes) {
  let result;
  try {
    result = parseStrict(bytes);
  } catch (error) {
    throw new MalformedResultError(`malformed result: ${error.message}`, { cause: error });
  }
  if (result === null || typeof result !== 'object' || Array.isArray(result) || typeof result.job_id !== 'string') {
    throw new MalformedResultError('malformed result: not a dtee.result/v1 object');
  }
  return result;
}

/**
 * Parses what Redis holds as `jobId`'s result, refusing one that names another job: a result
 * stands only for the job it names (whoever can write the result key could otherwise pass one
 * job's genuine result off as another's).
 * @internal
 */
export function storedResult(jobId, bytes) {
  const result = parseResult(bytes);
  if (result.job_id !== jobId) {
    throw new MalformedResultError(`the result stored for ${jobId} is the result of another job, ${result.job_id}: refused`);
  }
  return result;
}

/** @internal */
export class ResultWaiter {
  #connection;
  #namespace;
  #user;
  #redis;
  #ready = null; // Promise<{channel, queue}> while the channel lives
  #bindings = new Map(); // job id -> {count, bound: Promise}
  #watchers = new Map(); // job id -> Set<watcher>

  constructor(connection, { namespace, user, redis }) {
    this.#connection = connection;
    this.#namespace = namespace;
    this.#user = user;
    this.#redis = redis;
  }

  get #exchange() {
    return `${this.#namespace}.results`;
  }

  #routingKey(jobId) {
    return `${this.#user}.${jobId}`;
  }

  /** The channel and queue, created on first use and again after the channel closed. */
  #setup() {
    if (this.#ready) return this.#ready;
    const ready = (async () => {
      const channel = await this.#connection.createChannel();
      const lost = (error) => this.#lost(ready, error ?? new Error('the result channel closed'));
      channel.on('error', lost);
      channel.on('close', () => lost());
      const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
      await channel.consume(queue, (message) => this.#dispatch(message), { noAck: true, exclusive: true });
      return { channel, queue };
    })();
    this.#ready = ready;
    ready.catch(() => {
      if (this.#ready === ready) this.#ready = null;
    });
    return ready;
  }

  /** The channel closed: every watcher fails, and the next watch starts over. */
  #lost(ready, error) {
    if (this.#ready !== ready) return;
    this.#ready = null;
    this.#bindings.clear();
    const watchers = [...this.#watchers.values()].flatMap((set) => [...set]);
    this.#watchers.clear();
    for (const watcher of watchers) watcher.reject(error);
  }

  #dispatch(message) {
    if (!message) return; // consumer cancelled by the broker; the close handler follows
    const key = message.fields.routingKey;
    const prefix = `${this.#user}.`;
    let jobId = key.startsWith(prefix) ? key.slice(prefix.length) : null;
    let result;
    try {
      if (jobId === null || !this.#watchers.has(jobId)) {
        // Not a routing key of a watched id: the body's job_id decides.
        result = parseResult(message.content);
        jobId = result.job_id;
      }
      if (!this.#watchers.has(jobId)) return; // a duplicate, or a job nobody waits for any more
      result ??= parseResult(message.content);
      // Published under one job's key with another's result: not an answer.
      if (result.job_id !== jobId) return;
    } catch {
      return; // not a result: nothing to deliver
    }
    const watchers = this.#watchers.get(jobId);
    this.#watchers.delete(jobId);
    for (const watcher of watchers) watcher.resolve(result);
  }

  /**
   * Binds the job id, then reads Redis. The returned watch must be ended with `result()` or
   * `cancel()` so that its binding goes.
   * @param {string} jobId
   * @param {{acceptFailure: boolean}} options acceptFailure: also read the failure key
   */
  async watch(jobId, { acceptFailure }) {
    const { channel, queue } = await this.#setup();
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {}); // handled by result(); avoids an unhandled rejection meanwhile
    const watcher = { resolve, reject };
    let set = this.#watchers.get(jobId);
    if (!set) this.#watchers.set(jobId, (set = new Set()));
    set.add(watcher);
    let binding = this.#bindings.get(jobId);
    if (!binding) {
      binding = { count: 0, channel, bound: channel.bindQueue(queue, this.#exchange, this.#routingKey(jobId)) };
      binding.bound.catch(() => {});
      this.#bindings.set(jobId, binding);
    }
    binding.count++;
    const watch = new Watch(this, jobId, watcher, promise, channel, queue);
    try {
      await binding.bound;
      const options = commandOptionsFor();
      const keys = [`${this.#namespace}:result:${jobId}`];
      if (acceptFailure) keys.push(`${this.#namespace}:failure:${jobId}`);
      const values = await getMany(this.#redis, options, keys);
      const found = values.find((value) => value !== null && value !== undefined);
      if (found) watch.cached = storedResult(jobId, found);
    } catch (error) {
      await watch.cancel();
      throw error;
    }
    return watch;
  }

  /** @internal Ends a watcher: removes it, and the binding once no watcher of the id is left. */
  async release(jobId, watcher, channel, queue) {
    const set = this.#watchers.get(jobId);
    if (set) {
      set.delete(watcher);
      if (set.size === 0) this.#watchers.delete(jobId);
    }
    const binding = this.#bindings.get(jobId);
    if (!binding || binding.channel !== channel) return; // the channel was lost meanwhile
    binding.count--;
    if (binding.count > 0) return;
    this.#bindings.delete(jobId);
    try {
      await channel.unbindQueue(queue, this.#exchange, this.#routingKey(jobId));
    } catch {
      // The channel is gone, and the binding with its queue.
    }
  }

  async close() {
    const ready = this.#ready;
    if (!ready) return;
    this.#lost(ready, new DteeError('the client was closed'));
    try {
      const { channel } = await ready;
      await channel.close();
    } catch {
      // Already closed.
    }
  }
}

/** A pending wait for one job id. */
export class Watch {
  constructor(waiter, jobId, watcher, promise, channel, queue) {
    this.waiter = waiter;
    this.jobId = jobId;
    this.watcher = watcher;
    this.promise = promise;
    this.channel = channel;
    this.queue = queue;
    /** The result found in Redis right after binding, if any. */
    this.cached = null;
    this.ended = false;
  }

  /**
   * The first result for the id: the cached one, else the first message, within timeoutMs.
   * @param {number} timeoutMs
   */
  async result(timeoutMs) {
    if (this.cached) {
      await this.cancel();
      return this.cached;
    }
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(this.jobId, timeoutMs)), timeoutMs);
    });
    try {
      return await Promise.race([this.promise, timeout]);
    } finally {
      clearTimeout(timer);
      await this.cancel();
    }
  }

  /** Stops waiting (idempotent). */
  async cancel() {
    if (this.ended) return;
    this.ended = true;
    await this.waiter.release(this.jobId, this.watcher, this.channel, this.queue);
  }
}
