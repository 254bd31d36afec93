//! Writes the seed corpora: `seeds/parse` from the hostile-frame catalogue (real frames and
//! every kind of malformed one the hostile-tenant suite sends), `seeds/config` from the
//! example configs. Run from `fuzz/`: `cargo run --example seeds`.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let parse = Path::new("seeds/parse");
    fs::create_dir_all(parse)?;
    let me = xswitch_fuzz::hostile::Host { mac: [2, 0, 0, 0, 0, 1], ip: [10, 9, 0, 1] };
    let peer = xswitch_fuzz::hostile::Host { mac: [2, 0, 0, 0, 0, 2], ip: [10, 9, 0, 2] };
    let mut n = 0;
    for c in xswitch_fuzz::hostile::catalogue(&me, &peer) {
        fs::write(parse.join(c.name), &c.bytes)?;
        n += 1;
    }
    let config = Path::new("seeds/config");
    fs::create_dir_all(config)?;
    for e in fs::read_dir("../configs")? {
        let p = e?.path();
        if let Some(name) = p.file_name() {
            fs::copy(&p, config.join(name))?;
            n += 1;
        }
    }
    println!("{n} seeds written");
    Ok(())
}
