//! Admission: what is decided from the message alone, before anything is read from Redis —
//! size, strict parsing and validation, the tenant, and that every state key lies in the
//! tenant's namespace. A cached result must not answer another tenant's forged copy of a job,
//! so nothing (the result cache included) is read before this.

use dtee_schemas::job::{AccessMode, CheckedBuffer};
use dtee_schemas::secrets::SecretVersion;
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, ErrorCode, ParsedJob};
use lapin::message::Delivery;

use super::outcome::{self, CachePolicy, Failure, Outcome};
use super::Context;
use crate::clock::unix_ms;

/// A job that passed admission.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The parsed job: id, spec, and its buffers decoded and checked.
    pub parsed: ParsedJob,
    /// The tenant of the delivery: the only one its answers and records are made for.
    pub tenant: String,
    /// Its state buffers, each in the tenant's namespace, in job order.
    pub bindings: Vec<Binding>,
    /// When the worker took it, Unix milliseconds.
    pub started_at: u64,
}

impl Admitted {
    /// The job id.
    pub fn id(&self) -> &Digest {
        &self.parsed.id
    }

    /// The hash tag of the job's writable state keys, if it writes any.
    pub fn writable_hash_tag(&self) -> Option<String> {
        writable_hash_tag(&self.parsed)
    }

    /// The keys its state snapshot reads, each with whether its value is read.
    pub fn snapshot_keys(&self) -> Vec<(&StateKey, bool)> {
        self.bindings
            .iter()
            .map(|binding| (&binding.key, binding.reads_value()))
            .collect()
    }

    /// Whether the job id belongs to this tenant alone: it binds state or names secrets, all
    /// in the tenant's namespace, so no other tenant's delivery of the id is admitted. Any
    /// other job id is shared by every tenant that may publish the same job.
    pub fn id_is_tenants_own(&self) -> bool {
        !self.bindings.is_empty()
            || self
                .parsed
                .buffers
                .iter()
                .any(|buffer| matches!(buffer, CheckedBuffer::Secret { .. }))
    }

    /// The secrets the job names: buffer index, buffer name and secret.
    pub fn secrets(&self) -> Vec<(usize, &str, &SecretVersion)> {
        self.parsed
            .buffers
            .iter()
            .enumerate()
            .filter_map(|(index, buffer)| match buffer {
                CheckedBuffer::Secret { name, secret, .. } => Some((index, name.as_str(), secret)),
                _ => None,
            })
            .collect()
    }
}

/// The hash tag of a parsed job's writable state keys, if it binds any.
pub(crate) fn writable_hash_tag(parsed: &ParsedJob) -> Option<String> {
    parsed.buffers.iter().find_map(|buffer| match buffer {
        CheckedBuffer::State { key, mode, .. } if *mode != AccessMode::ReadOnly => {
            Some(key.hash_tag())
        }
        _ => None,
    })
}

/// A state buffer of the job, checked to lie in the tenant's namespace.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    /// Index in the job's buffers.
    pub buffer: usize,
    /// Buffer name.
    pub name: String,
    /// The key.
    pub key: StateKey,
    /// How the kernel may use it.
    pub mode: AccessMode,
    /// Whether it may be absent.
    pub may_be_absent: bool,
}

impl Binding {
    /// Whether the snapshot reads the value (the kernel may read it).
    pub fn reads_value(&self) -> bool {
        matches!(self.mode, AccessMode::ReadOnly | AccessMode::ReadWrite)
    }
}

/// Messages longer than this are admitted off the async runtime's threads: parsing one of
/// 16 MiB (`DTEE_MAX_JOB_BYTES`) takes 150–200 ms here, long enough to hold up every other
/// job's task on the thread.
const ADMIT_INLINE_BYTES: usize = 256 << 10;

/// [`admit`], on the job's task for a short message, and for a long one on a thread the async
/// runtime gives up for the while (`block_in_place`; inline on a runtime of one thread).
pub(crate) fn admit_message(ctx: &Context, delivery: &Delivery) -> Result<Admitted, Outcome> {
    let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if multi_thread && delivery.data.len() > ADMIT_INLINE_BYTES {
        tokio::task::block_in_place(|| admit(ctx, delivery))
    } else {
        admit(ctx, delivery)
    }
}

/// Admits a delivery, or answers it with a refusal (never cached: the refusal is about this
/// message, not about the job id it claims).
fn admit(ctx: &Context, delivery: &Delivery) -> Result<Admitted, Outcome> {
    let started_at = unix_ms();
    let refuse_message = |message: String| {
        let failure = Failure::new(ErrorCode::InvalidJob, message);
        outcome::failed_unadmitted(ctx, fallback_id(delivery), None, failure, started_at)
    };
    let body = &delivery.data;
    // A body over the bound was dropped as it arrived (the consumer channel keeps none larger,
    // `broker::session`): its size is what the broker announced.
    let size = delivery.body_size.max(body.len() as u64);
    if size > ctx.config.max_job_bytes as u64 {
        return Err(refuse_message(format!(
            "the job is {size} bytes; this worker accepts at most {}",
            ctx.config.max_job_bytes
        )));
    }
    let parsed =
        dtee_schemas::parse_job(body).map_err(|error| refuse_message(error.to_string()))?;
    let bindings = tenant_of(ctx, delivery).and_then(|tenant| {
        check_secrets(&parsed, tenant)?;
        Ok((tenant.to_owned(), bindings_of(&parsed, tenant)?))
    });
    match bindings {
        Ok((tenant, bindings)) => Ok(Admitted {
            parsed,
            tenant,
            bindings,
            started_at,
        }),
        Err(refused) => {
            let code = match refused {
                TenantError::ForeignSecret { .. } => ErrorCode::SecretReleaseDenied,
                _ => ErrorCode::StateAccessDenied,
            };
            let failure = Failure::new(code, refused.to_string());
            let id = parsed.id.clone();
            Err(outcome::failed_unadmitted(
                ctx,
                id,
                Some(&parsed),
                failure,
                started_at,
            ))
        }
    }
}

