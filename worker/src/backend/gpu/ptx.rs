//! The parameter list of a PTX entry point, read from the PTX text before the device is asked.
//!
//! `cuLaunchKernel` reads one argument per parameter the kernel declares, each of the size the
//! kernel declares, from the pointers the host passes: a kernel declaring more parameters (or a
//! larger one) than the job supplies would make the driver read the device host's own memory
//! into the kernel, which could copy it into an output. So every PTX kernel's entry must declare
//! exactly the job's buffers (one 64-bit device pointer each) and then its scalar parameters
//! (each of its type's width), or the job is refused before its kernel reaches the driver.
//!
//! The reader is strict rather than complete: comments and the contents of strings are skipped,
//! and anything it does not understand in a parameter list (or a preprocessor line anywhere)
//! refuses the kernel.

use std::collections::HashMap;

/// Every entry point of `ptx` with the size in bytes of each of its parameters, in order.
pub fn entries(ptx: &str) -> Result<HashMap<String, Vec<u64>>, String> {
    let text = strip_comments(ptx)?;
    if text.lines().any(|line| line.trim_start().starts_with('#')) {
        return Err("PTX with preprocessor lines is not accepted".to_owned());
    }
    if declares_global(&text) {
        return Err(
            "the PTX declares a .global variable (a __device__ global): a loaded module is kept for \
             the next jobs, so module-scope device memory would outlive the job, carry one run's \
             values into another's, and count against no job's memory limit; keep state in the \
             job's buffers"
                .to_owned(),
        );
    }
    if declares_extern_function(&text) {
        return Err(
            "the PTX calls a function from outside the module (.extern .func: printf, malloc, \
             assert…): the device heap would outlive the job, and a device-side printf reaches \
             no one; GPU kernels take and give data through the job's buffers only"
                .to_owned(),
        );
    }
    let mut found = HashMap::new();
    let mut rest = text.as_str();
    while let Some(at) = find_word(rest, ".entry") {
        let after = rest[at + ".entry".len()..].trim_start();
        let name_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_$%.".contains(c)))
            .unwrap_or(after.len());
        let name = &after[..name_end];
        if name.is_empty() {
            return Err("an .entry without a name".to_owned());
        }
        let params = param_list(after[name_end..].trim_start(), name)?;
        if found.insert(name.to_owned(), params).is_some() {
            return Err(format!("the PTX declares entry {name:?} twice"));
        }
        rest = &after[name_end..];
    }
    Ok(found)
}

/// The text with `//` and `/* */` comments replaced by a space and the contents of string
/// literals (`.file 1 "…"`, `.pragma "…"`) blanked, so that neither can hide or fake a
/// directive; one pass over the text.
fn strip_comments(ptx: &str) -> Result<String, String> {
    enum In {
        Code,
        LineComment,
        BlockComment,
        Str,
    }
    let bytes = ptx.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut state = In::Code;
    let mut i = 0;
    while i < bytes.len() {
        let (byte, next) = (bytes[i], bytes.get(i + 1).copied());
        match state {
            In::Code => match (byte, next) {
                (b'/', Some(b'/')) => {
                    state = In::LineComment;
                    i += 1;
                }
                (b'/', Some(b'*')) => {
                    out.push(b' ');
                    state = In::BlockComment;
                    i += 1;
                }
                (b'"', _) => {
                    out.push(b'"');
                    state = In::Str;
                }
                _ => out.push(byte),
            },
            In::LineComment => {
                if byte == b'\n' {
                    out.push(b'\n');
                    state = In::Code;
                }
            }
            In::BlockComment => {
                if byte == b'*' && next == Some(b'/') {
                    state = In::Code;
                    i += 1;
                }
            }
            In::Str => match byte {
                b'\\' => i += 1, // an escaped character, skipped with it
                b'"' => {
                    out.push(b'"');
                    state = In::Code;
                }
                b'\n' => return Err("the PTX has an unterminated string".to_owned()),
                _ => {}
            },
        }
        i += 1;
    }
    match state {
        In::BlockComment => Err("the PTX has an unterminated comment".to_owned()),
        In::Str => Err("the PTX has an unterminated string".to_owned()),
        In::Code | In::LineComment => {
            // Only ASCII bytes were dropped or inserted, so the text is still UTF-8.
            String::from_utf8(out).map_err(|_| "PTX must be text (UTF-8)".to_owned())
        }
    }
}

