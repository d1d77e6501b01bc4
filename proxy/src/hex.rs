//! Lowercase hex into a caller's buffer, without allocating: the request id and the trace
//! headers (`traceparent`, B3) are built from it on every request.

/// Writes the low `out.len()` hex digits of `n` into `out`, lowercase, most significant first.
pub fn write_lower(out: &mut [u8], mut n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::write_lower;

    #[test]
    fn pads_and_truncates_to_the_buffer() {
        let mut buf = [0u8; 32];
        write_lower(&mut buf, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(&buf, b"4bf92f3577b34da6a3ce929d0e0e4736");
        let mut buf = [0u8; 16];
        write_lower(&mut buf, 0x00f067aa0ba902b7);
        assert_eq!(&buf, b"00f067aa0ba902b7");
        let mut buf = [0u8; 4];
        write_lower(&mut buf, 0xabcdef);
        assert_eq!(&buf, b"cdef");
    }
}
