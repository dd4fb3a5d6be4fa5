//! Quire's configuration: a TOML file, its schema, its defaults and its rules.
//!
//! `quire serve` with no arguments must show the product working, so the whole
//! configuration has an embedded default ([`DEFAULT_TOML`], equal to
//! [`Config::default()`]): one peer on 127.0.0.1:4420, one reactor, an 8 GiB sparse
//! file in `./quire-data`, a 1 GiB volume `demo`. A config file only says what differs:
//! every missing key takes its default.
//!
//! The file is read in two steps. [`schema`] deserializes it with serde, refusing
//! unknown keys so that a misspelt key is an error, not a silently ignored line; then
//! [`validate`] checks ranges and relations between keys. Either way an error names the
//! key as a dotted path, the value and what is allowed:
//!
//! ```text
//! reactors.poll = "fast": expected "busy" or "hybrid" (line 12, column 8)
//! target.max_h2c_data = "2M": expected a multiple of 4K from 4K to target.max_transfer_size (1M)
//! peer.nmae: unknown field `nmae`, expected one of `name`, `data_dir`, `rpc_socket` (line 2, column 1)
//! ```
//!
//! Paths: a relative `peer.data_dir` is relative to the daemon's working directory; a
//! relative device `path` and `peer.rpc_socket` are relative to `data_dir`
//! ([`Config::resolve`]).

pub mod error;
pub mod schema;
pub mod sets;
pub mod size;
pub mod validate;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Location};
pub use schema::{
    Buffers, Config, Device, DeviceKind, DirectIo, Formatting, Group, Log, LogFormat, Metrics, Peer, PollMode,
    Reactors, Rebalance, Target, Volume,
};
pub use size::{parse_size, ByteSize};

/// The embedded default configuration, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// The RPC socket's file name inside `data_dir` when `peer.rpc_socket` is not set.
pub const RPC_SOCKET_NAME: &str = "quire.sock";

