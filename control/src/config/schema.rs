//! The schema check of a config file: every unknown key and every value of the wrong type,
//! all at once, each with its line and column and the field's path, and for a key that is a
//! near miss the key meant (`did you mean fdb_quota?`).
//!
//! serde stops at the first error of a document. So the check walks the TOML itself: each
//! table against the fields of the model type it becomes (read from the type's own derived
//! `Deserialize`, [`fields_of`], so the list cannot drift from the model), then deserializes
//! each section and each named entry (a port, a tenant, a PF) on its own, with the unknown keys
//! taken out, to find one wrong value per entry. Locations come from the spans of the parsed
//! document. A file that is not TOML at all is left to the loader, whose TOML error has its
//! location already.

use serde::de::{self, DeserializeOwned, Visitor};
use toml::de::{DeTable, DeValue};

use super::issue::Issue;
use super::model::{
    AclRuleConfig, AttachConfig, Config, ControlConfig, FlowLogConfig, MetricsConfig, PortConfig,
    RateConfig, SecurityGroupConfig, SgRuleConfig, ShapingConfig, SriovConfig, StaticMacConfig,
    SwitchConfig, TenantConfig, TimeoutsConfig, VfConfig,
};

/// Every schema problem of the TOML document `text`, in document order.
pub fn check(text: &str) -> Vec<Issue> {
    let Ok(doc) = DeTable::parse(text) else { return Vec::new() };
    let Ok(mut plain) = text.parse::<toml::Table>() else { return Vec::new() };
    let mut issues = Vec::new();
    walk(&mut plain, Kind::Root, "", &mut issues);
    // One wrong value per section and per entry, the unknown keys being out of the way.
    let sections: [(&str, TypeCheck); 3] = [
        ("switch", typed::<SwitchConfig>),
        ("metrics", typed::<MetricsConfig>),
        ("control", typed::<ControlConfig>),
    ];
    for (name, f) in sections {
        if let Some(v) = plain.get(name) {
            push_type_error(f(v.clone()), name, &mut issues);
        }
    }
    let maps: [(&str, TypeCheck); 3] = [
        ("ports", typed::<PortConfig>),
        ("tenants", typed::<TenantConfig>),
        ("sriov", typed::<SriovConfig>),
    ];
    for (name, f) in maps {
        if let Some(toml::Value::Table(t)) = plain.get(name) {
            for (entry, v) in t {
                push_type_error(f(v.clone()), &format!("{name}.{entry}"), &mut issues);
            }
        }
    }
    for i in &mut issues {
        if let Some((line, col)) = locate(doc.get_ref(), &i.path, text) {
            i.reason = format!("line {line}, column {col}: {}", i.reason);
        }
    }
    issues
}

/// Deserializes a value as one model type: the path (inside it) and message of its first error.
type TypeCheck = fn(toml::Value) -> Result<(), (String, String)>;

/// Deserializes `v` as a `T`: the path (inside `v`) and message of the first error.
fn typed<T: DeserializeOwned>(v: toml::Value) -> Result<(), (String, String)> {
    serde_path_to_error::deserialize::<_, T>(v).map(drop).map_err(|e| {
        let path = e.path().to_string();
        (if path == "." { String::new() } else { path }, e.into_inner().to_string())
    })
}

fn push_type_error(r: Result<(), (String, String)>, at: &str, issues: &mut Vec<Issue>) {
    if let Err((path, msg)) = r {
        let full = if path.is_empty() { at.to_string() } else { format!("{at}.{path}") };
        issues.push(Issue::new(full, msg));
    }
}

/// What a table of the document becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Root,
    Switch,
    Metrics,
    Control,
    Port,
    Tenant,
    Attach,
    StaticMac,
    Acl,
    SecurityGroup,
    SgRule,
    Timeouts,
    Shaping,
    Rate,
    FlowLog,
    Sriov,
    Vf,
}