/// Why a delivery's tenant may not run the job: answered `state_access_denied`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TenantError {
    /// No `user_id`, and the worker serves no single tenant.
    #[error("the message has no user_id property, so its tenant is unknown (publish with user_id, or run the worker in single-tenant mode)")]
    NoUserId,
    /// A `user_id` that is not a valid tenant name.
    #[error("user_id {0:?} cannot name a tenant")]
    InvalidUserId(String),
    /// A state key outside the tenant's namespace.
    #[error("buffer {buffer:?} binds {key}, outside the namespace of tenant {tenant:?}")]
    ForeignKey {
        /// The buffer.
        buffer: String,
        /// The key it binds.
        key: StateKey,
        /// The delivery's tenant.
        tenant: String,
    },
    /// A secret of another tenant: answered `secret_release_denied`.
    #[error("buffer {buffer:?} names secret {owner}/{secret}, which is not a secret of tenant {tenant:?}")]
    ForeignSecret {
        /// The buffer.
        buffer: String,
        /// The secret's owner.
        owner: String,
        /// The secret's name.
        secret: String,
        /// The delivery's tenant.
        tenant: String,
    },
}

/// Refuses a job naming another tenant's secret, before anything is read (the result cache
/// included): a job that names secrets belongs to their tenant alone.
fn check_secrets(parsed: &ParsedJob, tenant: &str) -> Result<(), TenantError> {
    for buffer in &parsed.buffers {
        if let CheckedBuffer::Secret {
            name,
            tenant: owner,
            secret,
        } = buffer
        {
            if owner != tenant {
                return Err(TenantError::ForeignSecret {
                    buffer: name.clone(),
                    owner: owner.clone(),
                    secret: secret.name.clone(),
                    tenant: tenant.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// The tenant of a delivery: the worker's single tenant if it has one, else the AMQP
/// `user_id`, which RabbitMQ checked against the publishing connection's user.
fn tenant_of<'a>(ctx: &'a Context, delivery: &'a Delivery) -> Result<&'a str, TenantError> {
    if let Some(tenant) = &ctx.config.single_tenant {
        return Ok(tenant);
    }
    match delivery.properties.user_id() {
        Some(user) if dtee_schemas::state::is_valid_tenant(user.as_str()) => Ok(user.as_str()),
        Some(user) => Err(TenantError::InvalidUserId(user.as_str().to_owned())),
        None => Err(TenantError::NoUserId),
    }
}

/// The job's state bindings, each checked to lie in the tenant's namespace.
fn bindings_of(parsed: &ParsedJob, tenant: &str) -> Result<Vec<Binding>, TenantError> {
    let mut bindings = Vec::new();
    for (buffer, entry) in parsed.buffers.iter().enumerate() {
        let CheckedBuffer::State {
            name,
            key,
            mode,
            may_be_absent,
            ..
        } = entry
        else {
            continue;
        };
        if key.tenant() != tenant {
            return Err(TenantError::ForeignKey {
                buffer: name.clone(),
                key: key.clone(),
                tenant: tenant.to_owned(),
            });
        }
        bindings.push(Binding {
            buffer,
            name: name.clone(),
            key: key.clone(),
            mode: *mode,
            may_be_absent: *may_be_absent,
        });
    }
    Ok(bindings)
}

/// The id to answer under when the job itself cannot be parsed: its `message_id` if that is a
/// digest, else the digest of the raw bytes.
pub(crate) fn fallback_id(delivery: &Delivery) -> Digest {
    delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| id.as_str().parse().ok())
        .unwrap_or_else(|| Digest::of(&delivery.data))
}

/// Where a failure of an admitted job is cached: final failures with the results, others in
/// the short-lived failure slot. `cancelled` is the act of one tenant (its own revocation):
/// it is cached, and claims the applied record, only under an id that is that tenant's own
/// (a job binding its state); the same stateless job published by another tenant, or by this
/// one once the revocation expired, must still run, so there it is never cached. Nor is
/// `kernel_compile_limit_exceeded` where the id is not the tenant's own: the worker keeps it
/// for the tenant that met it (`fetch::CompileRefusals`), so in the shared failure slot one
/// tenant's refusal would answer another tenant's wait on the same stateless job.
pub(crate) fn cache_for(job: &Admitted, code: ErrorCode) -> CachePolicy {
    let tenants_own_act = matches!(
        code,
        ErrorCode::Cancelled | ErrorCode::KernelCompileLimitExceeded
    );
    if tenants_own_act && !job.id_is_tenants_own() {
        CachePolicy::Never
    } else if code.is_final() {
        CachePolicy::Final
    } else {
        CachePolicy::Failure
    }
}
