// The Redis client: node-redis v4's client package (@redis/client, which `redis@4` re-exports),
// for one node (`redis://`, `rediss://`) or Redis Cluster (`redis+cluster://`,
// `rediss+cluster://host:port,host:port`), as the Rust worker and `dtee` read the setting.
import redis from '@redis/client';

import { DteeError } from './errors.js';

export const { createClient, createCluster, commandOptions } = redis;

/** Command options that make replies Buffers (blobs and results are bytes). */
export function commandOptionsFor() {
  return commandOptions({ returnBuffers: true });
}

const clusters = new WeakSet();

/** Whether `url` asks for Redis Cluster. */
export function isClusterUrl(url) {
  return /^\s*rediss?\+cluster:\/\//i.test(url);
}

/**
 * A cluster URL's seed nodes, credentials and TLS: `rediss+cluster://u:p@a:1,b:2/` gives
 * nodes `[{host: 'a', port: 1}, {host: 'b', port: 2}]`, user `u`, password `p`, TLS. A node
 * without a port gets 6379.
 */
export function parseClusterUrl(url) {
  const match = /^\s*(rediss?)\+cluster:\/\/([^/?#]*)/i.exec(url);
  if (!match) throw new DteeError(`${redact(url)} is not a redis+cluster:// or rediss+cluster:// URL`);
  const authority = match[2];
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at) : null;
  const hosts = at >= 0 ? authority.slice(at + 1) : authority;
  let username;
  let password;
  if (userinfo !== null) {
    const colon = userinfo.indexOf(':');
    username = decodeURIComponent(colon >= 0 ? userinfo.slice(0, colon) : userinfo) || undefined;
    password = colon >= 0 ? decodeURIComponent(userinfo.slice(colon + 1)) : undefined;
  }
  const nodes = [];
  for (const raw of hosts.split(',')) {
    const host = raw.trim();
    if (host === '') continue;
    const parts = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d+))?$/.exec(host);
    const port = parts?.[3] === undefined ? 6379 : Number(parts[3]);
    if (!parts || !(port > 0 && port < 65536)) throw new DteeError(`${redact(url)}: ${JSON.stringify(host)} is not host:port`);
    nodes.push({ host: parts[1] ?? parts[2], port });
  }
  if (nodes.length === 0) throw new DteeError(`${redact(url)} names no node`);
  return { nodes, username, password, tls: match[1].toLowerCase() === 'rediss' };
}

/**
 * A connected client for `url`: one node, or a cluster (commands go to primaries, never to
 * replicas, as the waiting procedure needs). `tls` holds PEM `ca`, `cert` and `key` (any may be
 * absent) for rediss; `socket` extra socket options (timeouts, reconnection).
 */
export async function connectRedis(url, tls = {}, socket = {}) {
  const secure = /^\s*rediss(\+cluster)?:\/\//i.test(url);
  const tlsSocket = secure ? { tls: true, ...definedOnly(tls) } : {};
  let client;
  if (isClusterUrl(url)) {
    const parsed = parseClusterUrl(url);
    const scheme = parsed.tls ? 'rediss' : 'redis';
    client = createCluster({
      rootNodes: parsed.nodes.map(({ host, port }) => ({ url: `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}` })),
      defaults: { username: parsed.username, password: parsed.password, socket: { ...socket, ...tlsSocket } },
      useReplicas: false,
    });
    clusters.add(client);
  } else {
    client = createClient({ url, socket: { ...socket, ...tlsSocket } });
  }
  client.on('error', () => {}); // commands fail with the error; without a listener it would crash
  await client.connect();
  return client;
}

/** The values of `keys`, in order: one MGET on one node; per key on a cluster (MGET cannot
 * cross slots). */
export async function getMany(client, options, keys) {
  if (keys.length === 0) return [];
  if (clusters.has(client)) return Promise.all(keys.map((key) => client.get(options, key)));
  return client.mGet(options, keys);
}

/** `url` without its password. */
export function redact(url) {
  return String(url).replace(/^([a-z+]+:\/\/[^:@/]*):[^@/]*@/i, '$1:***@');
}

function definedOnly(object) {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined));
}
