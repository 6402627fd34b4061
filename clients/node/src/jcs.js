// Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and a strict JSON parser.
//
// The job id is "sha256:" + hex(sha256(JCS(spec))), so these bytes must be exactly those of
// every other dtee client (PROTOCOL.md §2; the vectors in schemas/vectors/jcs/ pin them).
//
// JSON.parse is not strict enough for this: it keeps the last of duplicate names, accepts lone
// surrogate escapes and silently rounds integers beyond 2^53. parseStrict refuses all of that.

import { CanonicalError } from './errors.js';

/** 2^53, the largest integer magnitude a double holds exactly. */
export const MAX_SAFE_MAGNITUDE = 2 ** 53;

/**
 * Deepest nesting of arrays and objects the parser accepts: 127 levels, as serde_json (whose
 * recursion limit of 128 refuses the 128th level) and so the worker.
 */
export const MAX_DEPTH = 127;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// A lone surrogate: a high one not followed by a low one, or a low one not preceded by a high one.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Whether a string is well-formed UTF-16 (has no lone surrogate), so that it has a UTF-8 form.
 * @param {string} text
 */
export function isWellFormed(text) {
  return !LONE_SURROGATE.test(text);
}

/**
 * Parses JSON text strictly (RFC 8259 plus I-JSON and dtee's rule on big integers):
 * refuses a byte order mark, invalid UTF-8, lone surrogates (raw or escaped), duplicate object
 * names at any depth (compared after unescaping), integers beyond ±2^53 that are not already in
 * canonical form, numbers that overflow a double, NaN/Infinity, leading zeros, trailing commas,
 * single quotes, raw control characters in strings, empty input and text after the value.
 *
 * @param {Uint8Array | ArrayBuffer | string} input the JSON text, as UTF-8 bytes or a string
 * @returns {any} the value; numbers are JS numbers (doubles), objects are plain objects
 * @throws {CanonicalError}
 */
export function parseStrict(input) {
  let text;
  if (typeof input === 'string') {
    text = input;
    if (!isWellFormed(text)) throw new CanonicalError('the text holds a lone surrogate');
  } else {
    const bytes = input instanceof ArrayBuffer ? new Uint8Array(input) : input;
    if (!(bytes instanceof Uint8Array)) {
      throw new TypeError('parseStrict takes a string, a Uint8Array/Buffer or an ArrayBuffer');
    }
    if (bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
      throw new CanonicalError('the text starts with a byte order mark');
    }
    try {
      text = utf8.decode(bytes);
    } catch {
      throw new CanonicalError('the text is not valid UTF-8');
    }
  }
  if (text.charCodeAt(0) === 0xfeff) throw new CanonicalError('the text starts with a byte order mark');
  const parser = new Parser(text);
  parser.ws();
  const value = parser.value(0);
  parser.ws();
  if (parser.pos !== text.length) parser.fail('text after the JSON value');
  return value;
}

class Parser {
  constructor(text) {
    this.text = text;
    this.pos = 0;
  }

  fail(why) {
    throw new CanonicalError(`invalid JSON at offset ${this.pos}: ${why}`);
  }

  ws() {
    const text = this.text;
    for (;;) {
      const c = text.charCodeAt(this.pos);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.pos++;
      else return;
    }
  }

  literal(word, value) {
    if (this.text.startsWith(word, this.pos)) {
      this.pos += word.length;
      return value;
    }
    return this.fail('unexpected token');
  }

  value(depth) {
    const c = this.text[this.pos];
    switch (c) {
      case '{':
        return this.object(depth + 1);
      case '[':
        return this.array(depth + 1);
      case '"':
        return this.string();
      case 't':
        return this.literal('true', true);
      case 'f':
        return this.literal('false', false);
      case 'n':
        return this.literal('null', null);
      case undefined:
        return this.fail('unexpected end of input');
      default:
        if (c === '-' || (c >= '0' && c <= '9')) return this.number();
        return this.fail(`unexpected character ${JSON.stringify(c)}`);
    }
  }