impl Kind {
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Root => fields_of::<Config>(),
            Kind::Switch => fields_of::<SwitchConfig>(),
            Kind::Metrics => fields_of::<MetricsConfig>(),
            Kind::Control => fields_of::<ControlConfig>(),
            Kind::Port => fields_of::<PortConfig>(),
            Kind::Tenant => fields_of::<TenantConfig>(),
            Kind::Attach => fields_of::<AttachConfig>(),
            Kind::StaticMac => fields_of::<StaticMacConfig>(),
            Kind::Acl => fields_of::<AclRuleConfig>(),
            Kind::SecurityGroup => fields_of::<SecurityGroupConfig>(),
            Kind::SgRule => fields_of::<SgRuleConfig>(),
            Kind::Timeouts => fields_of::<TimeoutsConfig>(),
            Kind::Shaping => fields_of::<ShapingConfig>(),
            Kind::Rate => fields_of::<RateConfig>(),
            Kind::FlowLog => fields_of::<FlowLogConfig>(),
            Kind::Sriov => fields_of::<SriovConfig>(),
            Kind::Vf => fields_of::<VfConfig>(),
        }
    }

    /// What the value under `key` is: a table of a kind, a map of named tables of a kind,
    /// or a list of tables of a kind (the other keys hold plain values).
    fn child(self, key: &str) -> Option<(Shape, Kind)> {
        Some(match (self, key) {
            (Kind::Root, "switch") => (Shape::One, Kind::Switch),
            (Kind::Root, "metrics") => (Shape::One, Kind::Metrics),
            (Kind::Root, "control") => (Shape::One, Kind::Control),
            (Kind::Root, "ports") => (Shape::Named, Kind::Port),
            (Kind::Root, "tenants") => (Shape::Named, Kind::Tenant),
            (Kind::Root, "sriov") => (Shape::Named, Kind::Sriov),
            (Kind::Tenant, "attach") => (Shape::List, Kind::Attach),
            (Kind::Tenant, "static_macs") => (Shape::List, Kind::StaticMac),
            (Kind::Tenant, "acl") => (Shape::List, Kind::Acl),
            (Kind::Tenant, "security_group") => (Shape::One, Kind::SecurityGroup),
            (Kind::Tenant, "shaping") => (Shape::One, Kind::Shaping),
            (Kind::Tenant, "flow_log") => (Shape::One, Kind::FlowLog),
            (Kind::SecurityGroup, "rules") => (Shape::List, Kind::SgRule),
            (Kind::SecurityGroup, "timeouts") => (Shape::One, Kind::Timeouts),
            (Kind::Shaping, "ingress" | "to_uplink" | "to_tenant") => (Shape::One, Kind::Rate),
            (Kind::Sriov, "vf") => (Shape::List, Kind::Vf),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    One,
    Named,
    List,
}

/// Reports and removes the keys of `t` (a table of kind `k` at `path`) that the model does not
/// have, then goes down into the tables it knows.
fn walk(t: &mut toml::Table, k: Kind, path: &str, issues: &mut Vec<Issue>) {
    let fields = k.fields();
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    let unknown: Vec<String> =
        t.keys().filter(|key| !fields.contains(&key.as_str())).cloned().collect();
    for key in unknown {
        t.remove(&key);
        let near = fields
            .iter()
            .map(|f| (strsim::levenshtein(&key, f), *f))
            .filter(|(d, f)| *d <= 2.max(f.len() / 4))
            .min();
        let mut reason = format!("unknown key {key:?}");
        match near {
            Some((_, f)) => reason += &format!("; did you mean `{f}`?"),
            None if !fields.is_empty() => {
                reason += &format!(" (known here: {})", fields.join(", "))
            }
            None => {}
        }
        issues.push(Issue::new(join(&key), reason));
    }
    for (key, v) in t.iter_mut() {
        let Some((shape, child)) = k.child(key) else { continue };
        let at = join(key);
        match (shape, v) {
            (Shape::One, toml::Value::Table(t)) => walk(t, child, &at, issues),
            (Shape::Named, toml::Value::Table(t)) => {
                for (name, v) in t.iter_mut() {
                    if let toml::Value::Table(e) = v {
                        walk(e, child, &format!("{at}.{name}"), issues);
                    }
                }
            }
            (Shape::List, toml::Value::Array(a)) => {
                for (i, v) in a.iter_mut().enumerate() {
                    if let toml::Value::Table(e) = v {
                        walk(e, child, &format!("{at}[{i}]"), issues);
                    }
                }
            }
            // A wrong type for the table itself: the typed pass says so.
            _ => {}
        }
    }
}

/// Line and column (from 1) of the key at `path` (`a.b[2].c`) in the document.
fn locate(doc: &DeTable<'_>, path: &str, text: &str) -> Option<(usize, usize)> {
    let mut table = doc;
    let mut span = None;
    let mut segments = split(path).into_iter().peekable();
    while let Some((key, index)) = segments.next() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
        span = Some(k.span());
        let mut value = v.get_ref();
        if let Some(i) = index {
            let item = value.as_array()?.get(i)?;
            span = Some(item.span());
            value = item.get_ref();
        }
        if segments.peek().is_none() {
            break;
        }
        let DeValue::Table(t) = value else { break };
        table = t;
    }
    let at = span?.start.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

/// `a.b[2].c` as `[("a", None), ("b", Some(2)), ("c", None)]`.
fn split(path: &str) -> Vec<(&str, Option<usize>)> {
    path.split('.')
        .map(|s| match s.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse().ok()),
            None => (s, None),
        })
        .collect()
}

/// The field names of a struct deserialized by derive (what its `deserialize_struct` call
/// names), so the schema follows the model.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Introspect(&mut fields));
    fields
}

/// A deserializer that only records the fields a struct asks for.
struct Introspect<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for Introspect<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("introspection"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("introspection"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_model() {
        assert!(fields_of::<TenantConfig>().contains(&"fdb_quota"));
        assert!(fields_of::<Config>().contains(&"tenants"));
        assert!(fields_of::<SgRuleConfig>().contains(&"remote"));
    }

    #[test]
    fn three_problems_three_errors_with_places_and_a_suggestion() {
        let text = "[ports.up]\ninterface = \"u0\"\nkind = \"uplink\"\n\n\
                    [tenants.red]\nattach = [{ port = \"up\", vlan = 100, colour = 1 }]\n\
                    fdb_qouta = 10\nmac_aging_secs = \"long\"\n";
        let issues = check(text);
        let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(issues.len(), 3, "{shown:#?}");
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("tenants.red.fdb_qouta: line 7, column 1: unknown key")
                    && s.contains("did you mean `fdb_quota`?")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with("tenants.red.attach[0].colour: line 6, column")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with("tenants.red.mac_aging_secs: line 8, column 1:")
                && s.contains("invalid type")),
            "{shown:#?}"
        );
    }

    #[test]
    fn a_valid_file_has_no_schema_problem() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo.toml"))
                .unwrap();
        assert_eq!(check(&text), Vec::new());
    }
}
