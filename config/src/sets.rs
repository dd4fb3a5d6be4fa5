//! Single-key overrides of a configuration: `quire serve --set reactors.poll=busy`, and
//! the appliance image's `quire.reactors.poll=busy` on the kernel command line.
//!
//! A set is `DOTTED.KEY=VALUE`. The key names a key the way errors do (`target.port`,
//! `group.etcd`); a numeric part indexes an array of tables (`device.0.pci_address`,
//! `volume.1.size`). The value is read as a TOML value when it is one (`4420`, `true`,
//! `["http://a:2379"]`, `"text"`) and as a string otherwise (`busy`, `0.0.0.0`, `1G`),
//! so that a command line needs no quoting. The sets are applied to the file's text
//! with a format-preserving editor, and the result is read exactly as a file is: the
//! same errors, naming the key; an error on a key a set wrote says so.
//!
//! A set into a list the text leaves out (`device.0.zeroed_spares=0` on the embedded
//! default, which writes no `[[device]]`) edits the list the text stands for: the
//! default list is written out first, then the set applied to it.

use toml_edit::{DocumentMut, Item, Table, Value};

use crate::error::{self, ConfigError};

/// `text` with every set applied, in order (a later set of a key wins).
pub fn apply(text: &str, sets: &[String]) -> Result<String, ConfigError> {
    if sets.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: DocumentMut = match text.parse() {
        Ok(d) => d,
        // The file itself does not read: the usual error, from the usual reader.
        Err(e) => {
            return Err(match toml::from_str::<toml::Value>(text) {
                Err(toml_error) => error::from_toml(text, &toml_error),
                Ok(_) => ConfigError::invalid("config", "(the file)", format!("TOML that reads: {e}")),
            })
        }
    };
    for set in sets {
        let (key, raw) = set
            .split_once('=')
            .ok_or_else(|| ConfigError::invalid("--set", set, "KEY=VALUE, e.g. reactors.poll=busy"))?;
        let path: Vec<&str> = key.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::invalid("--set", set, "a dotted key such as target.port or device.0.kind"));
        }
        if path.len() > 1 && path[1].parse::<usize>().is_ok() && !doc.contains_key(path[0]) {
            if let Some(list) = default_list(path[0]) {
                doc.insert(path[0], list);
            }
        }
        set_path(doc.as_table_mut(), &path, value_of(raw.trim()))
            .map_err(|why| ConfigError::invalid("--set", set, why))?;
    }
    Ok(doc.to_string())
}

/// An error about a key one of `sets` wrote points at the set, not at a line of the
/// edited text (which the operator never saw).
pub fn blame(e: ConfigError, sets: &[String]) -> ConfigError {
    let set_keys: Vec<&str> = sets.iter().filter_map(|s| s.split_once('=')).map(|(k, _)| k.trim()).collect();
    let by_set = |key: &str| set_keys.iter().any(|k| *k == key || k.replace('.', "[") == key);
    match e {
        ConfigError::Invalid { key, value, expected, at: Some(_) } if by_set(&key) => {
            ConfigError::Invalid { key, value, expected, at: None }
        }
        ConfigError::Parse { key: Some(key), message, .. } if by_set(&key) => {
            ConfigError::invalid(key, "(set)", message)
        }
        e => e,
    }
}

/// The default configuration's list of tables `key` (`device`, `volume`), as TOML.
fn default_list(key: &str) -> Option<Item> {
    let defaults: DocumentMut = crate::Config::default().to_toml().parse().expect("the default configuration reads");
    defaults.get(key).filter(|item| item.is_array_of_tables()).cloned()
}

/// The value a set's text stands for: a TOML value if it reads as one, else a string.
fn value_of(raw: &str) -> Value {
    let parsed: Option<Value> =
        format!("v = {raw}").parse::<DocumentMut>().ok().and_then(|d| d.get("v").and_then(Item::as_value).cloned());
    parsed.unwrap_or_else(|| Value::from(raw))
}

