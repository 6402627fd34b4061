//! The host ABI of schemas/KERNEL_ABI.md: the eleven functions a kernel imports from module
//! `dtee`, one Rust function each: eight for buffers and parameters, and three host primitives
//! (SHA-256 of a buffer or of linear memory, Ed25519 verification), charged in fuel.
//!
//! A recoverable misuse returns one of the header's `DTEE_ERR_*` codes (the constants below,
//! with the same names and values as schemas/include/dtee_kernel.h). A write past a limit, a
//! pointer range outside linear memory, or a bad parameter index traps instead.

use sha2::{Digest as _, Sha256};
use wasmtime::{Caller, Extern, Linker, Memory, Trap};

use super::limits::{HostParam, HostState, HostTrap};

/// The module the imports come from.
const MODULE: &str = "dtee";

/// The longest buffer or parameter name the host reads; a longer one matches nothing.
const MAX_NAME_LEN: usize = 256;

/// The buffer or parameter index names none of the job's (also: no buffer or parameter has the
/// name asked for).
pub const DTEE_ERR_BAD_INDEX: i32 = -1;
/// The buffer cannot be used that way: reading an output or a `write_only` or `append_only`
/// state buffer, or writing an input or a `read_only` state buffer.
pub const DTEE_ERR_ACCESS: i32 = -2;
/// The offset is past the end of the buffer, or the offset or length is negative.
pub const DTEE_ERR_RANGE: i32 = -3;

/// Defines every import of the host ABI in `linker`.
pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "buffer_find", buffer_find)?;
    linker.func_wrap(MODULE, "buffer_len", buffer_len)?;
    linker.func_wrap(MODULE, "buffer_read", buffer_read)?;
    linker.func_wrap(MODULE, "buffer_write", buffer_write)?;
    linker.func_wrap(MODULE, "buffer_set_len", buffer_set_len)?;
    linker.func_wrap(MODULE, "param_find", param_find)?;
    linker.func_wrap(MODULE, "param_i64", param_i64)?;
    linker.func_wrap(MODULE, "param_f64", param_f64)?;
    linker.func_wrap(MODULE, "buffer_sha256", buffer_sha256)?;
    linker.func_wrap(MODULE, "sha256", sha256)?;
    linker.func_wrap(MODULE, "ed25519_verify", ed25519_verify)?;
    Ok(())
}

/// Fuel a host primitive charges per call, on top of its per-byte charge.
pub const HOST_CALL_FUEL: u64 = 64;
/// Fuel SHA-256 charges per byte hashed. The same C hash compiled to WebAssembly spends about
/// 134 units per byte (`loadtest/primitives.sh`); the host's (SHA extensions where the CPU has
/// them) takes about a ninth of the time.
pub const SHA256_FUEL_PER_BYTE: u64 = 1;

/// Fuel an Ed25519 verification charges besides one unit per message byte: about what the
/// verification (two scalar multiplications) would cost as WebAssembly instructions.
pub const ED25519_VERIFY_FUEL: u64 = 100_000;

/// Charges `HOST_CALL_FUEL + base + per_byte * bytes` of fuel before a host primitive runs; too
/// little left traps with `OutOfFuel` (`fuel_exhausted`), as the kernel running out would.
fn charge_fuel(
    caller: &mut Caller<'_, HostState>,
    base: u64,
    per_byte: u64,
    bytes: usize,
) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL
        .saturating_add(base)
        .saturating_add(per_byte.saturating_mul(bytes as u64));
    // The fast profile meters no fuel: a host call is bounded by its bytes and the deadline.
    let Ok(left) = caller.get_fuel() else {
        return Ok(());
    };
    if left < cost {
        caller.set_fuel(0)?;
        return Err(wasmtime::Error::new(Trap::OutOfFuel));
    }
    caller.set_fuel(left - cost)?;
    Ok(())
}

/// `buffer_sha256(idx, offset, len, dst_ptr) -> i32`: the SHA-256 of min(len, length - offset)
/// bytes of a readable buffer, from offset, written as 32 bytes at `dst_ptr`; returns 0. The
/// buffer is hashed where the host holds it: nothing is copied into linear memory. Error codes
/// as `buffer_read`'s; a destination outside memory traps.
fn buffer_sha256(
    mut caller: Caller<'_, HostState>,
    idx: i32,
    offset: i64,
    len: i64,
    dst: i32,
) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let (slot, range) = match readable_range(caller.data(), idx, offset, len) {
        Ok(readable) => readable,
        Err(code) => return Ok(code),
    };
    charge_fuel(&mut caller, 0, SHA256_FUEL_PER_BYTE, range.len())?;
    let memory = memory_of(&mut caller)?;
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let dst = dst as u32 as usize;
    let target = mem
        .get_mut(dst..dst.saturating_add(32))
        .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))?;
    let bytes = state.slots[slot].readable.as_ref().expect("readable");
    target.copy_from_slice(&Sha256::digest(&bytes[range]));
    Ok(0)
}

