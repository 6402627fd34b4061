// The errors the dtee client throws. Every one is a DteeError, so callers can tell them from
// other failures with one `instanceof`.

/** The base class of every error this package throws. */
export class DteeError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** JSON that the strict parser refuses, or a value that has no canonical form (RFC 8785). */
export class CanonicalError extends DteeError {}

/** A job that is not a valid `dtee.job/v1` spec, refused before anything was sent. */
export class InvalidJobError extends DteeError {}

/** No queue serves the job's routing key: the broker returned the job (mandatory publish). */
export class NoRouteError extends DteeError {
  /**
   * @param {string} routingKey the routing key the job was published under
   * @param {string} namespace
   */
  constructor(routingKey, namespace) {
    super(
      `no queue serves routing key ${JSON.stringify(routingKey)} in namespace ` +
        `${JSON.stringify(namespace)}: start a worker that serves this target (with the ` +
        'attestation platform the job requires) first; the job was not accepted',
    );
    this.routingKey = routingKey;
    this.namespace = namespace;
  }
}

/** The broker refused the job (a publisher `nack`): a full queue, say. Publish it again later. */
export class BrokerRefusedError extends DteeError {
  constructor(jobId, options) {
    super(
      `the broker did not accept job ${jobId} (nack): the tenant's job queue is full or the ` +
        'broker could not store it; publish it again later',
      options,
    );
    this.jobId = jobId;
  }
}

/** The AMQP user cannot submit jobs (its name cannot prefix a routing key). */
export class UnroutableUserError extends DteeError {
  constructor(user) {
    super(
      `AMQP user ${JSON.stringify(user)} cannot submit jobs: a dtee user name is 1 to 64 of ` +
        "letters, digits, '_', '@' and '-' (no '.'), since jobs are published under " +
        '<user>.<routing key>',
    );
    this.user = user;
  }
}

/** No result arrived before the timeout. */
export class TimeoutError extends DteeError {
  /**
   * @param {string} jobId
   * @param {number} timeoutMs
   */
  constructor(jobId, timeoutMs) {
    super(`no result for ${jobId} arrived within ${timeoutMs} ms`);
    this.jobId = jobId;
    this.timeoutMs = timeoutMs;
  }
}

/** The job ran (or was refused) and its result says `failed`. */
export class JobFailedError extends DteeError {
  /**
   * @param {string} code the result's `error.code` (branch on it; unknown codes are generic failures)
   * @param {string} message the result's `error.message` (for people; not stable, not signed)
   * @param {object} result the whole `dtee.result/v1` result
   */
  constructor(code, message, result) {
    super(`job ${result?.job_id} failed: ${code}: ${message}`);
    this.code = code;
    this.errorMessage = message;
    this.result = result;
  }
}

/** A result message or cached value that is not a `dtee.result/v1` JSON object. */
export class MalformedResultError extends DteeError {}

/** A policy that cannot be read, or the `dtee verify` call-out failing to run. */
export class VerifyError extends DteeError {}
