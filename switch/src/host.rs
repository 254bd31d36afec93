//! The host side of a start: SR-IOV VFs provisioned and resolved to interfaces, their
//! attributes set on the physical function through rtnetlink, and where the ports sit (NUMA).
//!
//! sysfs is read under `XSWITCH_SYSFS_ROOT` when set (tests point it at a fake tree whose VF
//! entries name real veth interfaces), `/` otherwise.

use std::time::Duration;

use anyhow::Context;
use control::config::Config;
use control::config::model::VfConfig;
use control::sriov::{PortHost, Resolve, Sysfs};
use netlink_packet_core::NLM_F_ACK;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    LinkAttribute, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoSpoofCheck, VfInfoTrust,
    VfInfoVlan,
};

/// How long a VF's interface may take to appear after provisioning.
const VF_WAIT: Duration = Duration::from_secs(10);

/// sysfs as this process sees it.
pub fn sysfs() -> Sysfs {
    Sysfs::new(std::env::var_os("XSWITCH_SYSFS_ROOT").unwrap_or_else(|| "/".into()))
}

/// Provisions and resolves the VF ports of `cfg` (`mode`), sets the VF attributes it asks
/// for (at start), and says what each port is on the host.
pub fn prepare(cfg: &Config, mode: Resolve) -> anyhow::Result<(Config, Vec<PortHost>)> {
    let sys = sysfs();
    let (resolved, hosts, log) =
        control::sriov::resolve(cfg, &sys, mode, VF_WAIT).context("SR-IOV")?;
    for l in log {
        tracing::info!("{l}");
    }
    if mode == Resolve::Provision {
        for (pf, s) in &cfg.sriov {
            for v in &s.vf {
                set_vf(pf, v).with_context(|| format!("sriov.{pf}: VF {}", v.index))?;
            }
        }
    }
    for h in &hosts {
        if let Some((pf, vf)) = &h.vf {
            let node = h.numa_node.map_or("unknown".into(), |n| n.to_string());
            tracing::info!(
                "port {}: VF {vf} of {pf} is {} (NUMA node {node})",
                h.port,
                h.interface
            );
        }
    }
    Ok((resolved, hosts))
}

/// The attributes of one VF, as one RTM_SETLINK on its physical function.
pub fn vf_message(pf_index: u32, v: &VfConfig) -> anyhow::Result<LinkMessage> {
    let mut infos = Vec::new();
    if let Some(m) = &v.mac {
        let mac: dataplane::wire::MacAddr = m.parse().map_err(|_| anyhow::anyhow!("mac {m:?}"))?;
        infos.push(VfInfo::Mac(VfInfoMac::new(v.index, &mac.0)));
    }
    if let Some(vlan) = v.vlan {
        infos.push(VfInfo::Vlan(VfInfoVlan::new(v.index, u32::from(vlan), 0)));
    }
    if let Some(on) = v.spoofchk {
        infos.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(v.index, on)));
    }
    if let Some(on) = v.trust {
        infos.push(VfInfo::Trust(VfInfoTrust::new(v.index, on)));
    }
    let mut msg = LinkMessage::default();
    msg.header.index = pf_index;
    msg.attributes.push(LinkAttribute::VfInfoList(vec![LinkVfInfo(infos)]));
    Ok(msg)
}

/// Sets a VF's attributes on physical function `pf` and waits for the kernel's answer.
pub fn set_vf(pf: &str, v: &VfConfig) -> anyhow::Result<()> {
    if v.mac.is_none() && v.vlan.is_none() && v.spoofchk.is_none() && v.trust.is_none() {
        return Ok(());
    }
    let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{pf}/ifindex"))
        .with_context(|| format!("{pf}: no such interface"))?
        .trim()
        .parse()
        .context("ifindex")?;
    match crate::netdev::request(RouteNetlinkMessage::SetLink(vf_message(index, v)?), NLM_F_ACK) {
        Ok(_) => Ok(()),
        Err(e) => match e.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::Unsupported => {
                anyhow::bail!("{pf}'s driver does not support VF attributes ({io})")
            }
            _ => Err(e).with_context(|| format!("setting VF attributes on {pf}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vf_message_carries_every_attribute_asked_for() {
        let v = VfConfig {
            index: 3,
            mac: Some("02:00:00:00:10:03".into()),
            vlan: Some(10),
            spoofchk: Some(true),
            trust: Some(false),
        };
        let m = vf_message(7, &v).unwrap();
        assert_eq!(m.header.index, 7);
        let LinkAttribute::VfInfoList(list) = &m.attributes[0] else { panic!("{m:?}") };
        let infos = &list[0].0;
        assert_eq!(infos.len(), 4);
        assert!(infos.contains(&VfInfo::Mac(VfInfoMac::new(3, &[2, 0, 0, 0, 0x10, 3]))));
        assert!(infos.contains(&VfInfo::Vlan(VfInfoVlan::new(3, 10, 0))));
        assert!(infos.contains(&VfInfo::SpoofCheck(VfInfoSpoofCheck::new(3, true))));
        assert!(infos.contains(&VfInfo::Trust(VfInfoTrust::new(3, false))));
        let bad = VfConfig { mac: Some("nope".into()), ..v };
        assert!(vf_message(7, &bad).is_err());
    }
}
