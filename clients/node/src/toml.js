// Policy files (deploy/policies/*.toml) through smol-toml, a maintained TOML 1.0 parser with no
// dependencies; errors become VerifyError with the file's name.

import { parse, stringify } from 'smol-toml';
import { VerifyError } from './errors.js';

/**
 * Parses a policy file's TOML.
 * @param {string} text
 * @param {string} [where] the file name, for messages
 * @returns {object}
 */
export function parseToml(text, where = 'policy') {
  try {
    // Plain objects (smol-toml makes them without a prototype); a policy holds no dates.
    return JSON.parse(JSON.stringify(parse(text)));
  } catch (error) {
    throw new VerifyError(`${where}: ${error.message}`);
  }
}

/** The value without null or undefined members, which TOML cannot write. */
function defined(value) {
  if (Array.isArray(value)) return value.map(defined);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, item]) => item !== undefined && item !== null)
        .map(([key, item]) => [key, defined(item)]),
    );
  }
  return value;
}

/**
 * Writes a policy object as TOML (for `dtee verify --policy`).
 * @param {object} policy
 * @returns {string}
 */
export function writeToml(policy) {
  return `${stringify(defined(policy))}\n`;
}
