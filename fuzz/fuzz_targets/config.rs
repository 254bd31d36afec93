//! The config loader and compiler on arbitrary text: an error or a snapshot, never a panic;
//! a config that loads and compiles must compile again, as a reload of the same file does
//! (against the first snapshot), to the same ports and tenants with the same ids, and its diff
//! with itself is empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let Ok(text) = std::str::from_utf8(b) else { return };
    let Ok(cfg) = control::config::load_str("fuzz.toml", text) else { return };
    let Ok(a) = control::compile(&cfg, 1) else { return };
    let b = control::compile_next(&cfg, Some(&a), 2).expect("compiles twice");
    assert_eq!(a.ports, b.ports);
    assert_eq!(a.tenants, b.tenants);
    assert!(control::diff::diff(&cfg, &cfg).is_empty());
});
