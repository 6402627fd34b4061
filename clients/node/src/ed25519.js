// Strict Ed25519 verification (RFC 8032 with the rules of ed25519-dalek's verify_strict, which
// the Rust verifier uses: ATTESTATION.md §5), and DSSE's pre-authentication encoding.
//
// node:crypto (OpenSSL) does the curve arithmetic. Before it runs, the encodings are checked
// here: S must be reduced (S < L), the public key A and the point R must be canonical
// encodings (y < p, and no x = 0 with the sign bit set) and neither may be of small order.

import { createPublicKey, verify as cryptoVerify } from 'node:crypto';

const P = 2n ** 255n - 19n;
const L = 2n ** 252n + 27742317777372353535851937790883648493n;
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** The canonical encodings of the eight points of small order. */
const SMALL_ORDER = new Set([
  '0100000000000000000000000000000000000000000000000000000000000000',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0000000000000000000000000000000000000000000000000000000000000080',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85',
]);

function littleEndian(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

/**
 * Why a 32-byte point encoding is not acceptable, or null when it is.
 * @param {Uint8Array} bytes
 */
function pointProblem(bytes) {
  const y = littleEndian(bytes) & (2n ** 255n - 1n);
  const sign = bytes[31] >> 7;
  if (y >= P) return 'is not a canonical encoding (y >= p)';
  // x = 0 exactly when y = ±1; "-0" is not a canonical encoding.
  if (sign === 1 && (y === 1n || y === P - 1n)) return 'is not a canonical encoding (x = 0 with the sign bit set)';
  if (SMALL_ORDER.has(Buffer.from(bytes).toString('hex'))) return 'is a point of small order';
  return null;
}

/**
 * Verifies an Ed25519 signature strictly.
 * @param {Uint8Array} publicKey 32 bytes
 * @param {Uint8Array} message
 * @param {Uint8Array} signature 64 bytes (R ‖ S)
 * @returns {{ok: true} | {ok: false, why: string}}
 */
export function verifyEd25519Strict(publicKey, message, signature) {
  if (publicKey.length !== 32) return { ok: false, why: 'the public key is not 32 bytes' };
  if (signature.length !== 64) return { ok: false, why: 'the signature is not 64 bytes' };
  const keyProblem = pointProblem(publicKey);
  if (keyProblem) return { ok: false, why: `the public key ${keyProblem}` };
  const rProblem = pointProblem(signature.subarray(0, 32));
  if (rProblem) return { ok: false, why: `the signature's R ${rProblem}` };
  if (littleEndian(signature.subarray(32, 64)) >= L) return { ok: false, why: "the signature's S is not reduced (S >= L)" };
  let ok = false;
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
    ok = cryptoVerify(null, message, key, signature);
  } catch (error) {
    return { ok: false, why: `the public key is not a valid Ed25519 key: ${error.message}` };
  }
  return ok ? { ok: true } : { ok: false, why: 'the signature does not verify' };
}

/**
 * DSSE's pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
 * @param {string} payloadType
 * @param {Uint8Array} payload
 * @returns {Buffer}
 */
export function pae(payloadType, payload) {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `, 'utf8'),
    type,
    Buffer.from(` ${payload.length} `, 'utf8'),
    payload,
  ]);
}
