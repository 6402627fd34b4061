//! The arguments of an AMD GPU code object's kernels, read from its metadata before the device
//! is asked (the HIP counterpart of `ptx.rs`).
//!
//! `hipModuleLaunchKernel` copies each explicit argument the code object declares, at the size
//! it declares, from the pointers the host passes, so a kernel declaring more or larger
//! arguments than the job supplies would read the device host's own memory. The code object's
//! metadata (the `NT_AMDGPU_METADATA` note, MessagePack: `amdhsa.kernels[].{.name, .args}`)
//! says what each kernel takes; arguments whose `.value_kind` starts with `hidden_` are the
//! runtime's to fill. Anything this reader does not understand refuses the kernel.

use std::collections::HashMap;

/// Every kernel of the code object `elf` with the size in bytes of each explicit argument:
/// a `global_buffer` is a device pointer (8 bytes), a `by_value` argument its `.size`.
pub fn entries(elf: &[u8]) -> Result<HashMap<String, Vec<u64>>, String> {
    check_bounds(elf)?;
    check_segments(elf)?;
    let metadata = metadata_note(elf)?;
    let mut reader = Reader {
        bytes: &metadata,
        at: 0,
    };
    let root = reader.value(0)?;
    let kernels = root
        .get("amdhsa.kernels")
        .and_then(Value::as_array)
        .ok_or("the code object's metadata lists no kernels")?;
    let mut found = HashMap::new();
    for kernel in kernels {
        let name = kernel
            .get(".name")
            .and_then(Value::as_str)
            .ok_or("a kernel without a name in the metadata")?;
        let mut sizes = Vec::new();
        for arg in kernel.get(".args").and_then(Value::as_array).unwrap_or(&[]) {
            let kind = arg
                .get(".value_kind")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("kernel {name:?}: an argument without a kind"))?;
            let size = arg
                .get(".size")
                .and_then(Value::as_uint)
                .ok_or_else(|| format!("kernel {name:?}: an argument without a size"))?;
            match kind {
                _ if kind.starts_with("hidden_") => {}
                "global_buffer" if size == 8 => sizes.push(8),
                "by_value" => sizes.push(size),
                other => {
                    return Err(format!(
                    "kernel {name:?}: arguments of kind {other:?} (size {size}) are not supported"
                ))
                }
            }
        }
        if found.insert(name.to_owned(), sizes).is_some() {
            return Err(format!("the code object declares kernel {name:?} twice"));
        }
    }
    Ok(found)
}

/// Little-endian fields of an ELF64 object, read at byte offsets; a read past its end is a
/// malformed object.
struct Elf<'a>(&'a [u8]);

impl<'a> Elf<'a> {
    /// An ELF64 little-endian object, or why not.
    fn new(elf: &'a [u8]) -> Result<Elf<'a>, String> {
        if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
            return Err("not a 64-bit little-endian ELF object".to_owned());
        }
        Ok(Elf(elf))
    }

    fn bytes(&self, at: u64, n: usize) -> Result<&'a [u8], String> {
        let bad = || "a malformed ELF object".to_owned();
        let at = usize::try_from(at).map_err(|_| bad())?;
        self.0
            .get(at..at.checked_add(n).ok_or_else(bad)?)
            .ok_or_else(bad)
    }

    fn u16(&self, at: u64) -> Result<u64, String> {
        Ok(u16::from_le_bytes(self.bytes(at, 2)?.try_into().unwrap()).into())
    }

    fn u32(&self, at: u64) -> Result<u64, String> {
        Ok(u32::from_le_bytes(self.bytes(at, 4)?.try_into().unwrap()).into())
    }

    fn u64(&self, at: u64) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(at, 8)?.try_into().unwrap()))
    }

    /// `offset` into the `index`th entry of a header table at `table` of `entry_size` bytes.
    fn entry(table: u64, entry_size: u64, index: u64, offset: u64) -> Result<u64, String> {
        index
            .checked_mul(entry_size)
            .and_then(|at| at.checked_add(table)?.checked_add(offset))
            .ok_or_else(|| "a malformed ELF object".to_owned())
    }
}

