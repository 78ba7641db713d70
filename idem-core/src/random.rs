//! Randomness from the operating system.

/// `N` random bytes from the operating system's generator.
///
/// # Panics
/// Only if the operating system has no random source at all, which no
/// supported platform lacks; idem cannot make secrets or fences without one.
pub(crate) fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// A random, non-zero `u64`.
pub(crate) fn nonzero_u64() -> u64 {
    loop {
        let v = u64::from_le_bytes(bytes());
        if v != 0 {
            return v;
        }
    }
}