/// `sha256(src_ptr, len, dst_ptr) -> i32`: the SHA-256 of `len` bytes of linear memory at
/// `src_ptr`, written as 32 bytes at `dst_ptr` (the ranges may overlap); returns 0, or -3 for a
/// negative length. A range outside memory traps.
fn sha256(
    mut caller: Caller<'_, HostState>,
    src: i32,
    len: i32,
    dst: i32,
) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let Ok(len) = usize::try_from(len) else {
        return Ok(DTEE_ERR_RANGE);
    };
    charge_fuel(&mut caller, 0, SHA256_FUEL_PER_BYTE, len)?;
    let memory = memory_of(&mut caller)?;
    let mem = memory.data_mut(&mut caller);
    let (src, dst) = (src as u32 as usize, dst as u32 as usize);
    let digest = Sha256::digest(
        mem.get(src..src.saturating_add(len))
            .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))?,
    );
    mem.get_mut(dst..dst.saturating_add(32))
        .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))?
        .copy_from_slice(&digest);
    Ok(0)
}

/// `ed25519_verify(public_key_ptr, message_ptr, message_len, signature_ptr) -> i32`: 1 if the
/// 64-byte signature of the message verifies under the 32-byte public key by dtee's strict rule
/// (ATTESTATION.md §5, the rule results are verified by), 0 if not (a malformed key or
/// signature included), -3 for a negative length. A range outside memory traps.
fn ed25519_verify(
    mut caller: Caller<'_, HostState>,
    key: i32,
    message: i32,
    message_len: i32,
    signature: i32,
) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let Ok(message_len) = usize::try_from(message_len) else {
        return Ok(DTEE_ERR_RANGE);
    };
    charge_fuel(&mut caller, ED25519_VERIFY_FUEL, 1, message_len)?;
    let memory = memory_of(&mut caller)?;
    let mem = memory.data(&caller);
    let range = |ptr: i32, len: usize| {
        let start = ptr as u32 as usize;
        mem.get(start..start.saturating_add(len))
            .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))
    };
    let key: &[u8; 32] = range(key, 32)?.try_into().expect("32 bytes");
    let verified = dtee_schemas::attestation::dsse::verify_ed25519(
        key,
        range(message, message_len)?,
        range(signature, 64)?,
    );
    Ok(i32::from(verified.is_ok()))
}

/// `buffer_find(name_ptr, name_len) -> i32`: the index of the named buffer.
fn buffer_find(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let Some(name) = read_name(&mut caller, ptr, len)? else {
        return Ok(DTEE_ERR_BAD_INDEX);
    };
    Ok(caller
        .data()
        .slots
        .iter()
        .position(|slot| slot.name == name)
        .map_or(DTEE_ERR_BAD_INDEX, |idx| idx as i32))
}

/// `buffer_len(idx) -> i64`: a readable buffer's length, or a write-only buffer's capacity.
fn buffer_len(caller: Caller<'_, HostState>, idx: i32) -> wasmtime::Result<i64> {
    caller.data().check_deadline()?;
    let Some(slot) = usize::try_from(idx)
        .ok()
        .and_then(|idx| caller.data().slots.get(idx))
    else {
        return Ok(DTEE_ERR_BAD_INDEX.into());
    };
    Ok(match (&slot.readable, slot.capacity) {
        (Some(bytes), _) => bytes.len() as i64,
        (None, Some(capacity)) => capacity.min(i64::MAX as u64) as i64,
        (None, None) => DTEE_ERR_BAD_INDEX.into(),
    })
}

/// `buffer_read(idx, offset, dst_ptr, len) -> i32`: copies bytes of a readable buffer into
/// linear memory and returns how many.
fn buffer_read(
    mut caller: Caller<'_, HostState>,
    idx: i32,
    offset: i64,
    dst: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let memory = memory_of(&mut caller)?;
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let (slot, range) = match readable_range(state, idx, offset, i64::from(len)) {
        Ok(readable) => readable,
        Err(code) => return Ok(code),
    };
    let dst = dst as u32 as usize;
    let target = mem
        .get_mut(dst..dst.saturating_add(range.len()))
        .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))?;
    let count = range.len();
    let bytes = state.slots[slot].readable.as_ref().expect("readable");
    target.copy_from_slice(&bytes[range]);
    Ok(count as i32)
}