/// Refuses a code object with a segment or a section whose bytes lie beyond the file's end:
/// `hipModuleLoadData` takes no length, so the runtime would read past the host's buffer.
fn check_bounds(bytes: &[u8]) -> Result<(), String> {
    const SHT_NOBITS: u64 = 8;
    // ELF64's own sizes: a loader steps through the tables by these, whatever the file says.
    const PROGRAM_HEADER: u64 = 56;
    const SECTION_HEADER: u64 = 64;
    let elf = Elf::new(bytes)?;
    let length = bytes.len() as u64;
    let past_end = |offset: u64, size: u64| offset.checked_add(size).is_none_or(|end| end > length);
    let (table, size, count) = (elf.u64(0x20)?, elf.u16(0x36)?, elf.u16(0x38)?);
    let (sections, section_size, section_count) = (elf.u64(0x28)?, elf.u16(0x3a)?, elf.u16(0x3c)?);
    if size != PROGRAM_HEADER || (section_count > 0 && section_size != SECTION_HEADER) {
        return Err(format!(
            "header entries of {size} and {section_size} bytes; ELF64 has {PROGRAM_HEADER} and \
             {SECTION_HEADER}"
        ));
    }
    // Extended numbering (counts kept in section 0) is not read here, so it is refused.
    if count == 0xffff || (section_count == 0 && sections != 0) {
        return Err("extended ELF header numbering is not accepted".to_owned());
    }
    if past_end(table, count * size) || past_end(sections, section_count * section_size) {
        return Err(format!(
            "the code object's header tables lie beyond its {length} bytes"
        ));
    }
    for index in 0..count {
        let field = |offset| Elf::entry(table, size, index, offset);
        if past_end(elf.u64(field(0x08)?)?, elf.u64(field(0x20)?)?) {
            return Err(format!(
                "segment {index} of the code object lies beyond its {length} bytes"
            ));
        }
    }
    for index in 0..section_count {
        let field = |offset| Elf::entry(sections, section_size, index, offset);
        if elf.u32(field(4)?)? == SHT_NOBITS {
            continue;
        }
        if past_end(elf.u64(field(0x18)?)?, elf.u64(field(0x20)?)?) {
            return Err(format!(
                "section {index} of the code object lies beyond its {length} bytes"
            ));
        }
    }
    Ok(())
}

/// Refuses a code object whose loaded segments hold memory a kernel could keep across jobs:
/// writable memory other than the dynamic section (which the loader fills; `__device__`
/// globals live in `.data`/`.bss`), or memory beyond the file's bytes (a zero-filled `.bss`).
/// A loaded module is kept for the next jobs, so such memory would outlive the job, carry one
/// run's values into another's (another tenant's, for a shared kernel) and count against no
/// job's memory limit; what is left is read-only and no larger than the kernel's own bytes.
fn check_segments(elf: &[u8]) -> Result<(), String> {
    /// The largest writable segment accepted, and only over the dynamic section: 32 entries.
    const MAX_DYNAMIC_BYTES: u64 = 512;
    const PT_LOAD: u64 = 1;
    const PT_DYNAMIC: u64 = 2;
    const PF_W: u64 = 2;
    let elf = Elf::new(elf)?;
    let (table, size, count) = (elf.u64(0x20)?, elf.u16(0x36)?, elf.u16(0x38)?);
    // (flags, vaddr, filesz, memsz) of each segment of `kind`.
    let segments = |kind: u64| -> Result<Vec<(u64, u64, u64, u64)>, String> {
        let mut found = Vec::new();
        for index in 0..count {
            let field = |offset| Elf::entry(table, size, index, offset);
            if elf.u32(field(0)?)? != kind {
                continue;
            }
            found.push((
                elf.u32(field(4)?)?,
                elf.u64(field(0x10)?)?,
                elf.u64(field(0x20)?)?,
                elf.u64(field(0x28)?)?,
            ));
        }
        Ok(found)
    };
    let dynamic = segments(PT_DYNAMIC)?;
    for (flags, vaddr, filesz, memsz) in segments(PT_LOAD)? {
        if memsz > filesz {
            return Err(format!(
                "the code object loads {} bytes of zero-filled memory (a .bss: __device__ \
                 globals); GPU kernels keep state in the job's buffers only",
                memsz - filesz
            ));
        }
        // A dynamic section is a few entries of 16 bytes (0x70 in the committed objects):
        // the file names the segment, so its size is bounded here, not taken on trust.
        let only_dynamic = memsz <= MAX_DYNAMIC_BYTES
            && dynamic
                .iter()
                .any(|&(_, at, _, dynamic_size)| at == vaddr && memsz <= dynamic_size);
        if flags & PF_W != 0 && !only_dynamic {
            return Err(format!(
                "the code object loads {memsz} bytes of writable memory (__device__ globals); \
                 GPU kernels keep state in the job's buffers only"
            ));
        }
    }
    Ok(())
}

