//! The per-tenant table that the demo and the simulation print.

use dataplane::snapshot::Snapshot;
use dataplane::trace::{Counters, DropReason};

/// Prints rx, tx and drops by reason per tenant, then the frames that belonged to no tenant.
pub fn print_tenants(snap: &Snapshot, c: &Counters) {
    println!();
    println!("{:<8} {:>9} {:>9} {:>9}  drops by reason", "tenant", "rx pkts", "tx pkts", "dropped");
    for (i, t) in snap.tenants.iter().enumerate() {
        let reasons: Vec<String> = DropReason::ALL
            .iter()
            .filter(|x| c.tenant_drops[i][x.index()] > 0)
            .map(|x| format!("{}={}", x.as_label(), c.tenant_drops[i][x.index()]))
            .collect();
        println!(
            "{:<8} {:>9} {:>9} {:>9}  {}",
            t.name,
            c.tenant_rx[i].packets,
            c.tenant_tx[i].packets,
            c.tenant_drops[i].iter().sum::<u64>(),
            reasons.join(" ")
        );
    }
    let unknown = c.drops(DropReason::UnknownTenant);
    let malformed = c.drops(DropReason::Malformed);
    println!(
        "{:<8} {:>9} {:>9} {:>9}  of no tenant: unknown_tenant={unknown} malformed={malformed}",
        "-",
        "",
        "",
        unknown + malformed
    );
    println!();
}
