//! Reconfiguration by diff: what a new config changes against the running one, what a reload
//! would do about it, and what it must refuse.
//!
//! Everything a reload can apply without a restart is live: ports added and removed (their
//! sockets opened or closed, nothing else disturbed), tenants added, removed and changed, a
//! port's rate, burst and MTU. What is set up once at start stays refused, with the exact
//! reason, and then nothing at all is applied: `[switch]` (frames, rings, workers), `[sriov]`,
//! `[metrics]`, `[control]`, `[cluster]`, and what a kept port's sockets are made of
//! (interface, VF, kind, queues, bind mode: remove the port in one reload and add it back in
//! the next).
//!
//! The same [`Diff`] feeds `xswitch ctl reload --dry-run`, `check-config --against-running`
//! and the reload itself, so what the dry run prints is what a reload does.

use serde::Serialize;

use crate::config::model::Config;

/// A changed port or tenant and which of its fields changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// Its name.
    pub name: String,
    /// The fields that differ (`rate`, `acl`, `attach`, ...).
    pub fields: Vec<String>,
}

/// What `new` changes against `old`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Ports only `new` has.
    pub ports_added: Vec<String>,
    /// Ports only `old` has.
    pub ports_removed: Vec<String>,
    /// Ports both have, with different settings.
    pub ports_changed: Vec<Changed>,
    /// Tenants only `new` has.
    pub tenants_added: Vec<String>,
    /// Tenants only `old` has.
    pub tenants_removed: Vec<String>,
    /// Tenants both have, with different settings.
    pub tenants_changed: Vec<Changed>,
    /// Why the reload cannot be applied live (empty: it can).
    pub refused: Vec<String>,
}

impl Diff {
    /// True when the configs are the same in everything a reload looks at.
    pub fn is_empty(&self) -> bool {
        self.ports_added.is_empty()
            && self.ports_removed.is_empty()
            && self.ports_changed.is_empty()
            && self.tenants_added.is_empty()
            && self.tenants_removed.is_empty()
            && self.tenants_changed.is_empty()
            && self.refused.is_empty()
    }

    /// The tenants whose section did not change (they keep everything across the reload).
    pub fn untouched<'a>(&self, new: &'a Config) -> Vec<&'a str> {
        new.tenants
            .keys()
            .filter(|n| {
                !self.tenants_added.contains(n)
                    && !self.tenants_changed.iter().any(|c| &c.name == *n)
            })
            .map(String::as_str)
            .collect()
    }
}

/// The fields of a port that make up its sockets: they cannot change while it runs (the
/// others, `rate`, `burst` and `mtu`, are applied live).
const SOCKET_FIELDS: [&str; 7] = ["interface", "pf", "vf", "vfs", "kind", "queues", "mode"];

/// Compares `new` with the running `old`.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    if old.switch != new.switch {
        let keys = changed_keys(&old.switch, &new.switch);
        d.refused.push(format!(
            "[switch] changed ({}): frames, rings and workers are set at start; restart to apply",
            keys.join(", ")
        ));
    }
    if old.sriov != new.sriov {
        d.refused.push("[sriov] changed: VFs are provisioned and set up at start".into());
    }
    if old.metrics != new.metrics {
        d.refused.push("[metrics] changed: its listener is set up at start".into());
    }
    if old.control != new.control {
        d.refused.push("[control] changed: the control socket is set up at start".into());
    }
    if old.cluster != new.cluster {
        d.refused.push(
            "[cluster] changed: the cluster agent (etcd endpoints, host name, lease, prefix) is \
             set up at start; restart, or upgrade (`xswitch ctl upgrade`) to apply it"
                .into(),
        );
    }
    for (name, p) in &new.ports {
        match old.ports.get(name) {
            None => d.ports_added.push(name.clone()),
            Some(o) => {
                let fields = changed_keys(o, p);
                let sockets: Vec<&str> = fields
                    .iter()
                    .map(String::as_str)
                    .filter(|f| SOCKET_FIELDS.contains(f))
                    .collect();
                if !sockets.is_empty() {
                    d.refused.push(format!(
                        "port {name}: {} changed: a port's sockets cannot change while it \
                         runs; remove the port in one reload and add it back in the next",
                        sockets.join(", ")
                    ));
                }
                if !fields.is_empty() {
                    d.ports_changed.push(Changed { name: name.clone(), fields });
                }
            }
        }
    }
    d.ports_removed = old.ports.keys().filter(|k| !new.ports.contains_key(*k)).cloned().collect();
    for (name, t) in &new.tenants {
        match old.tenants.get(name) {
            None => d.tenants_added.push(name.clone()),
            Some(o) => {
                let fields = changed_keys(o, t);
                if !fields.is_empty() {
                    d.tenants_changed.push(Changed { name: name.clone(), fields });
                }
            }
        }
    }
    d.tenants_removed =
        old.tenants.keys().filter(|k| !new.tenants.contains_key(*k)).cloned().collect();
    d
}

