//! Userspace NVMe driver over VFIO (its own issue).