fn set_path(table: &mut Table, path: &[&str], value: Value) -> Result<(), String> {
    let (first, rest) = path.split_first().expect("a non-empty path");
    if rest.is_empty() {
        table.insert(first, Item::Value(value));
        return Ok(());
    }
    let item = table.entry(first).or_insert_with(|| {
        if rest[0].parse::<usize>().is_ok() {
            Item::ArrayOfTables(toml_edit::ArrayOfTables::new())
        } else {
            Item::Table(Table::new())
        }
    });
    match item {
        Item::Table(t) => set_path(t, rest, value),
        Item::ArrayOfTables(a) => {
            let i: usize = rest[0].parse().map_err(|_| format!("{first} is a list: the next part must be an index"))?;
            while a.len() <= i {
                if a.len() < i {
                    return Err(format!("{first} has {} entries; index {i} would leave a gap", a.len()));
                }
                a.push(Table::new());
            }
            let t = a.get_mut(i).expect("made above");
            if rest.len() == 1 {
                return Err(format!("{first}.{i} is a table: name one of its keys"));
            }
            set_path(t, &rest[1..], value)
        }
        Item::Value(Value::InlineTable(t)) => {
            let mut owned = t.clone().into_table();
            set_path(&mut owned, rest, value)?;
            *item = Item::Table(owned);
            Ok(())
        }
        _ => Err(format!("{first} is a value, not a table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn sets(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sets_override_and_add_keys_of_tables_and_lists() {
        let text = "[target]\nport = 4420\n\n[[device]]\nkind = \"ram\"\nsize = \"1G\"\n";
        let out = apply(
            text,
            &sets(&[
                "target.port=14420",
                "target.listen=0.0.0.0",
                "reactors.poll=busy",
                "device.0.size=2G",
                "metrics.listen=0.0.0.0:9442",
            ]),
        )
        .unwrap();
        let c = Config::from_str(&out).unwrap();
        assert_eq!(c.target.port, 14420);
        assert_eq!(c.target.listen.to_string(), "0.0.0.0");
        assert_eq!(c.reactors.poll, crate::PollMode::Busy);
        assert_eq!(c.devices[0].size, Some(crate::ByteSize::gib(2)));
        assert_eq!(c.metrics.listen.as_deref(), Some("0.0.0.0:9442"));
        let out = apply("", &sets(&["group.etcd=[\"http://127.0.0.1:2379\"]", "group.secret_file=/s"])).unwrap();
        let c: Config = toml::from_str(&out).unwrap();
        assert_eq!(c.group.etcd, ["http://127.0.0.1:2379"]);
    }

    #[test]
    fn a_set_into_a_list_the_text_leaves_out_edits_the_default_list() {
        let c = Config::from_file_with(None, &sets(&["device.0.zeroed_spares=0", "volume.0.size=2G"])).unwrap();
        let d = Config::default();
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0], quire_device_with_spares(&d.devices[0], 0));
        assert_eq!(c.volumes.len(), d.volumes.len());
        assert_eq!(c.volumes[0].name, d.volumes[0].name);
        assert_eq!(c.volumes[0].size, crate::ByteSize::gib(2));
        // A list the text has is edited as it is.
        let out = apply("[[device]]\nkind = \"ram\"\nsize = \"1G\"\n", &sets(&["device.0.zeroed_spares=3"])).unwrap();
        let c = Config::from_str(&out).unwrap();
        assert_eq!(c.devices[0].kind, crate::DeviceKind::Ram);
        assert_eq!(c.devices[0].zeroed_spares, 3);
    }

    fn quire_device_with_spares(d: &crate::Device, zeroed_spares: u32) -> crate::Device {
        crate::Device { zeroed_spares, ..d.clone() }
    }

    #[test]
    fn bad_sets_are_refused_with_the_key_and_reason() {
        let e = apply("", &sets(&["reactors.poll"])).unwrap_err().to_string();
        assert!(e.contains("--set = reactors.poll: expected KEY=VALUE"), "{e}");
        let e = apply("[[device]]\nkind = \"ram\"\n", &sets(&["device.3.kind=ram"])).unwrap_err().to_string();
        assert!(e.contains("index 3 would leave a gap"), "{e}");
        let e = apply("[target]\nport = 1\n", &sets(&["target.port.x=1"])).unwrap_err().to_string();
        assert!(e.contains("is a value, not a table"), "{e}");
        // A value the schema refuses: the usual error, naming the key, without a line
        // of text the operator never wrote.
        let e = Config::from_file_with(None, &sets(&["reactors.poll=fast"])).unwrap_err().to_string();
        assert_eq!(e, "reactors.poll = \"fast\": expected \"busy\" or \"hybrid\"");
    }
}
