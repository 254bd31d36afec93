//! The per-tenant table that the demo and the simulation print.

use dataplane::snapshot::Snapshot;
use dataplane::trace::{Counters, DropReason};

/// Prints rx, tx and drops by reason per tenant, then the frames that belonged to no tenant.
/// `kernel_lost` (by port; empty without AF_XDP) is what the kernel dropped before the switch
/// saw it: a tenant's column has the ports only it is attached to, the last row the ports
/// tenants share (an uplink), so that "0 dropped" never hides a loss.
pub fn print_tenants(snap: &Snapshot, c: &Counters, kernel_lost: &[u64]) {
    // Each port's tenants: one (its own) or several (shared).
    let mut owner: Vec<Option<Option<usize>>> = vec![None; snap.ports.len()];
    for (i, t) in snap.tenants.iter().enumerate() {
        for a in &t.attachments {
            if let Some(o) = owner.get_mut(a.port.index()) {
                *o = match *o {
                    None => Some(Some(i)),
                    Some(Some(j)) if j == i => Some(Some(i)),
                    _ => Some(None),
                };
            }
        }
    }
    let lost_of = |want: Option<usize>| -> u64 {
        kernel_lost
            .iter()
            .zip(&owner)
            .filter(|(_, o)| match want {
                Some(i) => **o == Some(Some(i)),
                None => !matches!(o, Some(Some(_))),
            })
            .map(|(n, _)| n)
            .sum()
    };
    println!();
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9}  drops by reason",
        "tenant", "rx pkts", "tx pkts", "dropped", "kernel"
    );
    for (i, t) in snap.tenants.iter().enumerate() {
        let reasons: Vec<String> = DropReason::ALL
            .iter()
            .filter(|x| c.tenant_drops[i][x.index()] > 0)
            .map(|x| format!("{}={}", x.as_label(), c.tenant_drops[i][x.index()]))
            .collect();
        println!(
            "{:<8} {:>9} {:>9} {:>9} {:>9}  {}",
            t.name,
            c.tenant_rx[i].packets,
            c.tenant_tx[i].packets,
            c.tenant_drops[i].iter().sum::<u64>(),
            lost_of(Some(i)),
            reasons.join(" ")
        );
    }
    let unknown = c.drops(DropReason::UnknownTenant);
    let malformed = c.drops(DropReason::Malformed);
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9}  of no tenant: unknown_tenant={unknown} malformed={malformed}; kernel: shared or unattached ports",
        "-",
        "",
        "",
        unknown + malformed,
        lost_of(None)
    );
    println!();
}