/// The largest metadata note read (real ones are a few KiB per kernel).
const MAX_METADATA_BYTES: usize = 1 << 20;

/// The description of the ELF64 little-endian object's `AMDGPU` note of type 32. Notes are
/// looked for in the section headers and the program headers alike, and every copy found must
/// be the same bytes, so that whichever the runtime reads is the one checked here.
fn metadata_note(elf: &[u8]) -> Result<Vec<u8>, String> {
    let elf = Elf::new(elf)?;
    // (header table, entry size, count, the type of a note, where type, offset and size are).
    let tables = [
        (
            elf.u64(0x28)?,
            elf.u16(0x3a)?,
            elf.u16(0x3c)?,
            7,
            (4, 0x18, 0x20),
        ), // SHT_NOTE
        (
            elf.u64(0x20)?,
            elf.u16(0x36)?,
            elf.u16(0x38)?,
            4,
            (0, 0x08, 0x20),
        ), // PT_NOTE
    ];
    let mut found: Option<Vec<u8>> = None;
    for (table, entry_size, count, note_type, (type_at, offset_at, size_at)) in tables {
        for index in 0..count {
            let field = |offset| Elf::entry(table, entry_size, index, offset);
            if elf.u32(field(type_at)?)? != note_type {
                continue;
            }
            let offset = elf.u64(field(offset_at)?)?;
            let size = elf.u64(field(size_at)?)?;
            let size = usize::try_from(size).map_err(|_| "a malformed ELF object".to_owned())?;
            let notes = elf.bytes(offset, size)?;
            for desc in amdgpu_notes(notes)? {
                if desc.len() > MAX_METADATA_BYTES {
                    return Err(format!(
                        "the code object's metadata is {} bytes; at most {MAX_METADATA_BYTES} are read",
                        desc.len()
                    ));
                }
                match &found {
                    Some(earlier) if earlier.as_slice() != desc => {
                        return Err("the code object carries two different metadata notes".into())
                    }
                    Some(_) => {}
                    None => found = Some(desc.to_vec()),
                }
            }
        }
    }
    found.ok_or_else(|| "the code object has no AMDGPU metadata note".to_owned())
}

