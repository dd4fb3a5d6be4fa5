//! CRC32C header and data digests.
//!
//! NVMe/TCP digests are plain CRC32C (Castagnoli, reflected, init and final xor
//! 0xFFFFFFFF), stored little-endian. The `crc32c` crate uses SSE4.2 where present.

/// CRC32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continues a CRC32C over more bytes (for data spread across buffers).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        // 32 bytes of 0xff.
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let a = crc32c_append(crc32c(b"hello "), b"world");
        assert_eq!(a, crc32c(b"hello world"));
    }
}
