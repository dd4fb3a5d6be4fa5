//! Handing a PCI function to `vfio-pci` and giving it back (explicit, opt-in).
//!
//! Linux binds drivers through sysfs: writing a driver name to the device's
//! `driver_override` makes only that driver match it, writing the address to the
//! current driver's `unbind` releases it, and writing it to `/sys/bus/pci/drivers_probe`
//! matches it again. [`bind_vfio`] does that for `vfio-pci` and returns a [`Binding`]
//! that remembers the previous driver; [`Binding::restore`] gives the device back.
//! Nothing here runs unless a caller asks: taking an SSD away from the kernel is an
//! operator's decision.

use std::fs;
use std::path::{Path, PathBuf};

/// Errors binding a device.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No such PCI function.
    #[error("no PCI function {0}")]
    NoDevice(String),
    /// The vfio-pci driver is not loaded.
    #[error("vfio-pci is not loaded (modprobe vfio-pci)")]
    NoVfioPci,
    /// A sysfs write failed.
    #[error("writing {what} to {path}: {source}")]
    Sysfs {
        /// What was written.
        what: String,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device did not end up on the expected driver.
    #[error("{bdf} is bound to {actual:?} instead of {expected}")]
    Unexpected {
        /// PCI address.
        bdf: String,
        /// Driver expected.
        expected: String,
        /// Driver found.
        actual: Option<String>,
    },
}

/// The record of a device handed to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// PCI address.
    pub bdf: String,
    /// The driver it had before (None: none).
    pub previous: Option<String>,
}

const PCI: &str = "/sys/bus/pci";

/// The driver `bdf` is bound to.
pub fn current_driver(bdf: &str) -> Option<String> {
    let link = fs::read_link(Path::new(PCI).join("devices").join(bdf).join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// PCI functions of class "NVM Express" (01:08:02).
pub fn nvme_functions() -> Vec<String> {
    let Ok(dir) = fs::read_dir(Path::new(PCI).join("devices")) else { return Vec::new() };
    let mut found: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter(|e| fs::read_to_string(e.path().join("class")).is_ok_and(|c| c.trim() == "0x010802"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

fn write(path: PathBuf, what: &str) -> Result<(), BindError> {
    fs::write(&path, what).map_err(|source| BindError::Sysfs { what: what.into(), path, source })
}

/// Binds `bdf` to vfio-pci (a no-op if it already is).
pub fn bind_vfio(bdf: &str) -> Result<Binding, BindError> {
    let dev = Path::new(PCI).join("devices").join(bdf);
    if !dev.exists() {
        return Err(BindError::NoDevice(bdf.into()));
    }
    if !Path::new(PCI).join("drivers/vfio-pci").exists() {
        return Err(BindError::NoVfioPci);
    }
    let previous = current_driver(bdf);
    if previous.as_deref() == Some("vfio-pci") {
        return Ok(Binding { bdf: bdf.into(), previous });
    }
    write(dev.join("driver_override"), "vfio-pci")?;
    if previous.is_some() {
        write(dev.join("driver").join("unbind"), bdf)?;
    }
    write(Path::new(PCI).join("drivers_probe"), bdf)?;
    expect_driver(bdf, "vfio-pci")?;
    Ok(Binding { bdf: bdf.into(), previous })
}

impl Binding {
    /// Gives the device back to its previous driver (or to none).
    pub fn restore(self) -> Result<(), BindError> {
        let dev = Path::new(PCI).join("devices").join(&self.bdf);
        if current_driver(&self.bdf).is_some() {
            write(dev.join("driver").join("unbind"), &self.bdf)?;
        }
        // An empty override (a newline) clears it; the kernel then matches by id table.
        write(dev.join("driver_override"), "\n")?;
        if let Some(prev) = &self.previous {
            write(Path::new(PCI).join("drivers_probe"), &self.bdf)?;
            expect_driver(&self.bdf, prev)?;
        }
        Ok(())
    }
}

fn expect_driver(bdf: &str, expected: &str) -> Result<(), BindError> {
    let actual = current_driver(bdf);
    if actual.as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(BindError::Unexpected { bdf: bdf.into(), expected: expected.into(), actual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_a_clear_error() {
        assert!(matches!(bind_vfio("0000:ff:1f.7"), Err(BindError::NoDevice(_))));
        assert_eq!(current_driver("0000:ff:1f.7"), None);
        // Every listed function really has the NVMe class code.
        for bdf in nvme_functions() {
            let class = fs::read_to_string(Path::new(PCI).join("devices").join(&bdf).join("class")).unwrap();
            assert_eq!(class.trim(), "0x010802");
        }
    }
}