/// Readable buffer `idx`'s bytes from `offset`, at most `len` of them, as (slot index, range);
/// or the code for a bad index, a buffer that cannot be read, or a bad offset or length.
fn readable_range(
    state: &HostState,
    idx: i32,
    offset: i64,
    len: i64,
) -> Result<(usize, std::ops::Range<usize>), i32> {
    let slot = usize::try_from(idx)
        .ok()
        .filter(|&slot| slot < state.slots.len())
        .ok_or(DTEE_ERR_BAD_INDEX)?;
    let bytes = state.slots[slot].readable.as_ref().ok_or(DTEE_ERR_ACCESS)?;
    let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
        return Err(DTEE_ERR_RANGE);
    };
    if offset > bytes.len() {
        return Err(DTEE_ERR_RANGE);
    }
    Ok((slot, offset..offset + len.min(bytes.len() - offset)))
}

/// `buffer_write(idx, offset, src_ptr, len) -> i32`: copies bytes from linear memory into a
/// writable buffer and returns `len`. Checks the capacity and charges the output limit before
/// it allocates anything.
fn buffer_write(
    mut caller: Caller<'_, HostState>,
    idx: i32,
    offset: i64,
    src: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let memory = memory_of(&mut caller)?;
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let (slot_idx, capacity) = match writable(state, idx) {
        Ok(writable) => writable,
        Err(code) => return Ok(code),
    };
    let (Ok(offset), Ok(len), Ok(src)) = (
        u64::try_from(offset),
        usize::try_from(len),
        usize::try_from(src as u32),
    ) else {
        return Ok(DTEE_ERR_RANGE);
    };
    let end = offset.saturating_add(len as u64);
    // The buffer's length after the write, not only the write's end: a read_write value
    // already longer than the capacity stays so (it must be truncated first), and is not
    // copied.
    let before = state.image_len(slot_idx);
    state.check_capacity(slot_idx, capacity, end.max(before))?;
    let source = mem
        .get(src..src.saturating_add(len))
        .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))?;
    // Charge the output limit before allocating anything.
    state.charge(end.saturating_sub(before))?;
    write_at(state.image_mut(slot_idx), offset as usize, source);
    Ok(len as i32)
}

/// Writes `source` into `image` at `offset`, growing it (a gap before `offset` reads as zeros).
/// The bytes past the image's end are appended, not zero-filled first and then overwritten:
/// a kernel that streams its output writes each byte once.
fn write_at(image: &mut Vec<u8>, offset: usize, source: &[u8]) {
    // One reservation for the new length, as `resize` to it made before.
    image.reserve((offset + source.len()).saturating_sub(image.len()));
    if offset >= image.len() {
        image.resize(offset, 0);
        image.extend_from_slice(source);
    } else {
        let (inside, beyond) = source.split_at(source.len().min(image.len() - offset));
        image[offset..offset + inside.len()].copy_from_slice(inside);
        image.extend_from_slice(beyond);
    }
}

/// `buffer_set_len(idx, len) -> i32`: truncates or zero-fills a writable buffer to `len`.
fn buffer_set_len(mut caller: Caller<'_, HostState>, idx: i32, len: i64) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let state = caller.data_mut();
    let (slot_idx, capacity) = match writable(state, idx) {
        Ok(writable) => writable,
        Err(code) => return Ok(code),
    };
    let Ok(len) = u64::try_from(len) else {
        return Ok(DTEE_ERR_RANGE);
    };
    state.check_capacity(slot_idx, capacity, len)?;
    let before = state.image_len(slot_idx);
    // Output bytes count what was written at its largest: shrinking refunds nothing
    // (a read_write image starts from a value that was never charged).
    if len > before {
        state.charge(len - before)?;
    }
    // Copies at most `len` bytes of a read_write value: truncating a long one costs no copy of
    // what goes.
    state.image_of_len(slot_idx, len as usize);
    Ok(0)
}

