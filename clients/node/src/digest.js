// Digests: "sha256:" + 64 lowercase hex digits (PROTOCOL.md §2).

import { createHash } from 'node:crypto';

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/**
 * The digest of some bytes: `sha256:` + lowercase hex of their SHA-256.
 * @param {Uint8Array | ArrayBuffer | string} bytes a string is hashed as UTF-8
 * @returns {string}
 */
export function digestOf(bytes) {
  const data = bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : bytes;
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/**
 * Whether `text` is a well-formed digest (upper-case hex is refused, as the worker does).
 * @param {unknown} text
 * @returns {boolean}
 */
export function isDigest(text) {
  return typeof text === 'string' && DIGEST.test(text);
}
