//! Training batches: (prompt, response) sequences packed so that every response starts at the same
//! column (prompts left-padded, responses right-padded), micro-batches cut by a token budget, and
//! the forward pass that returns per-token log-probs (and entropies) of the responses only, so the
//! vocabulary projection never runs over prompt positions.

use crate::model::ModelBackend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::Result;
use crate::model::Qwen2ForCausalLM;
use crate::shapes::Shapes;

/// One sequence to train on: the loss covers the response tokens only.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    /// Prompt token ids (at least one).
    pub prompt: &'a [u32],
    /// Response token ids (at least one).
    pub response: &'a [u32],
}

impl Sequence<'_> {
    /// Columns this sequence needs as model input (the last response token is only a target).
    pub fn input_len(&self) -> usize {
        self.prompt.len() + self.response.len() - 1
    }
}

/// Splits sequences, in order, into micro-batches whose padded size `rows x (max prompt + max
/// response - 1)` stays within `token_budget`. A sequence longer than the budget gets a
/// micro-batch of its own.
pub fn token_budget_batches(seqs: &[Sequence<'_>], token_budget: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let (mut max_p, mut max_r) = (0usize, 0usize);
    for (i, s) in seqs.iter().enumerate() {
        let p = max_p.max(s.prompt.len());
        let r = max_r.max(s.response.len());
        let padded = (current.len() + 1) * (p + r - 1);
        if !current.is_empty() && padded > token_budget {
            out.push(std::mem::take(&mut current));
            max_p = s.prompt.len();
            max_r = s.response.len();
        } else {
            max_p = p;
            max_r = r;
        }
        if current.is_empty() && s.input_len() > token_budget {
            log::warn!(
                "a sequence of {} tokens exceeds the micro-batch token budget {token_budget}: it runs alone",
                s.input_len()
            );
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Sequences packed for one forward pass.
///
/// Under bucketed [`Shapes`] the response columns R are a length bucket, the input columns
/// `P + R - 1` another (P grows to make up the difference: more left padding), and the rows a
/// batch bucket (the extra rows all padding, with no loss token).
pub struct Packed<B: ModelBackend> {
    /// `[rows, P + R - 1]` input ids (padding where the mask is false).
    pub input_ids: Tensor<B, 2, Int>,
    /// `[rows, P + R - 1]` true at real tokens.
    pub attention_mask: Tensor<B, 2, Bool>,
    /// `[rows, P + R - 1]` RoPE positions counted from each sequence's first token.
    pub position_ids: Tensor<B, 2, Int>,
    /// `[rows, R]` response tokens (the targets).
    pub targets: Tensor<B, 2, Int>,
    /// `[rows, R]` 1 at response tokens, 0 at padding.
    pub mask: Tensor<B, 2>,
    /// P: the prompt columns (responses start here).
    pub prompt_cols: usize,
    /// R: the response columns.
    pub response_cols: usize,
    /// Real response tokens per sequence (the padding rows after them have none).
    pub response_lens: Vec<usize>,
    /// Rows, padding rows included.
    pub rows: usize,
}

impl<B: ModelBackend> Packed<B> {
    /// Packs `seqs` on `device` with `pad` at padding positions, in their exact shapes.
    pub fn new(seqs: &[Sequence<'_>], pad: u32, device: &B::Device) -> Self {
        Self::with_shapes(seqs, pad, &Shapes::exact(), device)
    }

    /// Packs `seqs` with rows and columns padded as `shapes` says.
    pub fn with_shapes(
        seqs: &[Sequence<'_>],
        pad: u32,
        shapes: &Shapes,
        device: &B::Device,
    ) -> Self {
        assert!(!seqs.is_empty(), "a batch needs at least one sequence");
        assert!(
            seqs.iter()
                .all(|s| !s.prompt.is_empty() && !s.response.is_empty()),
            "every sequence needs a prompt and a response token"
        );
        let rows = shapes.batch(seqs.len());
        let p = seqs.iter().map(|s| s.prompt.len()).max().unwrap_or(1);
        let r = shapes.seq(seqs.iter().map(|s| s.response.len()).max().unwrap_or(1));
        let cols = shapes.seq(p + r - 1);
        let p = cols + 1 - r;
        let mut ids = vec![pad as i64; rows * cols];
        let mut valid = vec![false; rows * cols];
        let mut pos = vec![0i64; rows * cols];
        let mut targets = vec![pad as i64; rows * r];
        let mut mask = vec![0f32; rows * r];
        for (i, s) in seqs.iter().enumerate() {
            let start = p - s.prompt.len();
            let tokens = s.prompt.iter().chain(&s.response[..s.response.len() - 1]);
            for (k, &t) in tokens.enumerate() {
                let c = i * cols + start + k;
                ids[c] = t as i64;
                valid[c] = true;
                pos[c] = k as i64;
            }
            for (k, &t) in s.response.iter().enumerate() {
                targets[i * r + k] = t as i64;
                mask[i * r + k] = 1.0;
            }
        }
        let int2 = |v: Vec<i64>, c: usize| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(v, [rows, c]), device)
        };
        Self {
            input_ids: int2(ids, cols),
            attention_mask: Tensor::from_data(TensorData::new(valid, [rows, cols]), device),
            position_ids: int2(pos, cols),
            targets: int2(targets, r),
            mask: Tensor::from_data(TensorData::new(mask, [rows, r]), device),
            prompt_cols: p,
            response_cols: r,
            response_lens: seqs.iter().map(|s| s.response.len()).collect(),
            rows,
        }
    }

    /// A `[rows, R]` tensor holding, row by row, `values[i]` (one per response token), 0 at padding.
    pub fn response_grid(&self, values: &[Vec<f32>], device: &B::Device) -> Tensor<B, 2> {
        let rows = self.rows;
        let r = self.response_cols;
        let mut data = vec![0f32; rows * r];
        for (i, v) in values.iter().enumerate() {
            data[i * r..i * r + v.len().min(r)].copy_from_slice(&v[..v.len().min(r)]);
        }
        Tensor::from_data(TensorData::new(data, [rows, r]), device)
    }

    /// Log-probs `[rows, R]` of the response tokens under `model`, computed from
    /// `log_softmax(logits / temperature)`, and their entropies when `with_entropy` (from the same
    /// tempered distribution, as verl computes them). At most `chunk` positions are projected to
    /// the vocabulary at once.
    pub fn logprobs(
        &self,
        model: &Qwen2ForCausalLM<B>,
        temperature: f32,
        chunk: usize,
        with_entropy: bool,
    ) -> Result<(Tensor<B, 2>, Option<Tensor<B, 2>>)> {
        let hidden = model.forward_hidden(
            self.input_ids.clone(),
            self.attention_mask.clone(),
            self.position_ids.clone(),
            None,
        )?;
        let [rows, _, h] = hidden.dims();
        let (p, r) = (self.prompt_cols, self.response_cols);
        let hidden = hidden.slice([0..rows, p - 1..p - 1 + r, 0..h]);
        let (logp, entropy) =
            model.token_logprobs_entropy(hidden, self.targets.clone(), temperature, chunk);
        let entropy = with_entropy.then_some(entropy);
        Ok((logp, entropy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_batches_keep_order_and_size() {
        let a = [1u32, 2, 3];
        let b = [4u32];
        let seqs = [
            Sequence {
                prompt: &a,
                response: &b,
            }, // 3 columns
            Sequence {
                prompt: &b,
                response: &a,
            }, // 3 columns
            Sequence {
                prompt: &a,
                response: &a,
            }, // 5 columns
            Sequence {
                prompt: &b,
                response: &b,
            }, // 1 column
        ];
        assert_eq!(
            token_budget_batches(&seqs, 6),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        assert_eq!(
            token_budget_batches(&seqs, 10),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(token_budget_batches(&seqs, 100), vec![vec![0, 1, 2, 3]]);
        assert_eq!(
            token_budget_batches(&seqs, 1),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
    }
}
