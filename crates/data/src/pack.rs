//! Packing: several samples per `max_seq_length` row, placed best-fit decreasing (as TRL's
//! default `bfd` strategy), so rows are full and the packing is deterministic.

use std::collections::BTreeSet;

/// Groups sample indices into rows of at most `capacity` tokens. Longest samples are placed
/// first, each into the row with the least space that still fits it (ties: the oldest row).
pub(crate) fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // (space left, row index) of every row.
    let mut space: BTreeSet<(usize, usize)> = BTreeSet::new();
    for sample in order {
        let len = lengths[sample];
        match space.range((len, 0)..).next().copied() {
            Some((left, row)) => {
                space.remove(&(left, row));
                space.insert((left - len, row));
                rows[row].push(sample);
            }
            None => {
                space.insert((capacity.saturating_sub(len), rows.len()));
                rows.push(vec![sample]);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_fills_rows_best_fit_and_keeps_every_sample_once() {
        let lengths = [5, 3, 8, 2, 4, 6];
        let rows = best_fit_decreasing(&lengths, 10);
        assert_eq!(rows, vec![vec![2, 3], vec![5, 4], vec![0, 1]]);
        let mut all: Vec<usize> = rows.concat();
        all.sort_unstable();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        for row in &rows {
            assert!(row.iter().map(|&s| lengths[s]).sum::<usize>() <= 10);
        }
    }
}