  object(depth) {
    if (depth > MAX_DEPTH) this.fail(`nested deeper than ${MAX_DEPTH}`);
    this.pos++; // {
    const out = {};
    const seen = new Set();
    this.ws();
    if (this.text[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.text[this.pos] !== '"') this.fail('expected a member name');
      const key = this.string();
      if (seen.has(key)) this.fail(`duplicate member name ${JSON.stringify(key)}`);
      seen.add(key);
      this.ws();
      if (this.text[this.pos] !== ':') this.fail("expected ':'");
      this.pos++;
      this.ws();
      const item = this.value(depth);
      // defineProperty, so that a member named "__proto__" is an ordinary member.
      Object.defineProperty(out, key, { value: item, enumerable: true, writable: true, configurable: true });
      this.ws();
      const c = this.text[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === '}') {
        this.pos++;
        return out;
      }
      this.fail("expected ',' or '}'");
    }
  }

  array(depth) {
    if (depth > MAX_DEPTH) this.fail(`nested deeper than ${MAX_DEPTH}`);
    this.pos++; // [
    const out = [];
    this.ws();
    if (this.text[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.ws();
      out.push(this.value(depth));
      this.ws();
      const c = this.text[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === ']') {
        this.pos++;
        return out;
      }
      this.fail("expected ',' or ']'");
    }
  }

  hex4() {
    const digits = this.text.slice(this.pos, this.pos + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(digits)) this.fail('bad \\u escape');
    this.pos += 4;
    return parseInt(digits, 16);
  }

  string() {
    const text = this.text;
    this.pos++; // opening quote
    let out = '';
    let start = this.pos;
    for (;;) {
      const c = text.charCodeAt(this.pos);
      if (Number.isNaN(c)) this.fail('unterminated string');
      if (c === 0x22) {
        out += text.slice(start, this.pos);
        this.pos++;
        return out;
      }
      if (c < 0x20) this.fail('raw control character in a string');
      if (c !== 0x5c) {
        this.pos++;
        continue;
      }
      out += text.slice(start, this.pos);
      this.pos++; // backslash
      const e = text[this.pos++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          const unit = this.hex4();
          if (unit >= 0xdc00 && unit <= 0xdfff) this.fail('lone low surrogate escape');
          if (unit >= 0xd800 && unit <= 0xdbff) {
            if (text[this.pos] !== '\\' || text[this.pos + 1] !== 'u') this.fail('lone high surrogate escape');
            this.pos += 2;
            const low = this.hex4();
            if (low < 0xdc00 || low > 0xdfff) this.fail('lone high surrogate escape');
            out += String.fromCharCode(unit, low);
          } else {
            out += String.fromCharCode(unit);
          }
          break;
        }
        default:
          this.pos--;
          this.fail('bad escape');
      }
      start = this.pos;
    }
  }

  number() {
    NUMBER.lastIndex = this.pos;
    const match = NUMBER.exec(this.text);
    if (!match) this.fail('bad number');
    const token = match[0];
    // After a number must come a delimiter: "01" and "1.e5" and "-" end up here.
    const next = this.text[this.pos + token.length];
    if (next !== undefined && !' \t\n\r,]}'.includes(next)) this.fail('bad number');
    const value = Number(token);
    if (!Number.isFinite(value)) this.fail(`number ${token} overflows a double`);
    if (match[1] === undefined && match[2] === undefined && Math.abs(value) >= MAX_SAFE_MAGNITUDE) {
      // An integer beyond ±2^53 is accepted only when it is already canonical: then reading it
      // as a double loses nothing its writer expressed (PROTOCOL.md §2).
      if (numberToString(value) !== token) {
        this.fail(`integer ${token} is outside ±2^53 and has no exact canonical form`);
      }
    }
    this.pos += token.length;
    return value;
  }
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;

/** ECMAScript Number::toString of a finite double, with -0 as "0" (RFC 8785 §3.2.2.3). */
function numberToString(value) {
  return Object.is(value, -0) ? '0' : String(value);
}

function writeString(text) {
  if (!isWellFormed(text)) throw new CanonicalError('a string holds a lone surrogate');
  let out = '"';
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x20 && c !== 0x22 && c !== 0x5c) continue;
    out += text.slice(start, i);
    start = i + 1;
    switch (c) {
      case 0x22:
        out += '\\"';
        break;
      case 0x5c:
        out += '\\\\';
        break;
      case 0x08:
        out += '\\b';
        break;
      case 0x09:
        out += '\\t';
        break;
      case 0x0a:
        out += '\\n';
        break;
      case 0x0c:
        out += '\\f';
        break;
      case 0x0d:
        out += '\\r';
        break;
      default:
        out += `\\u${c.toString(16).padStart(4, '0')}`;
    }
  }
  return `${out + text.slice(start)}"`;
}

