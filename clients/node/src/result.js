// Reading a result's outputs.

/**
 * The bytes of a result's output, or undefined when it has none of that name. The data is
 * only decoded here; `verify` checks it against the signed digest.
 * @param {object} result a `dtee.result/v1` result
 * @param {string} name the output buffer's name
 * @returns {Buffer | undefined}
 */
export function outputBytes(result, name) {
  const output = (result?.outputs ?? []).find((o) => o.name === name);
  return output ? Buffer.from(output.data, 'base64') : undefined;
}
