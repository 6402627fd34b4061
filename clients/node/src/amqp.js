// AMQP settings: one URL or several nodes of a RabbitMQ cluster (a comma-separated string or an
// array), `amqp://` or `amqps://`; the first node that answers is used, in order.
import { readFileSync } from 'node:fs';

import amqp from 'amqplib';

import { DteeError } from './errors.js';
import { redact } from './redis.js';

/** The URLs of an AMQP setting. */
export function amqpUrls(setting) {
  const parts = Array.isArray(setting) ? setting : String(setting ?? '').split(',');
  const urls = parts.map((url) => String(url).trim()).filter((url) => url !== '');
  if (urls.length === 0) throw new DteeError('no AMQP URL given');
  for (const url of urls) {
    if (!/^amqps?:\/\//i.test(url)) throw new DteeError(`${redact(url)} is not an amqp:// or amqps:// URL`);
  }
  return urls;
}

/**
 * TLS material from files: `{caFile, certFile, keyFile}` → `{ca, cert, key}` (Buffers, absent
 * where no file is named). A certificate needs its key and a key its certificate.
 */
export function loadTls({ caFile, certFile, keyFile } = {}) {
  if (!certFile !== !keyFile) throw new DteeError('a TLS client certificate needs its key, and a key its certificate');
  const read = (file) => (file ? readFileSync(file) : undefined);
  return { ca: read(caFile), cert: read(certFile), key: read(keyFile) };
}

/**
 * Connects to the first node of `setting` that answers. Every URL must name the same user (the
 * tenant). Returns `{connection, url}`.
 */
export async function connectAmqp(setting, tls, socketOptions) {
  const urls = amqpUrls(setting);
  const users = new Set(urls.map(amqpUser));
  if (users.size !== 1) throw new DteeError(`the AMQP URLs name different users (${[...users].join(', ')}): the user is the tenant`);
  const secure = {};
  if (tls.ca) secure.ca = [tls.ca];
  if (tls.cert) Object.assign(secure, { cert: tls.cert, key: tls.key });
  const failures = [];
  for (const url of urls) {
    try {
      const connection = await amqp.connect(url, /^amqps:/i.test(url) ? { ...socketOptions, ...secure } : socketOptions);
      return { connection, url };
    } catch (error) {
      failures.push(`${redact(url)}: ${error.message}`);
    }
  }
  const error = new DteeError(`cannot connect to RabbitMQ: ${failures.join('; ')}`);
  throw error;
}

/**
 * The user name of an AMQP URL (percent-decoded), `guest` when it has none, as amqplib does.
 * @param {string} url
 */
export function amqpUser(url) {
  let user = '';
  try {
    user = decodeURIComponent(new URL(url).username);
  } catch {
    user = '';
  }
  return user === '' ? 'guest' : user;
}
