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

#[cfg(test)]
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

/// Clipped n-gram matches of `hyp` against `refs` for every order `1..=orders`:
/// `per_ref[(n - 1) * refs.len() + r]` against reference `r` alone, and, when `merged` is given,
/// `merged[n - 1]` against the per-n-gram maximum over all references (BLEU's multi-reference rule).
/// Ids must be below `2^bits`.
pub(crate) fn ngram_matches(
    hyp: &[u32],
    refs: &[&[u32]],
    orders: usize,
    bits: u32,
    per_ref: &mut Vec<u64>,
    mut merged: Option<&mut Vec<u64>>,
) {
    per_ref.clear();
    if let Some(m) = merged.as_deref_mut() {
        m.clear();
    }
    match packing(orders, bits) {
        Packing::U64(b) => matches_u64(hyp, refs, orders, b, per_ref, merged),
        Packing::U128(b) => matches_by(
            hyp,
            refs,
            orders,
            &|w: &[u32]| pack128(w, b),
            per_ref,
            merged,
        ),
        Packing::Slice => matches_by(hyp, refs, orders, &|w: &[u32]| w.to_vec(), per_ref, merged),
    }
}

fn record<K: Ord + Clone>(
    h: &[(K, u32)],
    r: &[(K, u32)],
    k: usize,
    acc: &mut Vec<(K, u32)>,
    tmp: &mut Vec<(K, u32)>,
    per_ref: &mut Vec<u64>,
    want_merged: bool,
) {
    per_ref.push(clipped(h, r));
    if want_merged {
        if k == 0 {
            acc.clear();
            acc.extend_from_slice(r);
        } else {
            max_merge_into(acc, r, tmp);
            std::mem::swap(acc, tmp);
        }
    }
}

/// Packed `u64` keys, built order by order: the order-`n` key at `i` is the order-`n-1` key shifted
/// left by `bits` plus the id at `i + n - 1`.
fn matches_u64(
    hyp: &[u32],
    refs: &[&[u32]],
    orders: usize,
    bits: u32,
    per_ref: &mut Vec<u64>,
    mut merged: Option<&mut Vec<u64>>,
) {
    let mut hk: Vec<u64> = hyp.iter().map(|&x| x as u64).collect();
    let mut rk: Vec<Vec<u64>> = refs
        .iter()
        .map(|r| r.iter().map(|&x| x as u64).collect())
        .collect();
    let (mut sorted, mut h, mut r, mut acc, mut tmp) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let extend = |keys: &mut Vec<u64>, ids: &[u32], n: usize| {
        let len = (ids.len() + 1).saturating_sub(n);
        for i in 0..len {
            keys[i] = (keys[i] << bits) | ids[i + n - 1] as u64;
        }
        keys.truncate(len);
    };
    let runs = |keys: &[u64], sorted: &mut Vec<u64>, out: &mut Vec<(u64, u32)>| {
        sorted.clear();
        sorted.extend_from_slice(keys);
        sorted.sort_unstable();
        out.clear();
        for &k in sorted.iter() {
            match out.last_mut() {
                Some((lk, c)) if *lk == k => *c += 1,
                _ => out.push((k, 1)),
            }
        }
    };
    for n in 1..=orders {
        if n > 1 {
            extend(&mut hk, hyp, n);
            for (keys, ids) in rk.iter_mut().zip(refs) {
                extend(keys, ids, n);
            }
        }
        runs(&hk, &mut sorted, &mut h);
        for (k, keys) in rk.iter().enumerate() {
            runs(keys, &mut sorted, &mut r);
            record(&h, &r, k, &mut acc, &mut tmp, per_ref, merged.is_some());
        }
        if let Some(m) = merged.as_deref_mut() {
            m.push(clipped(&h, &acc));
        }
    }
}

fn matches_by<K: Ord + Clone>(
    hyp: &[u32],
    refs: &[&[u32]],
    orders: usize,
    key: &impl Fn(&[u32]) -> K,
    per_ref: &mut Vec<u64>,
    mut merged: Option<&mut Vec<u64>>,
) {
    let (mut keys, mut h, mut r, mut acc, mut tmp) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 1..=orders {
        runs_into(hyp, n, key, &mut keys, &mut h);
        for (k, ids) in refs.iter().enumerate() {
            runs_into(ids, n, key, &mut keys, &mut r);
            record(&h, &r, k, &mut acc, &mut tmp, per_ref, merged.is_some());
        }
        if let Some(m) = merged.as_deref_mut() {
            m.push(clipped(&h, &acc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The incremental `u64` path (the one sacreBLEU's cases exercise) and the generic paths used for
    /// large vocabularies or orders must count the same matches.
    #[test]
    fn packed_and_generic_paths_agree() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..300 {
            let vocab = rng.gen_range(1..6u32);
            let mut seq = |n: usize| {
                (0..n)
                    .map(|_| rng.gen_range(0..vocab))
                    .collect::<Vec<u32>>()
            };
            let hyp = seq(17);
            let refs: Vec<Vec<u32>> = (0..3).map(|k| seq(5 + 6 * k)).collect();
            let refs: Vec<&[u32]> = refs.iter().map(|r| r.as_slice()).collect();
            let orders = 5;
            let (mut a, mut am, mut b, mut bm, mut c, mut cm, mut d, mut dm) = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            matches_u64(&hyp, &refs, orders, 3, &mut a, Some(&mut am));
            matches_by(
                &hyp,
                &refs,
                orders,
                &|w: &[u32]| pack64(w, 3),
                &mut b,
                Some(&mut bm),
            );
            matches_by(
                &hyp,
                &refs,
                orders,
                &|w: &[u32]| pack128(w, 3),
                &mut c,
                Some(&mut cm),
            );
            matches_by(
                &hyp,
                &refs,
                orders,
                &|w: &[u32]| w.to_vec(),
                &mut d,
                Some(&mut dm),
            );
            assert_eq!((&a, &am), (&b, &bm));
            assert_eq!((&a, &am), (&c, &cm));
            assert_eq!((&a, &am), (&d, &dm));
            // Brute force: clipped count against the per-n-gram maximum over references.
            for n in 1..=orders {
                let grams = |s: &[u32]| s.windows(n).map(|w| w.to_vec()).collect::<Vec<_>>();
                let hg = grams(&hyp);
                let mut uniq = hg.clone();
                uniq.sort();
                uniq.dedup();
                let want: u64 = uniq
                    .iter()
                    .map(|g| {
                        let hc = hg.iter().filter(|x| *x == g).count();
                        let rc = refs
                            .iter()
                            .map(|r| grams(r).iter().filter(|x| *x == g).count())
                            .max()
                            .unwrap();
                        hc.min(rc) as u64
                    })
                    .sum();
                assert_eq!(am[n - 1], want);
            }
        }
    }
}