/// `param_find(name_ptr, name_len) -> i32`: the index of the named parameter.
fn param_find(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    caller.data().check_deadline()?;
    let Some(name) = read_name(&mut caller, ptr, len)? else {
        return Ok(DTEE_ERR_BAD_INDEX);
    };
    Ok(caller
        .data()
        .params
        .iter()
        .position(|param| param.name == name)
        .map_or(DTEE_ERR_BAD_INDEX, |idx| idx as i32))
}

/// `param_i64(idx) -> i64`: the parameter as an integer; a bad index traps.
fn param_i64(mut caller: Caller<'_, HostState>, idx: i32) -> wasmtime::Result<i64> {
    caller.data().check_deadline()?;
    param(&mut caller, idx).map(|param| param.int)
}

/// `param_f64(idx) -> f64`: the parameter as a float; a bad index traps.
fn param_f64(mut caller: Caller<'_, HostState>, idx: i32) -> wasmtime::Result<f64> {
    caller.data().check_deadline()?;
    param(&mut caller, idx).map(|param| param.float)
}

/// The parameter at `idx`, or the `BadParam` trap.
fn param<'a>(caller: &'a mut Caller<'_, HostState>, idx: i32) -> wasmtime::Result<&'a HostParam> {
    let state = caller.data_mut();
    match usize::try_from(idx)
        .ok()
        .filter(|idx| *idx < state.params.len())
    {
        Some(idx) => Ok(&state.params[idx]),
        None => Err(state.trip(HostTrap::BadParam(idx))),
    }
}

/// The index and capacity of the writable buffer at `idx`, or the code to return.
fn writable(state: &HostState, idx: i32) -> Result<(usize, u64), i32> {
    let slot_idx = usize::try_from(idx)
        .ok()
        .filter(|idx| *idx < state.slots.len())
        .ok_or(DTEE_ERR_BAD_INDEX)?;
    let capacity = state.slots[slot_idx].capacity.ok_or(DTEE_ERR_ACCESS)?;
    Ok((slot_idx, capacity))
}

/// The kernel's exported memory, or the `NoMemory` trap.
fn memory_of(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(caller.data_mut().trip(HostTrap::NoMemory)),
    }
}

/// The UTF-8 name at `ptr..ptr + len`; `None` when the length is negative or too long or the
/// bytes are not UTF-8 (such a name matches nothing). The pointer is an unsigned address, as
/// in every other import: a range outside memory (a pointer of 2^31 or more included) traps.
fn read_name(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Option<String>> {
    let memory = memory_of(caller)?;
    let ptr = ptr as u32 as usize;
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    if len > MAX_NAME_LEN {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len];
    memory
        .read(&*caller, ptr, &mut bytes)
        .map_err(|_| wasmtime::Error::new(Trap::MemoryOutOfBounds))?;
    Ok(String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `#define NAME (value)` in the kernel header.
    fn header_define(header: &str, name: &str) -> i32 {
        let prefix = format!("#define {name} ");
        let line = header
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("dtee_kernel.h defines no {name}"));
        line.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .parse()
            .unwrap_or_else(|error| panic!("{name} = {line:?}: {error}"))
    }

    #[test]
    fn the_error_codes_are_the_kernel_headers() {
        let path = format!(
            "{}/../schemas/include/dtee_kernel.h",
            env!("CARGO_MANIFEST_DIR")
        );
        let header = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            header_define(&header, "DTEE_ERR_BAD_INDEX"),
            DTEE_ERR_BAD_INDEX
        );
        assert_eq!(header_define(&header, "DTEE_ERR_ACCESS"), DTEE_ERR_ACCESS);
        assert_eq!(header_define(&header, "DTEE_ERR_RANGE"), DTEE_ERR_RANGE);
    }

    #[test]
    fn writes_append_overwrite_and_zero_fill_gaps() {
        let mut image = Vec::new();
        write_at(&mut image, 0, b"abc");
        assert_eq!(image, b"abc");
        write_at(&mut image, 5, b"xy"); // past the end: the gap reads as zeros
        assert_eq!(image, b"abc\0\0xy");
        write_at(&mut image, 1, b"BC"); // inside
        assert_eq!(image, b"aBC\0\0xy");
        write_at(&mut image, 6, b"YZW"); // across the end
        assert_eq!(image, b"aBC\0\0xYZW");
        write_at(&mut image, 9, b""); // empty, at the end
        write_at(&mut image, 2, b"");
        assert_eq!(image, b"aBC\0\0xYZW");
        write_at(&mut image, 11, b""); // empty past the end still grows it, as before
        assert_eq!(image, b"aBC\0\0xYZW\0\0");
    }
}
