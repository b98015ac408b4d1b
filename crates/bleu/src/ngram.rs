//! Exact n-gram counting over small integer sequences (per-segment token ids or code points).
//!
//! An n-gram of ids below `2^bits` is packed into one integer when `n * bits` fits, so counting is a
//! sort of machine words; longer n-grams fall back to comparing slices. Keys are exact, never hashes.

/// Number of bits needed for ids `0..count`.
pub(crate) fn bits_for(count: usize) -> u32 {
    (usize::BITS - count.leading_zeros()).max(1)
}

/// How n-grams of at most `max_n` ids of `bits` bits are keyed.
#[derive(Clone, Copy)]
pub(crate) enum Packing {
    U64(u32),
    U128(u32),
    Slice,
}

pub(crate) fn packing(max_n: usize, bits: u32) -> Packing {
    let need = max_n as u64 * bits as u64;
    if need <= 64 {
        Packing::U64(bits)
    } else if need <= 128 {
        Packing::U128(bits)
    } else {
        Packing::Slice
    }
}

#[inline]
pub(crate) fn pack64(w: &[u32], bits: u32) -> u64 {
    w.iter().fold(0u64, |acc, &x| (acc << bits) | x as u64)
}

#[inline]
pub(crate) fn pack128(w: &[u32], bits: u32) -> u128 {
    w.iter().fold(0u128, |acc, &x| (acc << bits) | x as u128)
}

/// Sorted `(n-gram, count)` runs of the order-`n` windows of `ids` (`n >= 1`).
pub(crate) fn runs_into<K: Ord + Clone>(
    ids: &[u32],
    n: usize,
    key: &impl Fn(&[u32]) -> K,
    keys: &mut Vec<K>,
    out: &mut Vec<(K, u32)>,
) {
    keys.clear();
    out.clear();
    if n == 0 || ids.len() < n {
        return;
    }
    keys.extend(ids.windows(n).map(key));
    keys.sort_unstable();
    for k in keys.drain(..) {
        match out.last_mut() {
            Some((lk, c)) if *lk == k => *c += 1,
            _ => out.push((k, 1)),
        }
    }
}

/// Union of two run lists keeping the larger count (sacreBLEU's multi-reference maximum).
pub(crate) fn max_merge_into<K: Ord + Clone>(
    a: &[(K, u32)],
    b: &[(K, u32)],
    out: &mut Vec<(K, u32)>,
) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0.clone(), a[i].1.max(b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

/// Clipped matches: sum over hypothesis n-grams of `min(hyp count, ref count)`.
pub(crate) fn clipped<K: Ord + Clone>(h: &[(K, u32)], r: &[(K, u32)]) -> u64 {
    let (mut i, mut j, mut m) = (0, 0, 0u64);
    while i < h.len() && j < r.len() {
        match h[i].0.cmp(&r[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                m += h[i].1.min(r[j].1) as u64;
                i += 1;
                j += 1;
            }
        }
    }
    m
}

/// Number of order-`n` windows in a sequence of `len` items.
#[inline]
pub(crate) fn windows(len: usize, n: usize) -> u64 {
    if n == 0 {
        0
    } else {
        (len + 1).saturating_sub(n) as u64
    }
}
