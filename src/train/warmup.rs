//! Warm-up of training shapes: under bucketed shapes, the micro-batch shapes (rows, input
//! columns, response columns) a stage can pack, each run once through the stage's own forward
//! and backward before the first real step, so that a JIT backend compiles and autotunes them
//! up front (see [`crate::shapes`]).

use std::collections::BTreeSet;

use super::batch::Sequence;
use crate::error::Result;
use crate::shapes::Shapes;

/// One micro-batch shape: `rows` sequences, `columns` input columns, `response` response
/// columns (all buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MicroBatchShape {
    /// Rows (a batch bucket).
    pub rows: usize,
    /// Input columns `P + R - 1` (a length bucket).
    pub columns: usize,
    /// Response columns R (a length bucket).
    pub response: usize,
}

/// Every micro-batch shape that sequences with prompts of `prompt_lens` tokens and responses of
/// 1 to `max_response` tokens can be packed into, with at most `max_rows` rows and the rows cut
/// by `token_budget` padded tokens as [`super::token_budget_batches`] cuts them. Empty under
/// exact shapes.
pub fn micro_batch_shapes(
    shapes: &Shapes,
    prompt_lens: &[usize],
    max_response: usize,
    max_rows: usize,
    token_budget: usize,
) -> Vec<MicroBatchShape> {
    if !shapes.is_bucketed() {
        return Vec::new();
    }
    let prompts: BTreeSet<usize> = prompt_lens.iter().map(|&p| p.max(1)).collect();
    let mut out = BTreeSet::new();
    let mut shortest_response = 1;
    for response in shapes.seq_buckets(max_response.max(1)) {
        // The fewest real columns of each input-column bucket, which bounds its rows.
        let mut fewest: Vec<(usize, usize)> = Vec::new();
        for &p in &prompts {
            let columns = shapes.seq(p + response - 1);
            let real = p + shortest_response - 1;
            match fewest.iter_mut().find(|(c, _)| *c == columns) {
                Some((_, f)) => *f = (*f).min(real),
                None => fewest.push((columns, real)),
            }
        }
        for (columns, real) in fewest {
            let most_rows = (token_budget / real.max(1)).clamp(1, max_rows.max(1));
            for rows in shapes.batch_buckets(most_rows) {
                out.insert(MicroBatchShape {
                    rows,
                    columns,
                    response,
                });
            }
        }
        shortest_response = response + 1;
    }
    out.into_iter().collect()
}

/// Hands `pass` (the stage's packing, forward and backward) sequences that pack into each shape
/// of `list` (padding tokens `pad`) under `shapes`; returns the number of passes.
pub fn warm_up_micro_batches(
    list: &[MicroBatchShape],
    pad: u32,
    shapes: &Shapes,
    mut pass: impl FnMut(&[Sequence<'_>]) -> Result<()>,
) -> Result<usize> {
    for shape in list {
        let prompt = vec![pad; shape.columns + 1 - shape.response];
        let response = vec![pad; shape.response];
        let seqs = vec![
            Sequence {
                prompt: &prompt,
                response: &response,
            };
            shape.rows
        ];
        debug_assert_eq!(
            (
                shapes.batch(shape.rows),
                shapes.seq(shape.columns),
                shapes.seq(shape.response)
            ),
            (shape.rows, shape.columns, shape.response),
            "a bucket is its own bucket"
        );
        pass(&seqs)?;
    }
    Ok(list.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{ShapeConfig, ShapePolicy};

    #[test]
    fn shapes_cover_every_packable_micro_batch() {
        let shapes = ShapeConfig {
            policy: ShapePolicy::Bucketed,
            seq_multiple: 8,
            seq_linear_until: 32,
            batch_buckets: vec![1, 2, 4],
            warmup: true,
        }
        .resolve::<burn::backend::Flex>();
        let list = micro_batch_shapes(&shapes, &[5, 20], 12, 4, 64);
        // Responses 1..=8 -> 8 columns, 9..=12 -> 16; prompts 5 and 20.
        let packable = |p: usize, r: usize, n: usize| {
            let got = MicroBatchShape {
                rows: shapes.batch(n),
                columns: shapes.seq(p + shapes.seq(r) - 1),
                response: shapes.seq(r),
            };
            assert!(list.contains(&got), "{got:?} missing from {list:?}");
        };
        for r in 1..=12 {
            packable(5, r, 1);
            packable(20, r, 1);
            packable(5, r, (64 / (5 + r - 1)).min(4));
            packable(20, r, (64 / (20 + r - 1)).clamp(1, 4));
        }
        assert!(micro_batch_shapes(&Shapes::exact(), &[5], 12, 4, 64).is_empty());
    }
}
