// Namespaces, tenants and state keys (PROTOCOL.md §3 "State buffers", §7 "State keys"),
// as schemas/src/state.rs and schemas/src/namespace.rs define them.

import { InvalidJobError } from './errors.js';

const NAMESPACE = /^[a-z0-9][a-z0-9_-]{0,47}$/;
const TENANT = /^[A-Za-z0-9_.@-]{1,64}$/;
// Rust's char::is_control: the C0 and C1 control characters and DEL.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * Whether `name` is a valid namespace: 1 to 48 of a-z, 0-9, '_', '-', starting with a letter or digit.
 * @param {string} name
 */
export function isValidNamespace(name) {
  return typeof name === 'string' && NAMESPACE.test(name);
}

/**
 * Whether `tenant` can name a tenant: 1 to 64 of `A-Z a-z 0-9 _ . @ -`.
 * @param {string} tenant
 */
export function isValidTenant(tenant) {
  return typeof tenant === 'string' && TENANT.test(tenant);
}

/**
 * Whether a tenant (an AMQP user name) may submit jobs: a valid tenant without '.', and not '_'.
 * @param {string} tenant
 */
export function isRoutableTenant(tenant) {
  return isValidTenant(tenant) && !tenant.includes('.') && tenant !== '_';
}

/**
 * A parsed state key `<tenant>/<path>`, with its hash group and Redis keys.
 * @typedef {object} StateKey
 * @property {string} key the key as written
 * @property {string} tenant
 * @property {string} path
 * @property {string | null} group the hash group: the first non-empty `{…}` of the path
 * @property {string} hashTag `<tenant>` or `<tenant>/<group>`, without braces
 * @property {(namespace: string) => string} valueKey `<ns>:state:{tag}:<path>`
 * @property {(namespace: string) => string} versionKey `<ns>:ver:{tag}:<path>`
 */

/**
 * Parses a state key, as the worker does; throws InvalidJobError when it is not one.
 * @param {string} key
 * @returns {StateKey}
 */
export function parseStateKey(key) {
  const refuse = (why) => {
    throw new InvalidJobError(`state key ${JSON.stringify(String(key).slice(0, 80))} ${why}`);
  };
  if (typeof key !== 'string') refuse('is not a string');
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes === 0 || bytes > 256) refuse('must be 1 to 256 bytes');
  if (CONTROL.test(key)) refuse('must not contain control characters');
  const slash = key.indexOf('/');
  if (slash < 0) refuse('must be written <tenant>/<path>');
  const tenant = key.slice(0, slash);
  const path = key.slice(slash + 1);
  if (!isValidTenant(tenant)) {
    refuse("must start with a tenant of 1 to 64 letters, digits, '_', '.', '@', '-'");
  }
  if (path === '') refuse('has an empty path');
  // The Redis Cluster rule: the first "{...}" with something inside is the group.
  let group = null;
  const open = path.indexOf('{');
  if (open >= 0) {
    const close = path.indexOf('}', open + 1);
    if (close > open + 1) group = path.slice(open + 1, close);
  }
  if (group !== null && group.includes('/')) refuse("has a hash group containing '/'");
  const hashTag = group === null ? tenant : `${tenant}/${group}`;
  return {
    key,
    tenant,
    path,
    group,
    hashTag,
    valueKey: (namespace) => `${namespace}:state:{${hashTag}}:${path}`,
    versionKey: (namespace) => `${namespace}:ver:{${hashTag}}:${path}`,
  };
}