/// The keys of two sections of the config that differ, in name order: every field, so a field
/// added to the model is compared without being listed here.
fn changed_keys<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
        (toml::Value::try_from(a), toml::Value::try_from(b))
    else {
        return Vec::new();
    };
    let keys: std::collections::BTreeSet<&String> =
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
    keys.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[switch]
frames = 16384
[ports.up]
interface = "eth0"
kind = "uplink"
[ports.a]
interface = "veth-a"
kind = "tenant"
[tenants.red]
attach = [{ port = "a" }, { port = "up", vlan = 100 }]
[tenants.blue]
attach = [{ port = "up", vlan = 200 }]
"#;

    fn load(text: &str) -> Config {
        crate::config::load_str("test.toml", text).expect("a valid config")
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let d = diff(&load(BASE), &load(BASE));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.untouched(&load(BASE)), ["blue", "red"]);
    }

    #[test]
    fn ports_and_tenants_added_removed_and_changed_are_live() {
        let new = BASE.replace(
            "[tenants.blue]\nattach = [{ port = \"up\", vlan = 200 }]",
            "[ports.b]\ninterface = \"veth-b\"\nkind = \"tenant\"\nrate = \"1Gbit\"\n\
             [tenants.green]\nattach = [{ port = \"b\" }]",
        )
        .replace("kind = \"uplink\"", "kind = \"uplink\"\nmtu = 1400")
        .replace("attach = [{ port = \"a\" }, { port = \"up\", vlan = 100 }]",
            "attach = [{ port = \"a\" }, { port = \"up\", vlan = 100 }]\nacl_default = \"deny\"");
        let d = diff(&load(BASE), &load(&new));
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        assert_eq!(d.ports_added, ["b"]);
        assert!(d.ports_removed.is_empty());
        assert_eq!(d.ports_changed, [Changed { name: "up".into(), fields: vec!["mtu".into()] }]);
        assert_eq!(d.tenants_added, ["green"]);
        assert_eq!(d.tenants_removed, ["blue"]);
        assert_eq!(
            d.tenants_changed,
            [Changed { name: "red".into(), fields: vec!["acl_default".into()] }]
        );
        assert!(d.untouched(&load(&new)).is_empty(), "red changed, green is new");
    }

    #[test]
    fn a_changed_cluster_section_is_refused() {
        let cluster = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nhost = \"a\"\n\
                       [ports.ul]\ninterface = \"eth1\"\nkind = \"underlay\"\n\
                       [ports.ul.tunnel]\naddress = \"192.168.0.1\"\nmac = \"02:00:00:00:00:01\"\n";
        let (old, new) =
            (format!("{cluster}{BASE}"), format!("{}{BASE}", cluster.replace("\"a\"", "\"b\"")));
        let d = diff(&load(&old), &load(&new));
        assert_eq!(d.refused.len(), 1, "{:?}", d.refused);
        assert!(d.refused[0].starts_with("[cluster] changed"), "{}", d.refused[0]);
        assert!(diff(&load(&old), &load(&old)).is_empty());
    }

    #[test]
    fn what_is_set_at_start_is_refused_with_the_reason() {
        let new = BASE
            .replace("frames = 16384", "frames = 32768\nring_size = 512")
            .replace("interface = \"veth-a\"", "interface = \"veth-z\"\nqueues = 2");
        let d = diff(&load(BASE), &load(&new));
        assert_eq!(d.refused.len(), 2, "{:?}", d.refused);
        // Every changed key once (two changed keys were each named twice).
        assert!(
            d.refused[0].starts_with("[switch] changed (frames, ring_size):"),
            "{}",
            d.refused[0]
        );
        assert!(
            d.refused[1].starts_with("port a: interface, queues changed")
                && d.refused[1].contains("remove the port in one reload"),
            "{}",
            d.refused[1]
        );
    }
}
