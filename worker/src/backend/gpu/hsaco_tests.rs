//! Tests of `hsaco.rs`: the committed code objects, and malformed ones refused.

use super::*;

fn read(name: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/hsaco");
    std::fs::read(root.join(name)).unwrap()
}

#[test]
fn the_committed_code_objects_declare_their_buffers_then_their_scalars() {
    for arch in ["gfx90a", "gfx1100"] {
        let saxpy = entries(&read(&format!("saxpy.{arch}.hsaco"))).unwrap();
        assert_eq!(saxpy["saxpy"], [8, 8, 8, 4, 4], "{arch}");
        let matmul = entries(&read(&format!("matmul.{arch}.hsaco"))).unwrap();
        assert_eq!(matmul["matmul"], [8, 8, 8, 4, 4, 4], "{arch}");
    }
}

#[test]
fn writable_or_zero_filled_segments_are_refused() {
    let good = read("saxpy.gfx90a.hsaco");
    assert!(entries(&good).is_ok());
    // The program headers: (offset of each header, its type).
    let table = u64::from_le_bytes(good[0x20..0x28].try_into().unwrap()) as usize;
    let size = u16::from_le_bytes(good[0x36..0x38].try_into().unwrap()) as usize;
    let count = u16::from_le_bytes(good[0x38..0x3a].try_into().unwrap()) as usize;
    let loads: Vec<usize> = (0..count)
        .map(|i| table + i * size)
        .filter(|&at| u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) == 1)
        .collect();
    assert!(loads.len() >= 2);
    // The first (read-only) load made writable: a .data.
    let mut data = good.clone();
    data[loads[0] + 4] |= 2;
    assert!(entries(&data).unwrap_err().contains("writable"));
    // A writable load passed off as a dynamic section larger than any is.
    let dynamic_at = (0..count)
        .map(|i| table + i * size)
        .find(|&at| u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) == 2)
        .unwrap();
    let writable_load = loads
        .iter()
        .copied()
        .find(|&at| good[at + 4] & 2 != 0)
        .unwrap();
    let mut big = good.clone();
    for header in [dynamic_at, writable_load] {
        for field in [0x20, 0x28] {
            big[header + field..header + field + 8].copy_from_slice(&4096u64.to_le_bytes());
        }
    }
    // (Its 4096 bytes now run past the file's end, which `entries` refuses first.)
    assert!(check_segments(&big).unwrap_err().contains("writable"));
    assert!(entries(&big).is_err());
    // Its memory made larger than its bytes: a .bss.
    let mut bss = good.clone();
    let memsz = loads[0] + 0x28;
    let grown = u64::from_le_bytes(bss[memsz..memsz + 8].try_into().unwrap()) + (1 << 30);
    bss[memsz..memsz + 8].copy_from_slice(&grown.to_le_bytes());
    assert!(entries(&bss).unwrap_err().contains("zero-filled"));
    // A segment's bytes, then a section's, said to run past the end of the file.
    let mut long = good.clone();
    let filesz = loads[0] + 0x20;
    long[filesz..filesz + 8].copy_from_slice(&(good.len() as u64 + 1).to_le_bytes());
    assert!(entries(&long).unwrap_err().contains("beyond"), "segment");
    let sections = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
    let section_size = u16::from_le_bytes(good[0x3a..0x3c].try_into().unwrap()) as usize;
    let mut long = good.clone();
    let last = sections + section_size; // section 1 (section 0 is the null section)
    long[last + 0x20..last + 0x28].copy_from_slice(&(good.len() as u64).to_le_bytes());
    assert!(entries(&long).unwrap_err().contains("beyond"), "section");
    // Header entries of another size than ELF64's, which a loader would step through
    // differently from this check.
    let mut stride = good.clone();
    stride[0x3a..0x3c].copy_from_slice(&0u16.to_le_bytes());
    assert!(entries(&stride).unwrap_err().contains("header entries"));
    // A section table said to run past the end of the file.
    let mut table = good.clone();
    table[0x3c..0x3e].copy_from_slice(&1000u16.to_le_bytes());
    assert!(entries(&table).unwrap_err().contains("header tables"));
    // Every committed code object passes.
    for kernel in [
        "matmul", "oob", "reduce", "saxpy", "sha256", "shared", "spin", "vadd",
    ] {
        for arch in ["gfx90a", "gfx1100"] {
            let name = format!("{kernel}.{arch}.hsaco");
            assert!(check_segments(&read(&name)).is_ok(), "{name}");
            assert!(entries(&read(&name)).is_ok(), "{name}");
        }
    }
}

#[test]
fn malformed_objects_are_refused_without_panicking() {
    let good = read("saxpy.gfx90a.hsaco");
    assert!(entries(b"\x7fELF").is_err());
    // Every truncation of a real object, and bytes flipped across its headers and notes.
    for cut in (0..good.len()).step_by(97) {
        let _ = entries(&good[..cut]);
    }
    for at in (0..good.len()).step_by(13) {
        let mut bad = good.clone();
        bad[at] ^= 0xff;
        let _ = entries(&bad);
    }
}