function writeNumber(value) {
  if (!Number.isFinite(value)) throw new CanonicalError(`number ${value} is not finite`);
  return numberToString(value);
}

function writeBigInt(value) {
  const magnitude = value < 0n ? -value : value;
  const asNumber = Number(value);
  if (magnitude > BigInt(MAX_SAFE_MAGNITUDE) && numberToString(asNumber) !== value.toString()) {
    throw new CanonicalError(`integer ${value} is outside ±2^53 and has no exact canonical form`);
  }
  return writeNumber(asNumber);
}

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function write(value, ancestors, options) {
  switch (typeof value) {
    case 'string':
      return writeString(value);
    case 'number':
      return writeNumber(value);
    case 'bigint':
      return writeBigInt(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      break;
    default:
      throw new CanonicalError(`a ${typeof value} is not JSON`);
  }
  if (value === null) {
    if (options.refuseNull) throw new CanonicalError('null is not allowed here');
    return 'null';
  }
  if (ancestors.has(value)) throw new CanonicalError('the value is cyclic');
  ancestors.add(value);
  let out;
  if (Array.isArray(value)) {
    const parts = [];
    for (let i = 0; i < value.length; i++) parts.push(write(value[i], ancestors, options));
    out = `[${parts.join(',')}]`;
  } else if (isPlainObject(value)) {
    // Default sort compares strings by UTF-16 code units, which is exactly RFC 8785 §3.2.3.
    const keys = Object.keys(value).sort();
    const parts = [];
    for (const key of keys) {
      const item = value[key];
      if (item === undefined) throw new CanonicalError(`member ${JSON.stringify(key)} is undefined`);
      parts.push(`${writeString(key)}:${write(item, ancestors, options)}`);
    }
    out = `{${parts.join(',')}}`;
  } else {
    throw new CanonicalError(`a ${value.constructor?.name ?? 'non-plain object'} is not JSON: use plain objects and arrays`);
  }
  ancestors.delete(value);
  return out;
}

/**
 * The canonical JSON text (RFC 8785) of a value made of plain objects, arrays, strings, finite
 * numbers, booleans and null. BigInts are accepted within ±2^53 or when already canonical.
 *
 * @param {any} value
 * @param {{refuseNull?: boolean}} [options] refuseNull: refuse `null` anywhere (for jobs)
 * @returns {string}
 * @throws {CanonicalError} for undefined, functions, symbols, non-finite numbers, lone
 *   surrogates, cycles and objects that are not plain
 */
export function canonicalize(value, options = {}) {
  return write(value, new Set(), { refuseNull: options.refuseNull === true });
}

/**
 * The canonical JSON bytes (UTF-8) of a value: what is hashed and published.
 * @param {any} value
 * @param {{refuseNull?: boolean}} [options]
 * @returns {Buffer}
 */
export function canonicalBytes(value, options) {
  return Buffer.from(canonicalize(value, options), 'utf8');
}
