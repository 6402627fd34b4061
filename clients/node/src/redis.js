// The Redis client: node-redis v4's client package (@redis/client, which `redis@4` re-exports).
import redis from '@redis/client';

export const { createClient, commandOptions } = redis;

/** Command options that make replies Buffers (blobs and results are bytes). */
export function commandOptionsFor() {
  return commandOptions({ returnBuffers: true });
}
