//! The config loader and compiler on arbitrary text: an error or a snapshot, never a panic;
//! and a config that loads and compiles must compile again to the same ports and tenants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let Ok(text) = std::str::from_utf8(b) else { return };
    let Ok(cfg) = control::config::load_str("fuzz.toml", text) else { return };
    let Ok(a) = control::compile(&cfg, 1) else { return };
    let b = control::compile(&cfg, 2).expect("compiles twice");
    assert_eq!(a.ports.len(), b.ports.len());
    assert_eq!(a.tenants, b.tenants);
});