impl Config {
    /// Parses and validates a TOML configuration.
    #[allow(clippy::should_implement_trait)] // it is implemented too; this needs no import
    pub fn from_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| error::from_toml(text, &error))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::from_file_with(Some(path), &[])
    }

    /// The configuration of `path` (`None`: the embedded default) with single-key
    /// overrides applied ([`sets`]), parsed and validated.
    pub fn from_file_with(path: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?,
            None => String::new(),
        };
        let edited = sets::apply(&text, sets)?;
        Config::from_str(&edited).map_err(|e| sets::blame(e, sets))
    }

    /// Checks every rule of [`validate`]; the first broken rule is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The configuration as TOML (parses back to an equal `Config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes")
    }

    /// `path` made absolute against `peer.data_dir` when it is relative.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.peer.data_dir.join(path)
        }
    }

    /// Where the JSON-RPC socket lives.
    pub fn rpc_socket_path(&self) -> PathBuf {
        match &self.peer.rpc_socket {
            Some(path) => self.resolve(path),
            None => self.peer.data_dir.join(RPC_SOCKET_NAME),
        }
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Config::from_str(text).unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_file_equals_default() {
        let parsed = Config::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_str("").unwrap(), Config::default());
    }

    #[test]
    fn default_facts() {
        let config = Config::default();
        assert_eq!(config.target.port, 4420);
        assert_eq!(config.target.discovery_port, 8009);
        assert_eq!(config.reactors.count(), 1);
        assert_eq!(config.reactors.cores(), vec![0]);
        assert_eq!(config.devices.len(), 1);
        assert_eq!(config.resolve(config.devices[0].path.as_ref().unwrap()), Path::new("./quire-data/quire.img"));
        assert_eq!(config.volumes[0].name, "demo");
        assert_eq!(config.volumes[0].size, ByteSize::gib(1));
        assert_eq!(config.rpc_socket_path(), Path::new("./quire-data/quire.sock"));
    }

    #[test]
    fn serialized_config_parses_back_equal() {
        let mut config = Config::default();
        config.reactors.cores = vec![2, 3];
        config.target.keep_alive_timeout_ms_max = Some(5000);
        config.peer.rpc_socket = Some(PathBuf::from("/run/quire.sock"));
        config.devices.push(Device {
            kind: DeviceKind::Ram,
            path: None,
            size: Some(ByteSize::mib(64)),
            direct_io: DirectIo::Auto,
            pci_address: None,
            bind_vfio: false,
            queue_depth: 4,
            format: Formatting::Never,
            prefault: false,
            zeroed_spares: 0,
        });
        config.validate().unwrap();
        let text = config.to_toml();
        assert_eq!(Config::from_str(&text).unwrap(), config, "{text}");
        assert_eq!(Config::from_str(&Config::default().to_toml()).unwrap(), Config::default());
    }

    #[test]
    fn nvme_device_from_toml() {
        let text = "[[device]]\nkind = \"nvme\"\npci_address = \"0000:00:04.0\"\nbind_vfio = true\n";
        let config = Config::from_str(text).unwrap();
        assert_eq!(config.devices[0].pci_address.as_deref(), Some("0000:00:04.0"));
        assert!(config.devices[0].bind_vfio);
        assert_eq!(Config::from_str(&config.to_toml()).unwrap(), config);
        let text = "[[device]]\nkind = \"nvme\"\npci_address = \"0000:00:04.0\"\n";
        assert!(!Config::from_str(text).unwrap().devices[0].bind_vfio, "bind_vfio defaults to false");
        let message = error("[[device]]\nkind = \"nvme\"\npci_address = \"0000:00:04.0\"\nbind_vfio = \"yes\"\n");
        assert!(message.starts_with("device[0].bind_vfio: invalid type"), "{message}");
    }

    #[test]
    fn device_queue_depth_and_formatting_from_toml() {
        let config = Config::from_str("[[device]]\nkind = \"ram\"\nsize = \"1G\"\n").unwrap();
        assert_eq!(config.devices[0].queue_depth, 1024, "queue_depth defaults to 1024");
        assert_eq!(config.devices[0].format, Formatting::IfBlank, "format defaults to if-blank");
        let text = "[[device]]\nkind = \"ram\"\nsize = \"1G\"\nqueue_depth = 2\nformat = \"never\"\n";
        let config = Config::from_str(text).unwrap();
        assert_eq!((config.devices[0].queue_depth, config.devices[0].format), (2, Formatting::Never));
        assert_eq!(Config::from_str(&config.to_toml()).unwrap(), config);
        let message = error("[[device]]\nkind = \"ram\"\nsize = \"1G\"\nformat = \"always\"\n");
        assert!(message.starts_with("device[0].format = \"always\": expected \"if-blank\" or \"never\""), "{message}");
        let message = error("[[device]]\nkind = \"ram\"\nsize = \"1G\"\nqueue_depth = 0\n");
        assert_eq!(message, "device[0].queue_depth = 0: expected 1..=65535");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::from_str("[target]\nport = 4421\n").unwrap();
        assert_eq!(config.target.port, 4421);
        assert_eq!(config.target.max_queue_depth, 128);
        assert_eq!(config.volumes, vec![Volume::demo()]);
    }

    #[test]
    fn empty_arrays_mean_no_devices_and_no_volumes() {
        let config = Config::from_str("device = []\nvolume = []\n").unwrap();
        assert!(config.devices.is_empty());
        assert!(config.volumes.is_empty());
    }

    #[test]
    fn cores_alone_set_the_count() {
        let config = Config::from_str("[reactors]\ncores = [1, 0]\n").unwrap();
        assert_eq!(config.reactors.count(), 2);
        assert_eq!(config.reactors.cores(), vec![1, 0]);
    }

    #[test]
    fn sizes_accept_integers_and_strings() {
        let text = "[target]\nin_capsule_data_size = \"4K\"\nmax_transfer_size = 131072\nmax_h2c_data = \"64KiB\"\n";
        let config = Config::from_str(text).unwrap();
        assert_eq!(config.target.in_capsule_data_size, ByteSize(4096));
        assert_eq!(config.target.max_transfer_size, ByteSize::kib(128));
        assert_eq!(config.target.max_h2c_data, ByteSize::kib(64));
    }

    #[test]
    fn bad_keyword_names_key_value_choices_and_line() {
        let text = "[peer]\nname = \"a\"\n\n[reactors]\npoll = \"fast\"\n";
        assert_eq!(error(text), "reactors.poll = \"fast\": expected \"busy\" or \"hybrid\" (line 5, column 8)");
    }

    #[test]
    fn bad_kind_and_direct_io_in_an_array_entry() {
        let text = "volume = []\n[[device]]\nkind = \"ram\"\nsize = \"1G\"\n[[device]]\nkind = \"tape\"\n";
        let message = error(text);
        assert!(
            message.starts_with("device[1].kind = \"tape\": expected \"file\", \"block\", \"ram\" or \"nvme\""),
            "{message}"
        );
        let text = "[[device]]\nkind = \"file\"\npath = \"a\"\nsize = \"1G\"\ndirect_io = \"yes\"\n";
        assert!(error(text).starts_with("device[0].direct_io = \"yes\": expected \"auto\", \"on\" or \"off\""));
    }

    #[test]
    fn bad_size_names_key_and_forms() {
        let message = error("[buffers]\nchunk_size = \"128KB\"\n");
        assert!(message.starts_with("buffers.chunk_size = \"128KB\": expected a size such as"), "{message}");
        assert!(message.ends_with("(line 2, column 14)"), "{message}");
        let message = error("[buffers]\nchunk_size = -5\n");
        assert!(message.starts_with("buffers.chunk_size = -5: expected a size"), "{message}");
    }

    #[test]
    fn bad_ip_address() {
        let message = error("[target]\nlisten = \"localhost\"\n");
        assert!(message.starts_with("target.listen = \"localhost\": expected an IP address"), "{message}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let message = error("[peer]\nnmae = \"x\"\n");
        assert!(message.starts_with("peer.nmae: unknown field `nmae`"), "{message}");
        assert!(message.contains("(line 2, column 1)"), "{message}");
        let message = error("[bogus]\nx = 1\n");
        assert!(message.starts_with("bogus: unknown field `bogus`"), "{message}");
        let message = error("[[volume]]\nname = \"a\"\nsize = \"1G\"\ncolour = \"red\"\n");
        assert!(message.starts_with("volume[0].colour: unknown field `colour`"), "{message}");
    }

    #[test]
    fn wrong_types_are_placed_on_their_key() {
        let message = error("[target]\nport = \"4420\"\n");
        assert!(message.starts_with("target.port: invalid type: string"), "{message}");
        let message = error("[target]\nport = 70000\n");
        assert!(message.starts_with("target.port: "), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn missing_required_key_names_the_entry() {
        let message = error("[[volume]]\nname = \"a\"\n");
        assert!(message.starts_with("volume[0]: missing field `size`"), "{message}");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let message = error("[target]\nport = = 1\n");
        assert!(message.starts_with("target.port: "), "{message}");
        assert!(message.ends_with("(line 2, column 8)"), "{message}");
        let message = error("[target\n");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn validation_errors_after_parsing() {
        assert_eq!(
            error("[target]\nport = 4420\ndiscovery_port = 4420\n"),
            "target.discovery_port = 4420: expected 0 (none) or a port other than target.port (4420)"
        );
    }

    #[test]
    fn from_file_reads_and_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quire.toml");
        std::fs::write(&path, "[reactors]\nspin_us = 7\n").unwrap();
        assert_eq!(Config::from_file(&path).unwrap().reactors.spin_us, 7);
        let missing = dir.path().join("missing.toml");
        let message = Config::from_file(&missing).unwrap_err().to_string();
        assert!(message.starts_with(&format!("cannot read config file {}", missing.display())), "{message}");
    }

    #[test]
    fn relative_paths_resolve_against_data_dir() {
        let config = Config::from_str("[peer]\ndata_dir = \"/var/lib/quire\"\nrpc_socket = \"ctl.sock\"\n").unwrap();
        assert_eq!(config.rpc_socket_path(), Path::new("/var/lib/quire/ctl.sock"));
        assert_eq!(config.resolve(Path::new("/dev/sdb")), Path::new("/dev/sdb"));
        assert_eq!(config.resolve(Path::new("x.img")), Path::new("/var/lib/quire/x.img"));
    }

    #[test]
    fn str_parse_works_too() {
        let config: Config = "[log]\nlevel = \"debug\"\n".parse().unwrap();
        assert_eq!(config.log.level, "debug");
    }
}