/// Where `word` occurs in `text` as a whole directive (not as part of a longer name).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let end = start + word.len();
        let next = text[end..].chars().next();
        if next.is_none_or(|c| c.is_whitespace()) {
            return Some(start);
        }
        from = end;
    }
    None
}

/// Whether `text` declares a function defined outside the module (`.extern .func`): the CUDA
/// runtime's `vprintf`, `malloc`, `free`, `__assertfail`. (`.extern .shared`, dynamic shared
/// memory, is the launch's.)
fn declares_extern_function(text: &str) -> bool {
    let mut rest = text;
    while let Some(at) = find_word(rest, ".extern") {
        let after = rest[at + ".extern".len()..].trim_start();
        if after.starts_with(".func") {
            return true;
        }
        rest = after;
    }
    false
}

/// Whether `text` declares a variable in the `.global` state space: the directive `.global`
/// starting a token (after anything but a letter, digit, `_`, `$`, `%` or `.`: whitespace, `;`,
/// `}`, the start), not the suffix of an instruction (`ld.global`) nor a parameter's pointer
/// annotation (`.ptr .global`).
fn declares_global(text: &str) -> bool {
    let mut from = 0;
    while let Some(at) = text[from..].find(".global") {
        let start = from + at;
        let end = start + ".global".len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        let annotation = text[..start].trim_end().ends_with(".ptr");
        let starts_token =
            before.is_none_or(|c| !(c.is_ascii_alphanumeric() || "_$%.".contains(c)));
        let ends_token = after.is_none_or(|c| !(c.is_ascii_alphanumeric() || "_$".contains(c)));
        if starts_token && ends_token && !annotation {
            return true;
        }
        from = end;
    }
    false
}

/// The sizes of the parameters in `list`, which starts at the entry's `(`.
fn param_list(list: &str, entry: &str) -> Result<Vec<u64>, String> {
    let bad = |why: &str| format!("entry {entry:?}: {why}");
    let Some(inner) = list.strip_prefix('(') else {
        // An entry without a parameter list takes no parameters.
        return Ok(Vec::new());
    };
    let close = inner
        .find(')')
        .ok_or_else(|| bad("its parameter list is not closed"))?;
    let inner = inner[..close].trim();
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|param| param_size(param.trim()).map_err(|why| bad(&why)))
        .collect()
}