/// The descriptions of the `AMDGPU` notes of type 32 (`NT_AMDGPU_METADATA`) in `notes`.
fn amdgpu_notes(notes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let bad = || "a malformed ELF note".to_owned();
    let mut found = Vec::new();
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let word = |i: usize| u32::from_le_bytes(notes[i..i + 4].try_into().unwrap()) as usize;
        let (name_size, desc_size, kind) = (word(at), word(at + 4), word(at + 8));
        let name_start = at + 12;
        let name_end = name_start.checked_add(name_size).ok_or_else(bad)?;
        let desc_start = name_start
            .checked_add(name_size.div_ceil(4) * 4)
            .ok_or_else(bad)?;
        let desc_end = desc_start.checked_add(desc_size).ok_or_else(bad)?;
        let name = notes.get(name_start..name_end).ok_or_else(bad)?;
        let desc = notes.get(desc_start..desc_end).ok_or_else(bad)?;
        if kind == 32 && name.strip_suffix(b"\0").unwrap_or(name) == b"AMDGPU" {
            found.push(desc);
        }
        at = desc_start
            .checked_add(desc_size.div_ceil(4) * 4)
            .ok_or_else(bad)?;
    }
    Ok(found)
}

/// The MessagePack values the metadata uses.
#[derive(Debug)]
enum Value {
    Nil,
    Bool,
    Int(i128),
    Float,
    Str(String),
    Bin,
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(text) => Some(text),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    fn as_uint(&self) -> Option<u64> {
        match self {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }
}

/// Nesting deeper than this is refused (the metadata nests four levels).
const MAX_DEPTH: usize = 16;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or("the metadata ends early")?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("the metadata nests too deeply".to_owned());
        }
        let tag = self.take(1)?[0];
        Ok(match tag {
            0x00..=0x7f => Value::Int(tag.into()),
            0xe0..=0xff => Value::Int(i128::from(tag as i8)),
            0xc0 => Value::Nil,
            0xc2 | 0xc3 => Value::Bool,
            0xcc..=0xcf => Value::Int(self.uint(1 << (tag - 0xcc))?.into()),
            0xd0..=0xd3 => {
                let n = 1 << (tag - 0xd0);
                let raw = self.uint(n)?;
                let shift = 64 - 8 * n as u32;
                Value::Int(i128::from(((raw << shift) as i64) >> shift))
            }
            0xca => self.take(4).map(|_| Value::Float)?,
            0xcb => self.take(8).map(|_| Value::Float)?,
            0xa0..=0xbf => self.string(usize::from(tag - 0xa0))?,
            0xd9..=0xdb => {
                let n = self.uint(1 << (tag - 0xd9))? as usize;
                self.string(n)?
            }
            0xc4..=0xc6 => {
                let n = self.uint(1 << (tag - 0xc4))? as usize;
                self.take(n).map(|_| Value::Bin)?
            }
            0x90..=0x9f => self.array(usize::from(tag - 0x90), depth)?,
            0xdc | 0xdd => {
                let n = self.uint(if tag == 0xdc { 2 } else { 4 })? as usize;
                self.array(n, depth)?
            }
            0x80..=0x8f => self.map(usize::from(tag - 0x80), depth)?,
            0xde | 0xdf => {
                let n = self.uint(if tag == 0xde { 2 } else { 4 })? as usize;
                self.map(n, depth)?
            }
            other => return Err(format!("unsupported MessagePack tag {other:#04x}")),
        })
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map(Value::Str)
            .map_err(|_| "a metadata string is not UTF-8".to_owned())
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value, String> {
        // Every element takes at least a byte: a count beyond what is left is malformed.
        if n > self.bytes.len() - self.at {
            return Err("the metadata ends early".to_owned());
        }
        (0..n)
            .map(|_| self.value(depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array)
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, String> {
        if n > self.bytes.len() - self.at {
            return Err("the metadata ends early".to_owned());
        }
        let mut pairs: Vec<(Value, Value)> = Vec::with_capacity(n);
        let mut keys = std::collections::HashSet::new();
        for _ in 0..n {
            let key = self.value(depth + 1)?;
            // A reader that took the other copy of a key would see other arguments.
            if let Some(text) = key.as_str() {
                if !keys.insert(text.to_owned()) {
                    return Err(format!("the metadata repeats the key {text:?}"));
                }
            }
            pairs.push((key, self.value(depth + 1)?));
        }
        Ok(Value::Map(pairs))
    }
}

#[cfg(test)]
#[path = "hsaco_tests.rs"]
mod tests;