/// The size of one `.param` declaration: `.param [.ptr …] [.align N] .type name[[N]]`.
fn param_size(param: &str) -> Result<u64, String> {
    let mut words = param.split_whitespace().peekable();
    if words.next() != Some(".param") {
        return Err(format!("cannot read parameter {param:?}"));
    }
    let mut width = None;
    let mut name = None;
    for word in words {
        match word {
            ".b8" | ".u8" | ".s8" => width = Some(1),
            ".b16" | ".u16" | ".s16" | ".f16" => width = Some(2),
            ".b32" | ".u32" | ".s32" | ".f32" => width = Some(4),
            ".b64" | ".u64" | ".s64" | ".f64" => width = Some(8),
            ".ptr" | ".global" | ".const" | ".shared" | ".local" | ".align" => {}
            w if w.chars().all(|c| c.is_ascii_digit()) => {} // the alignment's value
            w if !w.starts_with('.') && name.is_none() => name = Some(w),
            _ => return Err(format!("cannot read parameter {param:?}")),
        }
    }
    let width: u64 = width.ok_or_else(|| format!("parameter {param:?} has no type"))?;
    let name = name.ok_or_else(|| format!("parameter {param:?} has no name"))?;
    let count = match name.split_once('[') {
        None => 1,
        Some((_, dims)) => {
            let n = dims
                .strip_suffix(']')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("cannot read the array size of {param:?}"))?;
            n.max(1)
        }
    };
    Ok(width.saturating_mul(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_params(ptx: &str, entry: &str) -> Result<Vec<u64>, String> {
        entries(ptx)?
            .remove(entry)
            .ok_or_else(|| format!("the PTX has no entry {entry:?}"))
    }

    #[test]
    fn the_committed_kernels_declare_their_buffers_then_their_scalars() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/ptx");
        let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
        assert_eq!(
            entry_params(&read("saxpy.ptx"), "saxpy").unwrap(),
            [8, 8, 8, 4, 4]
        );
        assert_eq!(
            entry_params(&read("matmul.ptx"), "matmul").unwrap(),
            [8, 8, 8, 4, 4, 4]
        );
        assert!(entry_params(&read("saxpy.ptx"), "sax")
            .unwrap_err()
            .contains("no entry"));
    }

    #[test]
    fn what_it_cannot_read_refuses_the_kernel() {
        let ptx = ".version 7.0\n.target sm_80\n// .entry fake(.param .u64 a)\n\
                   .visible .entry k( /* two */ .param .u64 k_0, .param .align 8 .b8 k_1[4096] )\n{ ret; }";
        assert_eq!(entry_params(ptx, "k").unwrap(), [8, 4096]);
        assert!(entry_params(ptx, "fake").is_err(), "a commented-out entry");
        // A string cannot open a comment that hides the real entry (nor fake one).
        let strings = ".file 1 \"/*\"\n.visible .entry k(.param .u64 a, .param .u64 b)\n{}\n\
                       .file 2 \"*/ .entry k(.param .u64 x) \\\" //\"\n";
        assert_eq!(entry_params(strings, "k").unwrap(), [8, 8]);
        // Linear in the text: a kernel of many comment lines is read quickly.
        let many = "//\n".repeat(1 << 20) + ".entry k(.param .u64 a)\n{}";
        assert_eq!(entry_params(&many, "k").unwrap(), [8]);
        let no_params = ".entry spin()\n{ ret; }";
        assert_eq!(entry_params(no_params, "spin").unwrap(), Vec::<u64>::new());
        // Module-scope device memory: refused, however it is written; the state-space suffix
        // of an instruction or a parameter's pointer annotation is not a declaration.
        for global in [
            ".global .align 4 .b8 hog[1073741824];\n.entry k(.param .u64 a)\n{}",
            ".visible .global .u32 counter;\n.entry k(.param .u64 a)\n{}",
            ".entry k(.param .u64 a)\n{}\n\t.global .f32 late[4];",
            ".address_size 64;.global .u32 counter;\n.entry k(.param .u64 a)\n{}",
            ".entry k(.param .u64 a)\n{}.global.u32 counter;",
        ] {
            assert!(
                entry_params(global, "k").unwrap_err().contains(".global"),
                "{global}"
            );
        }
        // Functions from outside the module (printf, malloc): refused; dynamic shared memory
        // is not a function.
        for external in [
            ".extern .func (.param .b32 r) vprintf(.param .b64 a, .param .b64 b);\n.entry k(.param .u64 a)\n{}",
            ".extern  .func  (.param .b64 r) malloc (.param .b64 n);\n.entry k(.param .u64 a)\n{}",
        ] {
            assert!(
                entry_params(external, "k").unwrap_err().contains(".extern .func"),
                "{external}"
            );
        }
        let shared = ".extern .shared .align 4 .b8 dyn[];\n.entry k(.param .u64 a)\n{}";
        assert_eq!(entry_params(shared, "k").unwrap(), [8]);
        let uses = ".entry k(.param .u64 .ptr .global .align 4 a, .param .u64 b)\n{ ld.global.u32 %r1, [a]; \
                    st.volatile.global.u32 [a], %r1; cvta.to.global.u64 %rd1, %rd2; }";
        assert_eq!(entry_params(uses, "k").unwrap(), [8, 8]);
        for bad in [
            "#define X\n.entry k(.param .u64 a)\n{}",
            ".entry k(.param .u64 a\n{}",
            ".entry k(.param .u64 .weird a)\n{}",
            ".entry k(.param a)\n{}",
            ".entry k(.param .u64 a) {}\n.entry k(.param .u64 a) {}",
            ".entry k(.param .u64 a) /* unterminated",
            ".entry k(.param .u64 a) {}\n.file 1 \"unterminated",
        ] {
            assert!(entry_params(bad, "k").is_err(), "{bad}");
        }
    }
}
